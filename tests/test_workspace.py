"""The workspace: creation, re-opening, migration of older workspaces, backends by URL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from openlearner import NotFound, Settings, Workspace
from openlearner.errors import Invalid
from openlearner.storage import MetadataDB


def test_init_creates_the_stores(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    assert (tmp_path / "ws" / "workspace.json").is_file()
    assert (tmp_path / "ws" / "meta.db").is_file()
    assert ws.db.current_revision() == MetadataDB.head_revision()
    assert ws.features is not None and ws.registry is not None and ws.flow is not None
    ws.close()


def test_open_without_create_refuses_a_missing_workspace(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="learner init"):
        Workspace.open(tmp_path / "nothing-here", create=False)
    assert not (tmp_path / "nothing-here").exists()


def test_open_creates_by_default_and_reopens(tmp_path: Path) -> None:
    with Workspace.open(tmp_path / "ws") as ws:
        run = ws.flow.start("w")
    with Workspace.open(tmp_path / "ws", create=False) as again:
        assert again.flow.get(run.id).workflow == "w"


def test_opening_an_older_workspace_migrates_it(tmp_path: Path) -> None:
    # A workspace as the first schema revision left it: metadata at 0001, a marker file.
    home = tmp_path / "old"
    home.mkdir()
    db = MetadataDB(f"sqlite:///{home / 'meta.db'}")
    db.migrate("0001")
    db.dispose()
    (home / "workspace.json").write_text('{"created_at": "2026-01-01T00:00:00+00:00", "created_by": "0.0.1"}')
    with Workspace.open(home, create=False) as ws:
        assert ws.db.current_revision() == MetadataDB.head_revision()
        assert ws.registry.models() == []
        ws.features.catalog.record_materialization("v", datetime.now(UTC), 1, {"f": {"rows": 1.0}})
        assert ws.features.catalog.last_materialization("v").stats == {"f": {"rows": 1.0}}  # type: ignore[union-attr]


def test_a_file_in_the_way_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "ws").write_text("not a folder")
    with pytest.raises(Invalid, match="file is in the way"):
        Workspace.init(tmp_path / "ws")


@pytest.mark.postgres
def test_workspace_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    settings = Settings(home=tmp_path / "ws", database_url=postgres_url)
    with Workspace.init(settings=settings) as ws:
        assert ws.db.dialect == "postgresql"
        run = ws.flow.start("pg", {"x": 1})
        ws.flow.finish(run)
    with Workspace.open(settings=settings, create=False) as ws:
        assert ws.flow.get(run.id).status == "succeeded"


def test_unreadable_stores_are_one_clear_error(tmp_path: Path) -> None:
    from openlearner.errors import Corrupt, Unavailable

    home = tmp_path / "ws"
    Workspace.init(home).close()
    (home / "meta.db").write_bytes(b"this is not a database, just some bytes" * 100)
    for suffix in ("-wal", "-shm"):
        (home / f"meta.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(Corrupt, match="not readable"):
        Workspace.open(home, create=False)
    other = tmp_path / "ws2"
    Workspace.init(other).close()
    (other / "online.db").unlink()
    (other / "online.db").mkdir()
    with pytest.raises(Unavailable, match="cannot open the online store"):
        Workspace.open(other, create=False)
