"""The SQLite online store: upserts, reads by key, atomic writes and concurrent readers."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from openlearner.errors import Invalid
from openlearner.features.online import SQLiteOnlineStore, encode_key
from openlearner.features.online.base import EVENT_TIME

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteOnlineStore]:
    s = SQLiteOnlineStore(tmp_path / "online" / "values.db")
    yield s
    s.close()


def rows(
    ids: list[int], value: Any = None, *, times: list[datetime] | None = None, **features: Any
) -> pa.Table:
    n = len(ids)
    columns: dict[str, Any] = {
        "user_id": pa.array(ids, pa.int64()),
        EVENT_TIME: pa.array(times or [T0] * n, pa.timestamp("us", tz="UTC")),
    }
    if value is not None:
        columns["clicks"] = [value(i) if callable(value) else value for i in ids]
    columns.update(features)
    return pa.table(columns)


def keys(ids: list[Any]) -> pa.Table:
    return pa.table({"user_id": ids})


def test_write_then_read_round_trip(store: SQLiteOnlineStore) -> None:
    table = rows(
        [1, 2],
        times=[T0, T0 + timedelta(microseconds=1)],
        clicks=pa.array([3, None], pa.int64()),
        ctr=[0.25, 0.5],
        country=["fr", "jp"],
        flag=[True, False],
    )
    assert store.write("v", ["user_id"], table) == 2
    out = store.read("v", keys([2, 1]), ["clicks", "ctr", "country", "flag"])
    assert out.column_names == [EVENT_TIME, "clicks", "ctr", "country", "flag"]
    assert out.to_pydict() == {
        EVENT_TIME: [T0 + timedelta(microseconds=1), T0],
        "clicks": [None, 3],
        "ctr": [0.5, 0.25],
        "country": ["jp", "fr"],
        "flag": [False, True],
    }
    assert out.schema.field(EVENT_TIME).type == pa.timestamp("us", tz="UTC")


def test_naive_event_times_are_utc(store: SQLiteOnlineStore) -> None:
    table = pa.table(
        {"user_id": [1], EVENT_TIME: pa.array([T0.replace(tzinfo=None)], pa.timestamp("us")), "clicks": [1]}
    )
    store.write("v", ["user_id"], table)
    assert store.read("v", keys([1]), [])[EVENT_TIME].to_pylist() == [T0]
    us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert store.read_keys("v", [encode_key([1])]) == {"[1]": (us, {"clicks": 1})}


def test_upsert_overwrites_and_keeps_other_keys(store: SQLiteOnlineStore) -> None:
    store.write("v", ["user_id"], rows([1, 2], lambda i: i * 10))
    later = T0 + timedelta(hours=1)
    store.write("v", ["user_id"], rows([2, 3], lambda i: i * 100, times=[later, later]))
    out = store.read("v", keys([1, 2, 3]), ["clicks"]).to_pydict()
    assert out["clicks"] == [10, 200, 300]
    assert out[EVENT_TIME] == [T0, later, later]


def test_views_are_separate(store: SQLiteOnlineStore) -> None:
    store.write("a", ["user_id"], rows([1], 1))
    store.write("b", ["user_id"], rows([1], 2))
    assert store.read("a", keys([1]), ["clicks"])["clicks"].to_pylist() == [1]
    assert store.read("b", keys([1]), ["clicks"])["clicks"].to_pylist() == [2]


def test_missing_keys_read_as_null(store: SQLiteOnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 5))
    out = store.read("v", keys([7, 1, 8]), ["clicks"]).to_pydict()
    assert out == {EVENT_TIME: [None, T0, None], "clicks": [None, 5, None]}
    assert store.read("never_written", keys([1]), ["clicks"]).to_pydict() == {
        EVENT_TIME: [None],
        "clicks": [None],
    }


def test_key_values_must_match_in_type(store: SQLiteOnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 5))
    assert store.read("v", keys(["1"]), ["clicks"])["clicks"].to_pylist() == [None]


def test_multi_column_keys(store: SQLiteOnlineStore) -> None:
    table = pa.table(
        {
            "user_id": [1, 1, 2],
            "item": ["a", "b", "a"],
            EVENT_TIME: pa.array([T0] * 3, pa.timestamp("us", tz="UTC")),
            "rating": [1, 2, 3],
        }
    )
    store.write("ui", ["user_id", "item"], table)
    ask = pa.table({"user_id": [2, 1, 1, 2], "item": ["a", "b", "a", "b"]})
    assert store.read("ui", ask, ["rating"])["rating"].to_pylist() == [3, 2, 1, None]
    swapped = pa.table({"item": ["a"], "user_id": [2]})  # columns are taken in the given order
    assert store.read("ui", swapped, ["rating"])["rating"].to_pylist() == [None]


def test_read_a_subset_of_features(store: SQLiteOnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 5, ctr=[0.1], country=["fr"]))
    out = store.read("v", keys([1]), ["country"])
    assert out.column_names == [EVENT_TIME, "country"]
    assert out["country"].to_pylist() == ["fr"]
    assert store.read("v", keys([1]), ["not_a_feature"])["not_a_feature"].to_pylist() == [None]


def test_duplicate_keys_in_a_read(store: SQLiteOnlineStore) -> None:
    store.write("v", ["user_id"], rows([1, 2], lambda i: i))
    assert store.read("v", keys([2, 2, 1, 2]), ["clicks"])["clicks"].to_pylist() == [2, 2, 1, 2]


def test_empty_read_and_write(store: SQLiteOnlineStore) -> None:
    assert store.write("v", ["user_id"], rows([], 0)) == 0
    out = store.read("v", pa.table({"user_id": pa.array([], pa.int64())}), ["clicks"])
    assert out.num_rows == 0
    assert store.read_keys("v", []) == {}


def test_delete_removes_one_view(store: SQLiteOnlineStore) -> None:
    store.write("a", ["user_id"], rows([1, 2], 1))
    store.write("b", ["user_id"], rows([1], 2))
    store.delete("a")
    assert store.read("a", keys([1, 2]), ["clicks"])["clicks"].to_pylist() == [None, None]
    assert store.read("b", keys([1]), ["clicks"])["clicks"].to_pylist() == [2]


def test_values_survive_reopening(tmp_path: Path) -> None:
    first = SQLiteOnlineStore(tmp_path / "values.db")
    first.write("v", ["user_id"], rows([1], 9))
    first.close()
    second = SQLiteOnlineStore(tmp_path / "values.db")
    assert second.read("v", keys([1]), ["clicks"])["clicks"].to_pylist() == [9]
    second.close()


def test_many_keys_cross_the_parameter_chunks(store: SQLiteOnlineStore) -> None:
    ids = list(range(2_500))
    store.write("v", ["user_id"], rows(ids, lambda i: i * 2))
    asked = [*reversed(ids), 10_000, 5]  # 2,502 keys: three chunks of at most 900
    out = store.read("v", keys(asked), ["clicks"])["clicks"].to_pylist()
    assert out == [i * 2 for i in reversed(ids)] + [None, 10]
    assert len(store.read_keys("v", [encode_key([i]) for i in range(899, 1802)])) == 903


def test_rows_lacking_columns_or_times_are_refused(store: SQLiteOnlineStore) -> None:
    with pytest.raises(Invalid, match="lack column"):
        store.write("v", ["user_id"], pa.table({"user_id": [1], "clicks": [1]}))
    with pytest.raises(Invalid, match=r"lack column.*item"):
        store.write("v", ["user_id", "item"], rows([1], 1))
    null_time = pa.table(
        {"user_id": [1], EVENT_TIME: pa.array([None], pa.timestamp("us", tz="UTC")), "clicks": [1]}
    )
    with pytest.raises(Invalid, match="null event_time"):
        store.write("v", ["user_id"], null_time)


def test_decimal_values_are_stored_as_numbers(store: SQLiteOnlineStore) -> None:
    # DECIMAL columns (common in Parquet from warehouses) reach here as Python Decimals.
    table = rows([1], price=pa.array([Decimal("12.50")], pa.decimal128(10, 2)))
    store.write("v", ["user_id"], table)
    assert store.read("v", keys([1]), ["price"])["price"].to_pylist() == [12.5]


def test_unserializable_value_fails_cleanly_and_keeps_old_values(store: SQLiteOnlineStore) -> None:
    store.write("v", ["user_id"], rows([1, 2], lambda i: i))
    bad = rows([1, 2], lambda i: i * 100).append_column("blob", pa.array([b"ok", b"\xff"], pa.binary()))
    with pytest.raises(Invalid, match="cannot store feature 'blob'"):
        store.write("v", ["user_id"], bad)
    assert store.read("v", keys([1, 2]), ["clicks"])["clicks"].to_pylist() == [1, 2]


def test_write_failing_midway_leaves_previous_values(
    store: SQLiteOnlineStore,
    break_online_writes: Callable[[SQLiteOnlineStore], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = list(range(10))
    store.write("v", ["user_id"], rows(ids, lambda i: i))
    break_online_writes(store)
    with pytest.raises(sqlite3.OperationalError):
        store.write("v", ["user_id"], rows([*ids, 99], lambda i: -1))
    monkeypatch.undo()
    out = store.read("v", keys([*ids, 99]), ["clicks"])["clicks"].to_pylist()
    assert out == [*ids, None]
    # The store is still usable: the failed transaction was rolled back, not left open.
    store.write("v", ["user_id"], rows([99], 5))
    assert store.read("v", keys([99]), ["clicks"])["clicks"].to_pylist() == [5]


def test_threads_read_concurrently_and_never_see_a_half_write(store: SQLiteOnlineStore) -> None:
    ids = list(range(2_000))  # three SELECTs per read: they must share one snapshot
    store.write("v", ["user_id"], rows(ids, 0))
    errors: list[BaseException] = []
    seen: list[set[Any]] = []

    def reader() -> None:
        try:
            for _ in range(30):
                values = store.read("v", keys(ids), ["clicks"])["clicks"].to_pylist()
                seen.append(set(values))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for version in range(1, 20):
        store.write("v", ["user_id"], rows(ids, version))
    for thread in threads:
        thread.join()
    assert not errors
    assert len(seen) == 60
    assert all(len(values) == 1 for values in seen)  # each read sees one whole write
    assert store.read("v", keys(ids), ["clicks"])["clicks"].to_pylist() == [19] * len(ids)
