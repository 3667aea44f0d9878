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


def test_execute_many_stores_what_sqlalchemy_would(database_url: str) -> None:
    from openlearner.storage.metadata import execute_many
    from openlearner.storage.schema import run_artifacts

    db = MetadataDB(database_url)
    db.migrate()
    when = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    rows = [
        {
            "b_node": f"n{i}",
            "b_output": 0,
            "digest": f"{i:064x}",
            "kind": "json",
            "inputs": ["a", i],
            "created_at": when,
        }
        for i in range(3)
    ]
    a = run_artifacts.c

    def insert(run_id: str) -> sa.Insert:
        return sa.insert(run_artifacts).values(
            run_id=run_id,
            node=sa.bindparam("b_node"),
            output=sa.bindparam("b_output"),
            **{k: sa.bindparam(k) for k in ("digest", "kind", "inputs", "created_at")},
        )

    with db.engine.begin() as con:
        con.execute(insert("by-sqlalchemy"), rows)
        execute_many(con, insert("by-execute-many"), rows)
        changed = [{**row, "kind": "dataset", "inputs": None} for row in rows[:2]]
        execute_many(
            con,
            sa.update(run_artifacts)
            .where(
                a.run_id == "by-execute-many",
                a.node == sa.bindparam("b_node"),
                a.output == sa.bindparam("b_output"),
            )
            .values({k: sa.bindparam(k) for k in ("digest", "kind", "inputs", "created_at")}),
            changed,
        )
        execute_many(con, insert("nothing"), [])
    with db.engine.connect() as con:

        def stored(run_id: str) -> list[tuple]:
            query = (
                sa.select(a.node, a.digest, a.kind, a.inputs, a.created_at)
                .where(a.run_id == run_id)
                .order_by(a.node)
            )
            return [tuple(r) for r in con.execute(query)]

        ours, theirs = stored("by-execute-many"), stored("by-sqlalchemy")
        assert [r[:2] + r[4:] for r in ours] == [r[:2] + r[4:] for r in theirs]
        assert ours[2] == theirs[2] and theirs[2][3] == ["a", 2]
        assert [r[2:4] for r in ours[:2]] == [("dataset", None), ("dataset", None)]
        raw = (
            con.exec_driver_sql(
                "SELECT created_at FROM run_artifacts WHERE run_id IN ('by-sqlalchemy', 'by-execute-many') ORDER BY run_id, node"
            )
            .scalars()
            .all()
        )
        assert raw[:3] == raw[3:]  # the same text or timestamp in the database, not only once read back
        assert (
            con.scalar(sa.select(sa.func.count()).select_from(run_artifacts).where(a.run_id == "nothing"))
            == 0
        )
    db.dispose()


def test_execute_many_serializes_a_shared_json_value_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openlearner.storage.metadata import execute_many
    from openlearner.storage.schema import run_artifacts

    db = MetadataDB(database_url)
    db.migrate()
    shared = ["d1", "d2"]  # one object in every row, as a run's operators share their resources
    rows = [
        {"b_node": f"n{i}", "b_output": 0, "digest": f"{i:064x}", "kind": "json"}
        | {"created_at": datetime.now(UTC), "inputs": shared if i % 2 else ["own", i]}
        for i in range(4)
    ]
    statement = sa.insert(run_artifacts).values(
        run_id="r",
        node=sa.bindparam("b_node"),
        output=sa.bindparam("b_output"),
        **{k: sa.bindparam(k) for k in ("digest", "kind", "inputs", "created_at")},
    )
    seen: list[object] = []
    impl = type(run_artifacts.c.inputs.type.dialect_impl(db.engine.dialect))
    original = impl.bind_processor

    def counting(self: sa.JSON, dialect: sa.Dialect) -> object:
        process = original(self, dialect)
        assert process is not None

        def count(value: object) -> object:
            seen.append(value)
            return process(value)

        return count

    monkeypatch.setattr(impl, "bind_processor", counting)
    memo: dict[tuple[int, type], object] = {}
    with db.engine.begin() as con:
        execute_many(con, statement, rows[:2], memo)
        execute_many(con, statement, rows[2:], memo)  # the memo carries over while the rows live
    assert sum(value is shared for value in seen) == 1 and len(seen) == 3
    with db.engine.connect() as con:
        query = sa.select(run_artifacts.c.node, run_artifacts.c.inputs).order_by(run_artifacts.c.node)
        assert [tuple(r) for r in con.execute(query)] == [
            ("n0", ["own", 0]),
            ("n1", ["d1", "d2"]),
            ("n2", ["own", 2]),
            ("n3", ["d1", "d2"]),
        ]
