"""Feature Store fixtures: real data sets under ../shared/data (skipped when absent, failed under CI)
and an online store whose writes fail halfway."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from openlearner.features.online import SQLiteOnlineStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _require(path: Path, what: str) -> Path:
    """``path``, or skip (fail under ``CI=true``) when it is absent, like the top-level conftest."""
    if not path.exists():
        reason = f"real data set {what} is not at {path}"
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared real-data folder (``/work/shared/data`` next to the checkout)."""
    return _require(SHARED_DATA, "folder")


@pytest.fixture(scope="session")
def talkingdata_sample(shared_data_dir: Path) -> Path:
    """100,000 TalkingData ad clicks (ip, app, device, os, channel, click_time, ...)."""
    return _require(
        shared_data_dir / "ctr" / "talkingdata_train_sample.csv", "ctr/talkingdata_train_sample.csv"
    )


class _FailingConnection:
    """A SQLite connection whose ``executemany`` stores the first half of the batch, then fails."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self.real.execute(*args)

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> sqlite3.Cursor:
        self.real.executemany(sql, params[: len(params) // 2])
        raise sqlite3.OperationalError("disk I/O error")


@pytest.fixture
def break_online_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[[SQLiteOnlineStore], None]:
    """Make a store's writes (in this thread) fail halfway; ``monkeypatch.undo()`` mends it."""

    def breaks(store: SQLiteOnlineStore) -> None:
        real = store._connection()
        monkeypatch.setattr(store, "_connection", lambda: _FailingConnection(real))

    return breaks
