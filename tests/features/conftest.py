"""Feature Store fixtures: real data sets under ../shared/data, the local Redis server (both
skipped when absent, failed under CI) and online stores whose writes fail halfway."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openlearner.errors import Unavailable
from openlearner.features.online import OnlineStore, RedisOnlineStore, SQLiteOnlineStore


@pytest.fixture(scope="session")
def talkingdata_sample(shared_data: Callable[[str], Path]) -> Path:
    """100,000 TalkingData ad clicks (ip, app, device, os, channel, click_time, ...)."""
    return shared_data("ctr/talkingdata_train_sample.csv")


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A fresh key prefix on the local Redis server; every key under it is deleted afterwards."""
    import redis

    namespace = f"openlearner-test:{uuid.uuid4().hex[:12]}"
    yield namespace
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1_000))
        if keys:
            client.delete(*keys)


class _FailingConnection:
    """A SQLite connection whose ``executemany`` stores the first half of the batch, then fails."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self.real.execute(*args)

    @property
    def in_transaction(self) -> bool:
        return self.real.in_transaction

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> sqlite3.Cursor:
        self.real.executemany(sql, params[: len(params) // 2])
        raise sqlite3.OperationalError("disk I/O error")


def _break_redis_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis connections send MULTI and every queued command of a transaction, then drop before EXEC."""
    from redis.connection import AbstractConnection
    from redis.exceptions import ConnectionError

    real_send = AbstractConnection.send_packed_command
    exec_command = b"*1\r\n$4\r\nEXEC\r\n"

    def send_all_but_exec(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes) else b"".join(command)
        if not (packed.startswith(b"*1\r\n$5\r\nMULTI\r\n") and packed.endswith(exec_command)):
            return real_send(self, command, check_health)
        real_send(self, [packed[: -len(exec_command)]], check_health)
        self.disconnect()
        raise ConnectionError("connection reset by peer (injected before EXEC)")

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_all_but_exec)


@pytest.fixture
def break_online_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[[OnlineStore], type[Exception]]:
    """Make a store's writes fail halfway; return the error a write then raises.

    SQLite (this thread's connection) stores half of the rows inside the transaction, then
    fails; Redis (every connection) sends the whole transaction but EXEC, then loses the
    connection. ``monkeypatch.undo()`` mends it.
    """

    def breaks(store: OnlineStore) -> type[Exception]:
        if isinstance(store, SQLiteOnlineStore):
            real = store._connection()
            monkeypatch.setattr(store, "_connection", lambda: _FailingConnection(real))
            return sqlite3.OperationalError
        assert isinstance(store, RedisOnlineStore), f"no way to break {type(store).__name__} yet"
        _break_redis_transactions(monkeypatch)
        return Unavailable

    return breaks
