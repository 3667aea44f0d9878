"""The metadata database and its migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from openlearner.errors import Invalid, Unavailable
from openlearner.storage import MetadataDB
from openlearner.storage.schema import feature_objects, metadata, runs


def test_migrate_creates_every_table_at_head(database_url: str) -> None:
    db = MetadataDB(database_url)
    assert db.current_revision() is None
    db.migrate()
    assert db.current_revision() == MetadataDB.head_revision()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert set(metadata.tables) <= tables
    db.migrate()  # a second run is a no-op
    assert db.current_revision() == MetadataDB.head_revision()
    db.dispose()


def test_migrations_match_the_declared_schema(database_url: str) -> None:
    db = MetadataDB(database_url)
    db.migrate()
    inspector = sa.inspect(db.engine)
    for name, table in metadata.tables.items():
        columns = {c["name"] for c in inspector.get_columns(name)}
        assert columns == {c.name for c in table.columns}, name
    db.dispose()


def test_an_older_schema_is_upgraded_and_keeps_its_rows(database_url: str) -> None:
    db = MetadataDB(database_url)
    db.migrate("0001")
    assert db.current_revision() == "0001"
    assert "model_versions" not in sa.inspect(db.engine).get_table_names()
    now = datetime.now(UTC)
    with db.engine.begin() as con:
        con.execute(
            sa.insert(runs).values(
                id="r1",
                workflow="w",
                status="succeeded",
                params={"a": 1},
                metrics={"ne": 0.9},
                started_at=now,
            )
        )
        con.execute(
            sa.insert(feature_objects).values(
                kind="entity", name="user", spec={"name": "user"}, created_at=now, updated_at=now
            )
        )
    db.migrate()
    assert db.current_revision() == MetadataDB.head_revision()
    assert "model_versions" in sa.inspect(db.engine).get_table_names()
    with db.engine.connect() as con:
        assert con.execute(sa.select(runs.c.params)).scalar_one() == {"a": 1}
        assert con.execute(sa.select(feature_objects.c.name)).scalar_one() == "user"
    db.dispose()


def test_bad_urls_are_refused_with_a_hint() -> None:
    with pytest.raises(Invalid, match="SQLAlchemy URL"):
        MetadataDB("not a url")
    with pytest.raises(Invalid, match="unsupported metadata database"):
        MetadataDB("mysql://localhost/db")


def test_unreachable_postgres_is_unavailable() -> None:
    db = MetadataDB("postgresql://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(Unavailable, match="cannot reach the metadata database"):
        db.migrate()
