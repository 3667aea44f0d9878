"""The online store seam: one conformance suite run over every backend (SQLite, Redis), then
what only one backend promises (Redis: key layout, one round trip per read, errors)."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from openlearner import Settings
from openlearner.errors import Conflict, Corrupt, Invalid, Unavailable
from openlearner.features.online import (
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
    encode_key,
    open_online_store,
)
from openlearner.features.online.base import EVENT_TIME

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_US = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
ONLINE_STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=ONLINE_STORES)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], OnlineStore]]:
    """Opens stores over one backing (a SQLite file, a Redis namespace); closes them all afterwards."""
    opened: list[OnlineStore] = []
    if request.param == "redis":
        url, namespace = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_namespace")

    def make() -> OnlineStore:
        if request.param == "sqlite":
            store: OnlineStore = SQLiteOnlineStore(tmp_path / "online" / "values.db")
        else:
            store = RedisOnlineStore(url, namespace)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], OnlineStore]) -> OnlineStore:
    return open_store()


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


def test_write_then_read_round_trip(store: OnlineStore) -> None:
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


def test_naive_event_times_are_utc(store: OnlineStore) -> None:
    table = pa.table(
        {"user_id": [1], EVENT_TIME: pa.array([T0.replace(tzinfo=None)], pa.timestamp("us")), "clicks": [1]}
    )
    store.write("v", ["user_id"], table)
    assert store.read("v", keys([1]), [])[EVENT_TIME].to_pylist() == [T0]
    assert store.read_keys("v", [encode_key([1])]) == {"[1]": (T0_US, {"clicks": 1})}


@pytest.mark.parametrize(
    "kind",
    [pa.timestamp("us", tz="America/New_York"), pa.timestamp("ns", tz="Asia/Tokyo"), pa.timestamp("ms")],
)
def test_event_times_of_any_unit_and_zone_are_the_same_instant(store: OnlineStore, kind: pa.DataType) -> None:
    before_epoch = datetime(1969, 7, 20, 20, 17, 40, 123_000, tzinfo=UTC)
    times = pa.array([T0, before_epoch], pa.timestamp("us", tz="UTC")).cast(kind)
    store.write("v", ["user_id"], pa.table({"user_id": [1, 2], EVENT_TIME: times, "clicks": [1, 2]}))
    assert store.read("v", keys([1, 2]), [])[EVENT_TIME].to_pylist() == [T0, before_epoch]


def test_upsert_overwrites_and_keeps_other_keys(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1, 2], lambda i: i * 10))
    later = T0 + timedelta(hours=1)
    store.write("v", ["user_id"], rows([2, 3], lambda i: i * 100, times=[later, later]))
    out = store.read("v", keys([1, 2, 3]), ["clicks"]).to_pydict()
    assert out["clicks"] == [10, 200, 300]
    assert out[EVENT_TIME] == [T0, later, later]


def test_views_are_separate(store: OnlineStore) -> None:
    store.write("a", ["user_id"], rows([1], 1))
    store.write("b", ["user_id"], rows([1], 2))
    assert store.read("a", keys([1]), ["clicks"])["clicks"].to_pylist() == [1]
    assert store.read("b", keys([1]), ["clicks"])["clicks"].to_pylist() == [2]


def test_missing_keys_read_as_null(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 5))
    out = store.read("v", keys([7, 1, 8]), ["clicks"]).to_pydict()
    assert out == {EVENT_TIME: [None, T0, None], "clicks": [None, 5, None]}
    assert store.read("never_written", keys([1]), ["clicks"]).to_pydict() == {
        EVENT_TIME: [None],
        "clicks": [None],
    }


def test_key_values_must_match_in_type(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 5))
    assert store.read("v", keys(["1"]), ["clicks"])["clicks"].to_pylist() == [None]


def test_multi_column_keys(store: OnlineStore) -> None:
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


def test_read_a_subset_of_features(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 5, ctr=[0.1], country=["fr"]))
    out = store.read("v", keys([1]), ["country"])
    assert out.column_names == [EVENT_TIME, "country"]
    assert out["country"].to_pylist() == ["fr"]
    assert store.read("v", keys([1]), ["not_a_feature"])["not_a_feature"].to_pylist() == [None]


def test_duplicate_keys_in_a_read(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1, 2], lambda i: i))
    assert store.read("v", keys([2, 2, 1, 2]), ["clicks"])["clicks"].to_pylist() == [2, 2, 1, 2]


def test_empty_read_and_write(store: OnlineStore) -> None:
    assert store.write("v", ["user_id"], rows([], 0)) == 0
    out = store.read("v", pa.table({"user_id": pa.array([], pa.int64())}), ["clicks"])
    assert out.num_rows == 0
    assert store.read_keys("v", []) == {}


def test_delete_removes_one_view(store: OnlineStore) -> None:
    store.write("a", ["user_id"], rows([1, 2], 1))
    store.write("b", ["user_id"], rows([1], 2))
    store.delete("a")
    assert store.read("a", keys([1, 2]), ["clicks"])["clicks"].to_pylist() == [None, None]
    assert store.read("b", keys([1]), ["clicks"])["clicks"].to_pylist() == [2]


def test_values_survive_reopening(open_store: Callable[[], OnlineStore]) -> None:
    first = open_store()
    first.write("v", ["user_id"], rows([1], 9))
    first.close()
    second = open_store()  # another process, or a predictor replica
    assert second.read("v", keys([1]), ["clicks"])["clicks"].to_pylist() == [9]


def test_store_is_usable_after_close(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1], 9))
    store.close()
    assert store.read("v", keys([1]), ["clicks"])["clicks"].to_pylist() == [9]


def test_many_keys_cross_the_chunks(store: OnlineStore) -> None:
    ids = list(range(2_500))  # Redis: three HSETs in one transaction
    store.write("v", ["user_id"], rows(ids, lambda i: i * 2))
    asked = [*reversed(ids), 10_000, 5]  # SQLite: 2,502 keys, three SELECTs of at most 900
    out = store.read("v", keys(asked), ["clicks"])["clicks"].to_pylist()
    assert out == [i * 2 for i in reversed(ids)] + [None, 10]
    assert len(store.read_keys("v", [encode_key([i]) for i in range(899, 1802)])) == 903


def test_rows_lacking_columns_or_times_are_refused(store: OnlineStore) -> None:
    with pytest.raises(Invalid, match="lack column"):
        store.write("v", ["user_id"], pa.table({"user_id": [1], "clicks": [1]}))
    with pytest.raises(Invalid, match=r"lack column.*item"):
        store.write("v", ["user_id", "item"], rows([1], 1))
    null_time = pa.table(
        {"user_id": [1], EVENT_TIME: pa.array([None], pa.timestamp("us", tz="UTC")), "clicks": [1]}
    )
    with pytest.raises(Invalid, match="null event_time"):
        store.write("v", ["user_id"], null_time)


def test_decimal_values_are_stored_as_numbers(store: OnlineStore) -> None:
    # DECIMAL columns (common in Parquet from warehouses) reach here as Python Decimals.
    table = rows([1], price=pa.array([Decimal("12.50")], pa.decimal128(10, 2)))
    store.write("v", ["user_id"], table)
    assert store.read("v", keys([1]), ["price"])["price"].to_pylist() == [12.5]


def test_unserializable_value_fails_cleanly_and_keeps_old_values(store: OnlineStore) -> None:
    store.write("v", ["user_id"], rows([1, 2], lambda i: i))
    bad = rows([1, 2], lambda i: i * 100).append_column("blob", pa.array([b"ok", b"\xff"], pa.binary()))
    with pytest.raises(Invalid, match="cannot store feature 'blob'"):
        store.write("v", ["user_id"], bad)
    assert store.read("v", keys([1, 2]), ["clicks"])["clicks"].to_pylist() == [1, 2]


def test_write_failing_midway_leaves_previous_values(
    store: OnlineStore,
    break_online_writes: Callable[[OnlineStore], type[Exception]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = list(range(2_500))  # Redis: several HSETs reach the server, EXEC does not
    store.write("v", ["user_id"], rows(ids, lambda i: i))
    error = break_online_writes(store)
    with pytest.raises(error):
        store.write("v", ["user_id"], rows([*ids, 10_000], lambda i: -1))
    monkeypatch.undo()
    out = store.read("v", keys([*ids, 10_000]), ["clicks"])["clicks"].to_pylist()
    assert out == [*ids, None]
    # The store is still usable: the failed transaction was rolled back, not left open.
    store.write("v", ["user_id"], rows([10_000], 5))
    assert store.read("v", keys([10_000]), ["clicks"])["clicks"].to_pylist() == [5]


def _read_while_writing(store: OnlineStore, ids: list[int], read: Callable[[], Any], reads: int) -> list[Any]:
    """What ``read()`` returned, ``reads`` times in each of two threads, while versions 1 to 19
    of view ``v`` (every one of ``ids``) were written."""
    errors: list[BaseException] = []
    seen: list[Any] = []

    def reader() -> None:
        try:
            for _ in range(reads):
                seen.append(read())
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
    assert len(seen) == 2 * reads
    return seen


def test_threads_read_concurrently_and_never_see_a_half_write(store: OnlineStore) -> None:
    ids = list(range(2_000))  # SQLite: three SELECTs per read, which must share one snapshot
    store.write("v", ["user_id"], rows(ids, 0))
    seen = _read_while_writing(
        store, ids, lambda: set(store.read("v", keys(ids), ["clicks"])["clicks"].to_pylist()), 30
    )
    assert all(len(values) == 1 for values in seen)  # each read sees one whole write
    assert store.read("v", keys(ids), ["clicks"])["clicks"].to_pylist() == [19] * len(ids)


def test_read_columns_sees_every_write_at_once(open_store: Callable[[], OnlineStore], tmp_path: Path) -> None:
    """Reads repeated with nothing written in between may be answered from what the store kept;
    a write through this store, another store on the same backing, another thread or another
    process is seen by the very next read."""
    reader, writer = open_store(), open_store()
    asked = [("v", ["[1]", "[2]", "[3]"])]

    def clicks() -> list[Any]:
        return [None if doc is None else doc["clicks"] for doc in reader.read_columns(asked)[0][1]]

    reader.write("v", ["user_id"], rows([1, 2], 0))
    assert clicks() == [0, 0, None]
    assert clicks() == [0, 0, None]
    reader.write("v", ["user_id"], rows([1], 1))  # its own write
    assert clicks() == [1, 0, None]
    writer.write("v", ["user_id"], rows([2, 3], 2))  # another store (another connection)
    assert clicks() == [1, 2, 2]
    thread = threading.Thread(target=lambda: (reader.write("v", ["user_id"], rows([3], 3)), reader.close()))
    thread.start()
    thread.join()
    assert clicks() == [1, 2, 3]
    if isinstance(reader, SQLiteOnlineStore):  # another process writing the same file
        script = (
            "import sys, pyarrow as pa\n"
            "from openlearner.features.online import SQLiteOnlineStore\n"
            "store = SQLiteOnlineStore(sys.argv[1])\n"
            "store.write('v', ['user_id'], pa.table({'user_id': [1], 'event_time': "
            "pa.array([0], pa.timestamp('us', tz='UTC')), 'clicks': [4]}))\n"
        )
        subprocess.run([sys.executable, "-c", script, str(reader.path)], check=True, timeout=60)
        assert clicks() == [4, 2, 3]
    writer.delete("v")
    assert clicks() == [None, None, None]
    reader.write("v", ["user_id"], rows([2], 5))
    assert clicks() == [None, 5, None]
    reader.delete("v")  # its own delete
    assert clicks() == [None, None, None]


def test_threads_reading_columns_never_see_a_half_write(store: OnlineStore) -> None:
    """As above for :meth:`read_columns`, whose answers a store may keep between reads."""
    ids = list(range(1_000))
    store.write("v", ["user_id"], rows(ids, 0))
    store.write("w", ["user_id"], rows(ids[:10], -1))
    asked = [("v", [encode_key([i]) for i in ids]), ("w", [encode_key([i]) for i in ids[:10]])]
    seen = _read_while_writing(
        store,
        ids,
        lambda: tuple({doc["clicks"] for doc in docs} for _, docs in store.read_columns(asked)),
        60,
    )
    assert all(len(v) == 1 and w == {-1} for v, w in seen)  # each read sees one whole write
    assert [doc["clicks"] for doc in store.read_columns(asked)[0][1]] == [19] * len(ids)


def test_sqlite_keeps_what_it_read_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "values.db"
    kept, fresh = SQLiteOnlineStore(path), SQLiteOnlineStore(path, cache_entries=0)
    kept.write("v", ["user_id"], rows([1, 2], 7))
    first = kept.read_columns([("v", ["[1]", "[3]"])])
    assert kept.keeps_documents
    again = kept.read_columns([("v", ["[1]", "[3]"])])
    assert again == first == [([T0_US, None], [{"clicks": 7}, None])]
    assert again[0][1][0] is first[0][1][0]  # the same document, not decoded again
    assert fresh.read_columns([("v", ["[1]"])])[0][1][0] is not fresh.read_columns([("v", ["[1]"])])[0][1][0]
    assert not fresh.keeps_documents
    fresh.write("v", ["user_id"], rows([1], 8))
    changed = kept.read_columns([("v", ["[1]", "[3]"])])
    assert changed == [([T0_US, None], [{"clicks": 8}, None])]
    # At its limit a store forgets what it kept and keeps the newest answers.
    small = SQLiteOnlineStore(path, cache_entries=3)
    small.write("v", ["user_id"], rows(list(range(10)), 1))
    for start in range(0, 10, 2):
        pair = [("v", [f"[{start}]", f"[{start + 1}]"])]
        answer = small.read_columns(pair)[0][1]
        assert answer == [{"clicks": 1}] * 2
        assert len(small._kept.entries) == 2  # the pair before was forgotten, this one kept
        assert all(a is b for a, b in zip(small.read_columns(pair)[0][1], answer, strict=True))
    # A read of more keys than may be kept keeps none (and still answers them all), and says so.
    assert [d["clicks"] for d in small.read_columns([("v", [f"[{i}]" for i in range(10)])])[0][1]] == [1] * 10
    assert len(small._kept.entries) == 2 and not small.keeps_documents
    with pytest.raises(Invalid, match="cache_entries"):
        SQLiteOnlineStore(path, cache_entries=-1)
    for store in (kept, fresh, small):
        store.close()


def test_sqlite_threads_share_what_is_kept(tmp_path: Path) -> None:
    """Every thread reads through its own connection, but what the store keeps is one set: a
    key one thread read is answered to the others as the same document, without a query; a
    key another thread reads first is read from the file once; and a commit is seen by the
    next read, whichever thread reads."""
    path = tmp_path / "values.db"
    store, writer = SQLiteOnlineStore(path, cache_entries=8), SQLiteOnlineStore(path)
    writer.write("v", ["user_id"], rows(list(range(6)), 1))
    selected: list[str] = []
    select = store._select

    def counted(con: Any, requests: Any) -> Any:
        selected.append(threading.current_thread().name)
        return select(con, requests)

    store._select = counted  # type: ignore[method-assign]
    first = store.read_columns([("v", ["[0]", "[1]"])])[0][1]
    answers: dict[int, Any] = {}
    connections: list[Any] = []

    def read(i: int) -> None:
        answers[i] = store.read_columns([("v", ["[0]", "[1]"])])[0][1]
        connections.append(store._local.con)  # (held: each its own)

    threads = [threading.Thread(target=read, args=(i,), name=f"reader-{i}") for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer[0] is first[0] and answer[1] is first[1] for answer in answers.values())
    assert len({id(con) for con in connections}) == 12 and selected == ["MainThread"]

    def read_one(i: int) -> None:
        store.read_columns([("v", [f"[{2 + i % 4}]"])])

    for i in range(12):  # four more keys, each asked by three threads in turn
        thread = threading.Thread(target=read_one, args=(i,))
        thread.start()
        thread.join()
    assert len(selected) == 5  # each new key read from the file once
    assert len(store._kept.entries) == 6
    writer.write("v", ["user_id"], rows([0], 2))
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(store.read_columns([("v", ["[0]"])])[0][1][0]))
    thread.start()
    thread.join()
    assert seen == [{"clicks": 2}] and store.read_columns([("v", ["[0]"])])[0][1][0] is seen[0]
    for each in (store, writer, *connections):
        each.close()


@pytest.mark.parametrize("closed", [False, True])
def test_sqlite_keeps_no_answer_read_before_a_change_another_thread_saw(tmp_path: Path, closed: bool) -> None:
    """A thread's read that misses what is kept queries the file after asking the version;
    should another thread meanwhile see a newer version (a commit in between), the first
    thread's answers may be older than it and are not kept under it. Nor when the store was
    closed meanwhile: the next read asks a new watching connection, whose version may be the
    very number the old one had."""
    path = tmp_path / "values.db"
    store, writer = SQLiteOnlineStore(path), SQLiteOnlineStore(path)
    writer.write("v", ["user_id"], rows([1], 1))
    select = store._select
    calls = 0

    def in_another_thread(work: Callable[[], Any]) -> None:
        other = threading.Thread(target=work)
        other.start()
        other.join()

    def slow(con: Any, requests: Any) -> Any:
        nonlocal calls
        calls += 1
        answer = select(con, requests)
        if calls == 1:  # the first query has answered; a commit, and another thread's read
            if closed:
                in_another_thread(store.close)
            writer.write("v", ["user_id"], rows([1], 2))
            in_another_thread(lambda: store.read_columns([("v", ["[2]"])]))
        return answer

    store._select = slow  # type: ignore[method-assign]
    assert store.read_columns([("v", ["[1]"])])[0][1] == [{"clicks": 1}]  # as of its query
    assert not store.keeps_documents
    assert store.read_columns([("v", ["[1]"])])[0][1] == [{"clicks": 2}]
    assert store.read_columns([("v", ["[1]"])])[0][1] == [{"clicks": 2}]  # (kept now)
    for each in (store, writer):
        each.close()


def test_sqlite_stops_keeping_while_reads_keep_asking_for_new_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openlearner.features.online import sqlite

    monkeypatch.setattr(sqlite, "_TRIAL_READS", 4)
    monkeypatch.setattr(sqlite, "_UNKEPT_READS", 4)
    store, other = SQLiteOnlineStore(tmp_path / "values.db"), SQLiteOnlineStore(tmp_path / "values.db")
    store.write("v", ["user_id"], rows(list(range(20)), 1))

    def read(key: int) -> Any:
        return store.read_columns([("v", [f"[{key}]"])])[0][1][0]

    assert read(0) is read(0)  # kept
    read(1)
    read(2)  # the end of a trial that answered a read whole: keeping goes on
    assert store._kept.unkept == 0 and store.keeps_documents
    for key in (3, 4, 5, 6):  # a trial answering none whole, its share of keys found no higher
        assert read(key) == {"clicks": 1}
    assert store._kept.unkept == 4 and not store.keeps_documents
    assert read(7) is not read(7)  # straight from the file meanwhile
    kept = store._kept.entries
    assert ("v", "[0]") in kept and ("v", "[7]") not in kept  # what was kept stays kept
    other.write("v", ["user_id"], rows([0], 2))  # another connection commits meanwhile
    assert read(0) == {"clicks": 2} and read(0) == {"clicks": 2}  # the last two from the file
    assert store._kept.unkept == 0 and not store.keeps_documents
    assert read(0) == {"clicks": 2} and store.keeps_documents  # keeping again, not what it kept before
    assert read(0) is read(0) and read(0) == {"clicks": 2}
    for each in (store, other):
        each.close()


@pytest.mark.parametrize(("entities", "shuffled", "filled_by"), [(400, False, 200), (1_000, True, 400)])
def test_sqlite_keeps_a_hot_set_read_in_batches(
    tmp_path: Path, entities: int, shuffled: bool, filled_by: int
) -> None:
    """Batches of 16 entities nearly always hold one not yet kept while a hot set fills; keeping
    must go on until it is full (the predictor's batches under load read like this). 400
    entities drawn at random fill within a few trials; 1,000, each once in turn, fail the
    first trial (no key of its 512 was kept before) and fill over the next ones, for what
    was kept stays kept."""
    store = SQLiteOnlineStore(tmp_path / "values.db")
    store.write("v", ["user_id"], rows(list(range(entities)), 1))
    selected: list[int] = []
    select = store._select
    read = 0

    def counted(con: Any, requests: Any) -> Any:
        selected.append(read)
        return select(con, requests)

    store._select = counted  # type: ignore[method-assign]
    rng = random.Random(3)
    order = [(i * 7919) % entities for i in range(entities)]  # every one once per round, shuffled
    for read in range(filled_by + 200):
        if shuffled:
            keys = [f"[{order[(read * 16 + j) % entities]}]" for j in range(16)]
        else:
            keys = [f"[{rng.randrange(entities)}]" for _ in range(16)]
        assert [d["clicks"] for d in store.read_columns([("v", keys)])[0][1]] == [1] * 16
    assert selected and max(selected) < filled_by and store.keeps_documents
    store.close()


def test_sqlite_stops_keeping_when_every_read_holds_a_key_never_seen(tmp_path: Path) -> None:
    """Hot keys with one new key in every read: most keys are found kept, yet no read is
    answered from what is kept, so keeping stops (and resumes, to try again, after 256)."""
    store = SQLiteOnlineStore(tmp_path / "values.db")
    store.write("v", ["user_id"], rows(list(range(2_000)), 1))
    unkept = []
    for read in range(600):
        keys = [f"[{k}]" for k in range(15)] + [f"[{100 + read}]"]
        assert [d["clicks"] for d in store.read_columns([("v", keys)])[0][1]] == [1] * 16
        unkept.append(store._kept.unkept > 0)
    assert sum(unkept) >= 400  # 256 of every 288 reads after the first trials
    store.close()


def test_settings_size_what_the_sqlite_store_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLEARNER_ONLINE_CACHE_ENTRIES", "0")
    store = open_online_store(Settings(home=tmp_path), "abc")
    assert isinstance(store, SQLiteOnlineStore) and store.cache_entries == 0 and not store.keeps_documents
    store.close()
    monkeypatch.setenv("OPENLEARNER_ONLINE_CACHE_ENTRIES", "-5")
    with pytest.raises(ValueError, match="online_cache_entries"):
        Settings(home=tmp_path)


# -- choosing a backend ---------------------------------------------------------------------


def test_settings_choose_the_backend_and_the_redis_namespace(tmp_path: Path) -> None:
    sqlite = open_online_store(Settings(home=tmp_path), "abc")
    assert isinstance(sqlite, SQLiteOnlineStore) and sqlite.path == tmp_path / "online.db"
    sqlite.close()
    # Nothing connects yet, so no server is needed to open a Redis store.
    settings = Settings(home=tmp_path, online_store="redis", redis_url="redis://db.example:6380/2")
    default = open_online_store(settings, "abc")
    assert isinstance(default, RedisOnlineStore)
    assert (default.url, default.namespace) == ("redis://db.example:6380/2", "openlearner:abc")
    named = open_online_store(settings.model_copy(update={"redis_namespace": "team-a"}), "abc")
    assert isinstance(named, RedisOnlineStore) and named.namespace == "team-a"


def test_importing_openlearner_does_not_import_redis() -> None:
    code = (
        "import sys, openlearner, openlearner.features.online; "
        "assert 'redis' not in sys.modules, 'redis was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- Redis only ------------------------------------------------------------------------------


@pytest.fixture
def redis_store(redis_url: str, redis_namespace: str) -> Iterator[RedisOnlineStore]:
    store = RedisOnlineStore(redis_url, redis_namespace)
    yield store
    store.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.mark.redis
def test_redis_keeps_one_hash_per_view(redis_store: RedisOnlineStore, redis_client: Any) -> None:
    redis_store.write("v", ["user_id"], rows([1, 2], lambda i: i * 10))
    key = f"{redis_store.namespace}:v"
    assert redis_client.type(key) == b"hash"
    # The documented value layout: event time (8-byte big-endian µs), then the JSON document.
    assert redis_client.hgetall(key) == {
        b"[1]": struct.pack(">q", T0_US) + b'{"clicks":10}',
        b"[2]": struct.pack(">q", T0_US) + b'{"clicks":20}',
    }
    redis_store.delete("v")
    assert redis_client.exists(key) == 0


@pytest.mark.redis
def test_redis_namespaces_do_not_see_each_other(redis_url: str, redis_namespace: str) -> None:
    a = RedisOnlineStore(redis_url, f"{redis_namespace}:a")
    b = RedisOnlineStore(redis_url, f"{redis_namespace}:b")
    a.write("v", ["user_id"], rows([1, 2], 1))
    b.write("v", ["user_id"], rows([1], 2))
    assert a.read("v", keys([1, 2]), ["clicks"])["clicks"].to_pylist() == [1, 1]
    assert b.read("v", keys([1, 2]), ["clicks"])["clicks"].to_pylist() == [2, None]
    a.delete("v")
    assert a.read_keys("v", ["[1]"]) == {}
    assert b.read("v", keys([1]), ["clicks"])["clicks"].to_pylist() == [2]
    a.close()
    b.close()


def _spy_on_sockets(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every packet sent on a socket from now on (a read's request is one ``sendall``)."""
    import socket

    sent: list[bytes] = []
    real_sendall = socket.socket.sendall

    def sendall(self: socket.socket, data: Any, *args: Any) -> None:
        sent.append(bytes(data))
        return real_sendall(self, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", sendall)
    return sent


@pytest.mark.redis
def test_redis_read_keys_is_one_round_trip(
    redis_store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = list(range(100))
    redis_store.write("v", ["user_id"], rows(ids, lambda i: i))
    redis_store.read_keys("v", ["[0]"])  # opens the read connection (its handshake is not counted)
    sent = _spy_on_sockets(monkeypatch)
    found = redis_store.read_keys("v", [encode_key([i]) for i in [*ids, 1_000, 7]])
    assert len(found) == 100 and found["[7]"] == (T0_US, {"clicks": 7})
    assert len(sent) == 1 and sent[0].split(b"\r\n")[2] == b"HMGET"


@pytest.mark.redis
def test_redis_reads_of_several_views_are_one_round_trip(
    redis_store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_store.write("users", ["user_id"], rows([1, 2], lambda i: i))
    redis_store.write("ads", ["user_id"], rows([3], lambda i: 10 * i))
    redis_store.read_keys("users", ["[1]"])  # opens the read connection
    sent = _spy_on_sockets(monkeypatch)
    users, ads, empty = redis_store.read_views([("users", ["[1]", "[9]"]), ("ads", ["[3]"]), ("users", [])])
    assert set(users) == {"[1]"} and ads["[3]"] == (T0_US, {"clicks": 30}) and empty == {}
    assert len(sent) == 1 and sent[0].count(b"HMGET") == 2  # one packet, both commands


@pytest.mark.redis
def test_redis_read_connection_times_out_without_polling(redis_store: RedisOnlineStore) -> None:
    redis_store.write("v", ["user_id"], rows([1], 1))
    redis_store.read_keys("v", ["[1]"])
    (conn,) = redis_store._readers
    assert conn._sock.gettimeout() is None  # blocking: no poll() before each send and receive
    # ... and the kernel still bounds each wait by the client's socket timeout.
    import socket
    import struct

    seconds, micros = struct.unpack("ll", conn._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    assert 0 < seconds + micros / 1e6 <= 60


def test_read_views_equals_read_keys_per_view(store: OnlineStore) -> None:
    store.write("users", ["user_id"], rows([1, 2], lambda i: i))
    store.write("ads", ["user_id"], rows([3], lambda i: 10 * i))
    keys = [("users", ["[1]", "[2]", "[5]"]), ("ads", ["[3]", "[1]"])]
    assert store.read_views(keys) == [store.read_keys(view, k) for view, k in keys]


@pytest.mark.redis
def test_redis_key_of_another_kind_is_a_conflict(redis_store: RedisOnlineStore, redis_client: Any) -> None:
    redis_client.set(f"{redis_store.namespace}:v", "someone else's")
    with pytest.raises(Conflict, match="OPENLEARNER_REDIS_NAMESPACE"):
        redis_store.write("v", ["user_id"], rows([1], 1))
    with pytest.raises(Conflict, match="holds something other than"):
        redis_store.read_keys("v", ["[1]"])


@pytest.mark.redis
def test_redis_value_of_another_format_is_corrupt(redis_store: RedisOnlineStore, redis_client: Any) -> None:
    redis_client.hset(f"{redis_store.namespace}:v", "[1]", b"12")
    with pytest.raises(Corrupt, match=r"field \[1\] .* is not an OpenLearner online value"):
        redis_store.read_keys("v", ["[1]"])


def test_unreachable_redis_is_unavailable() -> None:
    store = RedisOnlineStore("redis://:hunter2@127.0.0.1:1/0", "ns")  # nothing listens on port 1
    calls: list[Callable[[], object]] = [
        lambda: store.read_keys("v", ["[1]"]),
        lambda: store.write("v", ["user_id"], rows([1], 1)),
        lambda: store.delete("v"),
    ]
    for call in calls:
        with pytest.raises(Unavailable) as info:
            call()
        message = str(info.value)
        assert "redis://:***@127.0.0.1:1/0 is unreachable" in message
        assert "start Redis" in message and "OPENLEARNER_REDIS_URL" in message
        assert "OPENLEARNER_ONLINE_STORE=sqlite" in message
        assert "hunter2" not in message
    store.close()


def test_a_url_that_is_not_redis_is_invalid() -> None:
    with pytest.raises(Invalid, match="'http://cache:6379' is not a Redis URL"):
        RedisOnlineStore("http://cache:6379", "ns")


def test_read_columns_answers_in_the_order_asked(store: OnlineStore) -> None:
    store.write("users", ["user_id"], rows([1, 2], lambda i: i, times=[T0, T0 + timedelta(microseconds=5)]))
    store.write(
        "pairs",
        ["user_id", "item"],
        pa.table(
            {
                "user_id": [1],
                "item": ['a "quoted" é'],
                EVENT_TIME: pa.array([T0], pa.timestamp("us", tz="UTC")),
                "rating": [4],
            }
        ),
    )
    asked = [
        ("users", ["[2]", "[9]", "[1]", "[2]"]),
        ("nothing_here", ["[1]"]),
        ("users", []),
        ("pairs", [encode_key([1, 'a "quoted" é']), encode_key([1, "a"])]),
    ]
    assert store.read_columns(asked) == [
        ([T0_US + 5, None, T0_US, T0_US + 5], [{"clicks": 2}, None, {"clicks": 1}, {"clicks": 2}]),
        ([None], [None]),
        ([], []),
        ([T0_US, None], [{"rating": 4}, None]),
    ]
    assert store.read_columns([]) == []


def test_read_columns_of_many_views_at_once(store: OnlineStore) -> None:
    for v in range(60):  # SQLite: more views than one compound SELECT takes
        store.write(f"v{v}", ["user_id"], rows([v], v))
    answers = store.read_columns([(f"v{v}", ["[1]", f"[{v}]"]) for v in range(60)])
    assert [docs for _, docs in answers] == [
        [{"clicks": 1} if v == 1 else None, {"clicks": v}] for v in range(60)
    ]


@pytest.mark.redis
def test_redis_reads_values_with_protocol_bytes_and_replies_of_many_packets(
    redis_store: RedisOnlineStore,
) -> None:
    # An event time whose 8 bytes hold "\r\n" and "$-1": the reply is walked by lengths, not lines.
    tricky_us = int.from_bytes(b"\x00\x05\r\n$-1\r", "big")
    tricky = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=tricky_us)
    ids = list(range(3_000))  # ~0.5 MB of reply: many reads from the socket
    long = "x" * 150 + "\r\n$5\r\n"
    redis_store.write("v", ["user_id"], rows(ids, lambda i: f"{long}{i}", times=[tricky] * len(ids)))
    asked = [encode_key([i]) for i in [*reversed(ids), -1]]
    times, docs = redis_store.read_columns([("v", asked)])[0]
    assert times == [tricky_us] * len(ids) + [None]
    assert docs == [{"clicks": f"{long}{i}"} for i in reversed(ids)] + [None]


def _local_ports(store: RedisOnlineStore) -> set[int]:
    return {conn._sock.getsockname()[1] for conn in store._readers if conn._sock is not None}


def _read_in_child(store: RedisOnlineStore, out: Any) -> None:
    out.put((store.read_columns([("v", ["[1]", "[2]"])]), _local_ports(store)))


@pytest.mark.redis
def test_redis_reads_in_a_forked_child_use_their_own_connection(redis_store: RedisOnlineStore) -> None:
    import multiprocessing

    redis_store.write("v", ["user_id"], rows([1, 2], lambda i: i * 3))
    expected = redis_store.read_columns([("v", ["[1]", "[2]"])])  # the parent's connection is open
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(redis_store, queue))
    child.start()
    answer, ports = queue.get(timeout=30)
    assert answer == expected
    assert ports and not ports & _local_ports(redis_store)  # not the parent's socket
    child.join(timeout=30)
    assert child.exitcode == 0
    assert redis_store.read_columns([("v", ["[1]", "[2]"])]) == expected  # the parent's still works


@pytest.mark.redis
def test_redis_read_after_the_server_dropped_an_idle_connection(
    redis_store: RedisOnlineStore, redis_client: Any
) -> None:
    redis_store.write("v", ["user_id"], rows([1], 4))
    first = redis_store.read_columns([("v", ["[1]"])])
    (port,) = _local_ports(redis_store)
    redis_client.client_kill(f"127.0.0.1:{port}")  # this connection only (the server is shared)
    assert redis_store.read_columns([("v", ["[1]"])]) == first  # retried on a new connection
    assert _local_ports(redis_store) and port not in _local_ports(redis_store)


class _Replying:
    """A stand-in socket whose reply lands after ``polls`` polls (never, when None)."""

    def __init__(self, polls: int | None, *, timeout: float | None = None, reply: bytes = b"*0\r\n") -> None:
        self.polls, self.timeout, self.reply = polls, timeout, reply
        self.calls: list[int] = []  # the flags of each recv

    def gettimeout(self) -> float | None:
        return self.timeout

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.calls.append(flags)
        if flags and (self.polls is None or len(self.calls) <= self.polls):
            raise BlockingIOError
        return self.reply


def _waiter(spin_us: int, monkeypatch: pytest.MonkeyPatch, cpus: int = 2) -> Any:
    from openlearner.features.online import redis as redis_store

    monkeypatch.setattr(redis_store.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    return redis_store._Waiter(spin_us)


def test_a_reply_that_lands_while_polling_is_taken_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    waiter = _waiter(10_000, monkeypatch)
    sock = _Replying(polls=3)
    assert waiter.first(sock) == b"*0\r\n"  # type: ignore[arg-type]
    assert sock.calls == [socket.MSG_DONTWAIT] * 4 and waiter.misses == 0


def test_replies_that_keep_coming_late_stop_the_polling_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    from openlearner.features.online import redis as redis_store

    waiter = _waiter(1, monkeypatch)  # 1 µs: every poll misses
    for late in range(1, redis_store._SPIN_MISSES):
        sock = _Replying(polls=None)
        assert waiter.first(sock) == b"*0\r\n"  # type: ignore[arg-type]
        assert sock.calls[0] != 0 and sock.calls[-1] == 0  # polled, then slept in recv
        assert waiter.misses == late and not waiter.paused
    waiter.first(_Replying(polls=None))  # type: ignore[arg-type]
    assert waiter.paused == redis_store._SPIN_PAUSE and waiter.misses == 0
    sock = _Replying(polls=0)
    waiter.first(sock)  # type: ignore[arg-type]
    assert sock.calls == [0] and waiter.paused == redis_store._SPIN_PAUSE - 1  # slept at once
    waiter.paused = 1
    waiter.first(_Replying(polls=0))  # type: ignore[arg-type]
    sock = _Replying(polls=0)
    waiter.first(sock)  # type: ignore[arg-type]
    assert sock.calls[0] != 0  # the pause is over: polling again


@pytest.mark.parametrize(
    ("spin_us", "cpus", "timeout"),
    [(0, 2, None), (200, 1, None), (200, 2, 5.0)],
    ids=["spin_us=0", "one CPU", "a Python-level timeout"],
)
def test_reads_that_must_not_poll_sleep_in_recv_at_once(
    monkeypatch: pytest.MonkeyPatch, spin_us: int, cpus: int, timeout: float | None
) -> None:
    waiter = _waiter(spin_us, monkeypatch, cpus)
    sock = _Replying(polls=0, timeout=timeout)
    assert waiter.first(sock) == b"*0\r\n"  # type: ignore[arg-type]
    assert sock.calls == [0]


def test_a_connection_closed_while_polling_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from openlearner.features.online import redis as redis_store

    waiter = _waiter(10_000, monkeypatch)
    with pytest.raises(ConnectionError, match="closed the connection"):
        redis_store._read_replies(_Replying(polls=2, reply=b""), 1, waiter.first)  # type: ignore[arg-type]


@pytest.mark.redis
@pytest.mark.parametrize("spin_us", [0, 200])
def test_redis_reads_give_the_same_values_polling_or_not(
    redis_url: str, redis_namespace: str, spin_us: int
) -> None:
    store = RedisOnlineStore(redis_url, redis_namespace, spin_us=spin_us)
    try:
        store.write("v", ["user_id"], rows(list(range(50)), lambda i: i * 3))
        for start in range(0, 60, 7):
            asked = [encode_key([i]) for i in range(start, start + 7)]
            found = store.read_keys("v", asked)
            assert found == {
                encode_key([i]): (T0_US, {"clicks": i * 3}) for i in range(start, min(start + 7, 50))
            }
    finally:
        store.delete("v")
        store.close()


def test_a_tls_connection_is_never_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SSLSocket refuses recv flags: over rediss:// reads sleep in recv at once."""
    import ssl

    class _TLS(ssl.SSLSocket):
        def __init__(self) -> None:  # no real socket: only what first() touches
            self.calls: list[int] = []

        def gettimeout(self) -> float | None:
            return None

        def recv(self, size: int = 1024, flags: int = 0) -> bytes:
            if flags:
                raise ValueError("non-zero flags not allowed in calls to recv() on <class 'ssl.SSLSocket'>")
            self.calls.append(flags)
            return b"*0\r\n"

    waiter = _waiter(10_000, monkeypatch)
    sock = _TLS()
    assert waiter.first(sock) == b"*0\r\n"
    assert sock.calls == [0]


def test_a_pause_never_goes_below_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads may race on the counters; a pause that went negative would stop polling for good."""
    waiter = _waiter(10_000, monkeypatch)
    waiter.paused = -3  # as two threads decrementing 1 at once could leave it
    sock = _Replying(polls=2)
    waiter.first(sock)  # type: ignore[arg-type]
    assert sock.calls[0] != 0  # polls again
    waiter.paused = 1
    waiter.first(_Replying(polls=0))  # type: ignore[arg-type]
    waiter.first(_Replying(polls=0))  # type: ignore[arg-type]
    assert waiter.paused == 0


_FORKED_READER = """
import os, sqlite3, sys
from datetime import datetime, timezone
import pyarrow as pa
from openlearner.features.online.sqlite import SQLiteOnlineStore

path = sys.argv[1]
store = SQLiteOnlineStore(path)
when = datetime(2024, 3, 1, tzinfo=timezone.utc)

def write(value):
    store.write("v", ["user_id"], pa.table({"user_id": [1], "event_time": [when], "clicks": [value]}))

def read():
    [(times, docs)] = store.read_columns([("v", ["[1]"])])
    return docs[0]["clicks"]

write(1)
print("parent", read(), flush=True)
inherited, watching = store._local.con, store._watch
pid = os.fork()
if pid == 0:  # leaves through Python's normal shutdown
    print("child reads", read(), "own connection", store._local.con is not inherited, flush=True)
    print("own watch", store._watch is not None and store._watch is not watching, flush=True)
    write(2)
    print("child wrote", read(), flush=True)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child status", status, flush=True)
print("parent", read(), "same connection", store._local.con is inherited, store._watch is watching, flush=True)
write(3)
check = sqlite3.connect(path)
print("file", check.execute("PRAGMA integrity_check").fetchone()[0], read(), flush=True)
"""


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """SQLite: never use a connection across a fork. The child of a process that read the store
    reads and writes through a connection of its own; the parent's keeps working, and sees
    the child's write (its kept documents are dropped when another connection commits)."""
    script = tmp_path / "fork.py"
    script.write_text(_FORKED_READER)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "values.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [
        "parent 1",
        "child reads 1 own connection True",
        "own watch True",
        "child wrote 2",
        "child status 0",
        "parent 2 same connection True True",
        "file ok 3",
    ]
