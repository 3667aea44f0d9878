"""DuckDB training sets against a brute-force point-in-time oracle, plus hand-written edge cases.

The oracle walks the event log row by row in plain Python: for a spine row at ``t`` an
aggregate sees the non-null values of events in ``(t - window, t)`` (``(t - window, t]`` for an
inclusive view) and a field is the value of the newest event before ``t``, null once older than
the TTL. Among events at the same instant, ``last`` and ``Field`` take the one later in the log.
"""

from __future__ import annotations

import os
import pickle
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openlearner.errors import Invalid, NotFound
from openlearner.features import Aggregate, Entity, FeatureView, Field, Source
from openlearner.features.definitions import AGGREGATIONS, Feature
from openlearner.features.offline.duckdb import DuckDBOfflineStore

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
STORE = DuckDBOfflineStore(threads=2)
USER = Entity("user", ["user_id"])
ITEM = Entity("item", ["user_id", "item"])


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the oracle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    key: tuple[Any, ...]
    time: datetime
    value: Any
    seq: int  # position in the source: the later of two events at one instant wins


def log_events(rows: Sequence[tuple[tuple[Any, ...], datetime, Any]]) -> list[Event]:
    return [Event(key, t, value, seq) for seq, (key, t, value) in enumerate(rows)]


def newest(events: Sequence[Event]) -> Event:
    return max(events, key=lambda e: (e.time, e.seq))


def _admitted(event_time: datetime, t: datetime, inclusive: bool) -> bool:
    return event_time <= t if inclusive else event_time < t


def expected_aggregate(
    events: Sequence[Event], key: tuple[Any, ...], t: datetime, agg: Aggregate, inclusive: bool
) -> Any:
    """The aggregate for one spine row, from the events of ``key`` before ``t``."""
    window = [
        e
        for e in events
        if e.key == key and _admitted(e.time, t, inclusive) and e.time > t - agg.window_delta
    ]
    values = [e.value for e in window if e.value is not None]
    if agg.function == "count":
        return len(values)
    if agg.function == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if agg.function == "sum":
        return sum(values)
    if agg.function == "mean":
        return sum(values) / len(values)
    if agg.function == "min":
        return min(values)
    if agg.function == "max":
        return max(values)
    assert agg.function == "last"
    return newest([e for e in window if e.value is not None]).value


def expected_field(
    events: Sequence[Event], key: tuple[Any, ...], t: datetime, ttl: timedelta | None, inclusive: bool
) -> Any:
    """The field for one spine row: the newest event's value, even a null one."""
    before = [e for e in events if e.key == key and _admitted(e.time, t, inclusive)]
    if not before:
        return None
    latest = newest(before)
    if ttl is not None and t - latest.time > ttl:
        return None
    return latest.value


def check_against_oracle(
    out: pa.Table,
    spine_rows: Sequence[tuple[tuple[Any, ...], datetime]],
    view: FeatureView,
    events: Sequence[Event],
    key_of_row: Sequence[tuple[Any, ...]],
) -> None:
    for feature in view.features:
        column = out.column(f"{view.name}__{feature.name}").to_pylist()
        for row, ((_, t), key, got) in enumerate(zip(spine_rows, key_of_row, column, strict=True)):
            where = f"{view.name}:{feature.name} row {row} key={key} t={t - T0}"
            if isinstance(feature, Field):
                assert got == expected_field(events, key, t, view.ttl_delta, view.inclusive), where
            elif feature.function == "mean":
                want = expected_aggregate(events, key, t, feature, view.inclusive)
                assert (got is None and want is None) or got == pytest.approx(want), where
            else:
                assert got == expected_aggregate(events, key, t, feature, view.inclusive), where


def all_aggregates(column: str, window: str) -> list[Feature]:
    return [Aggregate(column, function, window) for function in AGGREGATIONS]


# -- property tests -------------------------------------------------------------------------------

# Whole seconds on a small grid, so events tie, land exactly on spine times and exactly on
# window starts (t - window), and entities are shared between events and spine rows.
seconds = st.integers(min_value=0, max_value=40)
values = st.one_of(st.none(), st.integers(min_value=-5, max_value=5))
user_ids = st.integers(min_value=0, max_value=3)
items = st.sampled_from(["a", "b"])

user_events = st.lists(st.tuples(user_ids, seconds, values), max_size=30)
item_events = st.lists(st.tuples(user_ids, items, seconds, values), max_size=20)
spines = st.lists(st.tuples(user_ids, items, seconds), min_size=1, max_size=15)
windows = st.sampled_from(["1s", "5s", "10s", "1m"])
ttls = st.sampled_from([None, "1s", "5s", "1h"])
# How the spine carries its times: naive (read as UTC), UTC, or another zone (converted).
spine_zones = st.sampled_from([None, "UTC", "Asia/Kolkata", "America/Los_Angeles"])


def _spine_times(times: Sequence[datetime], zone: str | None) -> pa.Array:
    if zone is None:
        return pa.array([t.replace(tzinfo=None) for t in times], pa.timestamp("us"))
    return pa.array([t.astimezone(ZoneInfo(zone)) for t in times], pa.timestamp("us", tz=zone))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    user_log=user_events,
    item_log=item_events,
    spine=spines,
    window=windows,
    ttl=ttls,
    item_ttl=ttls,
    inclusive=st.booleans(),
    item_inclusive=st.booleans(),
    zone=spine_zones,
)
def test_training_set_matches_oracle(
    user_log: list[tuple[int, int, int | None]],
    item_log: list[tuple[int, str, int, int | None]],
    spine: list[tuple[int, str, int]],
    window: str,
    ttl: str | None,
    item_ttl: str | None,
    inclusive: bool,
    item_inclusive: bool,
    zone: str | None,
) -> None:
    user_table = pa.table(
        {
            "user_id": pa.array([u for u, _, _ in user_log], pa.int64()),
            "ts": pa.array([at(s) for _, s, _ in user_log], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([v for _, _, v in user_log], pa.int64()),
        }
    )
    item_table = pa.table(
        {
            "user_id": pa.array([u for u, _, _, _ in item_log], pa.int64()),
            "item": pa.array([i for _, i, _, _ in item_log], pa.string()),
            "ts": pa.array([at(s) for _, _, s, _ in item_log], pa.timestamp("us", tz="UTC")),
            "rating": pa.array([v for _, _, _, v in item_log], pa.int64()),
        }
    )
    users = FeatureView(
        "users",
        [USER],
        Source.table(user_table, timestamp="ts", name="user_log"),
        [*all_aggregates("amount", window), Aggregate("amount", "count", "1m", name="n_1m"), Field("amount")],
        ttl=ttl,
        inclusive=inclusive,
    )
    item_view = FeatureView(
        "items",
        [ITEM],
        Source.table(item_table, timestamp="ts", name="item_log"),
        [Field("rating", name="latest"), *all_aggregates("rating", "5s")],
        ttl=item_ttl,
        inclusive=item_inclusive,
    )
    spine_times = [at(s) for _, _, s in spine]
    spine_table = pa.table(
        {
            "user_id": pa.array([u for u, _, _ in spine], pa.int64()),
            "item": pa.array([i for _, i, _ in spine], pa.string()),
            "event_time": _spine_times(spine_times, zone),
            "label": pa.array(list(range(len(spine))), pa.int64()),
        }
    )
    out = STORE.training_set(
        spine_table,
        [(users, [f.name for f in users.features]), (item_view, [f.name for f in item_view.features])],
    )

    assert out.num_rows == spine_table.num_rows
    assert out.select(spine_table.column_names).equals(spine_table)
    rows = [((u, i), t) for (u, i, _), t in zip(spine, spine_times, strict=True)]
    user_events_ = log_events([((u,), at(s), v) for u, s, v in user_log])
    item_events_ = log_events([((u, i), at(s), v) for u, i, s, v in item_log])
    check_against_oracle(out, rows, users, user_events_, [(u,) for u, _, _ in spine])
    check_against_oracle(out, rows, item_view, item_events_, [(u, i) for u, i, _ in spine])


@settings(max_examples=40, deadline=None)
@given(
    log=st.lists(st.tuples(user_ids, seconds, st.one_of(st.none(), st.floats(-100, 100))), max_size=30),
    spine=st.lists(st.tuples(user_ids, seconds), min_size=1, max_size=12),
    window=windows,
)
def test_float_aggregates_match_oracle(
    log: list[tuple[int, int, float | None]], spine: list[tuple[int, int]], window: str
) -> None:
    """Sums and means of doubles (with nulls), through a second dtype."""
    table = pa.table(
        {
            "user_id": pa.array([u for u, _, _ in log], pa.int64()),
            "ts": pa.array([at(s) for _, s, _ in log], pa.timestamp("us", tz="UTC")),
            "x": pa.array([v for _, _, v in log], pa.float64()),
        }
    )
    view = FeatureView(
        "f", [USER], Source.table(table, timestamp="ts"), [Aggregate("x", fn, window) for fn in AGGREGATIONS]
    )
    spine_table = pa.table(
        {
            "user_id": [u for u, _ in spine],
            "event_time": pa.array([at(s) for _, s in spine], pa.timestamp("us")),
        }
    )
    out = STORE.training_set(spine_table, [(view, [f.name for f in view.features])])
    events = log_events([((u,), at(s), v) for u, s, v in log])
    for agg in view.features:
        assert isinstance(agg, Aggregate)
        got_column = out.column(f"f__{agg.name}").to_pylist()
        for (u, s), got in zip(spine, got_column, strict=True):
            want = expected_aggregate(events, (u,), at(s), agg, inclusive=False)
            if want is None:
                assert got is None
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


# -- hand-written cases ---------------------------------------------------------------------------


def _events(rows: list[tuple[int, datetime, int | None]]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


def _spine(keys: list[int], times: list[datetime]) -> pa.Table:
    return pa.table(
        {"user_id": pa.array(keys, pa.int64()), "event_time": pa.array(times, pa.timestamp("us", tz="UTC"))}
    )


def _run(view: FeatureView, spine: pa.Table, timestamp: str = "event_time") -> dict[str, list[Any]]:
    out = STORE.training_set(spine, [(view, [f.name for f in view.features])], timestamp)
    return out.to_pydict()


def _boundary_view(inclusive: bool) -> FeatureView:
    t = at(3600)
    log = _events(
        [
            (1, t - timedelta(hours=1), 1),  # exactly at t - window: never inside
            (1, t - timedelta(hours=1) + US, 2),  # first instant inside
            (1, t - US, 4),  # last instant before t
            (1, t, 8),  # at t: only for inclusive views
            (1, t + US, 16),  # after t: never
        ]
    )
    return FeatureView(
        "b",
        [USER],
        Source.table(log, timestamp="ts"),
        [
            Aggregate("amount", "sum", "1h", name="s"),
            Aggregate("amount", "count", "1h", name="n"),
            Field("amount"),
        ],
        inclusive=inclusive,
    )


def test_window_is_open_at_both_ends() -> None:
    out = _run(_boundary_view(inclusive=False), _spine([1], [at(3600)]))
    assert out["b__s"] == [2 + 4]
    assert out["b__n"] == [2]
    assert out["b__amount"] == [4]


def test_inclusive_view_admits_events_at_the_row_time() -> None:
    out = _run(_boundary_view(inclusive=True), _spine([1], [at(3600)]))
    assert out["b__s"] == [2 + 4 + 8]
    assert out["b__n"] == [3]
    assert out["b__amount"] == [8]


def test_event_at_row_time_is_not_seen_but_next_instant_sees_it() -> None:
    view = FeatureView(
        "v",
        [USER],
        Source.table(_events([(1, at(10), 5)]), timestamp="ts"),
        [Aggregate("amount", "count", "1m", name="n"), Field("amount")],
    )
    out = _run(view, _spine([1, 1, 1], [at(9), at(10), at(10) + US]))
    assert out["v__n"] == [0, 0, 1]
    assert out["v__amount"] == [None, None, 5]


@pytest.mark.parametrize(
    ("age", "expected"),
    [(timedelta(minutes=30), 7), (timedelta(hours=1), 7), (timedelta(hours=1) + US, None)],
)
def test_field_ttl_boundary(age: timedelta, expected: int | None) -> None:
    view = FeatureView(
        "v", [USER], Source.table(_events([(1, at(0), 7)]), timestamp="ts"), [Field("amount")], ttl="1h"
    )
    assert _run(view, _spine([1], [at(0) + age]))["v__amount"] == [expected]


def test_field_without_ttl_never_expires() -> None:
    view = FeatureView("v", [USER], Source.table(_events([(1, at(0), 7)]), timestamp="ts"), [Field("amount")])
    assert _run(view, _spine([1], [at(0) + timedelta(days=3650)]))["v__amount"] == [7]


def test_field_is_the_newest_event_even_when_its_value_is_null() -> None:
    view = FeatureView(
        "v",
        [USER],
        Source.table(_events([(1, at(0), 7), (1, at(5), None)]), timestamp="ts"),
        [Field("amount"), Aggregate("amount", "last", "1h", name="last")],
    )
    out = _run(view, _spine([1], [at(10)]))
    assert out["v__amount"] == [None]  # the newest event says "no value"
    assert out["v__last"] == [7]  # an aggregate skips nulls, like SQL


@pytest.mark.parametrize("kind", ["table", "parquet"])
def test_events_at_one_instant_resolve_by_source_order(kind: str, tmp_path: Path) -> None:
    log = _events(
        [(1, at(0), 1), (1, at(5), 5), (1, at(5), 3), (1, at(5), None), (2, at(5), None), (2, at(5), 8)]
    )
    if kind == "parquet":
        pq.write_table(log, tmp_path / "log.parquet")
        source = Source.parquet(tmp_path / "log.parquet", timestamp="ts")
    else:
        source = Source.table(log, timestamp="ts")
    view = FeatureView("v", [USER], source, [Field("amount"), Aggregate("amount", "last", "1h", name="last")])
    for _ in range(3):  # and the same answer every time
        out = _run(view, _spine([1, 2], [at(6), at(6)]))
        assert out["v__amount"] == [None, 8]  # the last row at 00:05 of user 1 holds a null
        assert out["v__last"] == [3, 8]  # the last non-null value at 00:05


def test_entity_without_events() -> None:
    view = FeatureView(
        "v",
        [USER],
        Source.table(_events([(1, at(0), 7)]), timestamp="ts"),
        [*all_aggregates("amount", "1d"), Field("amount")],
        ttl="1d",
    )
    out = _run(view, _spine([2], [at(60)]))
    assert out["v__amount_count_1d"] == [0]
    assert out["v__amount_count_distinct_1d"] == [0]
    for name in ("sum", "mean", "min", "max", "last"):
        assert out[f"v__amount_{name}_1d"] == [None], name
    assert out["v__amount"] == [None]


def test_null_keys_match_nothing() -> None:
    log = _events([(1, at(0), 1), (1, at(1), 2)])
    log = pa.concat_tables(
        [log, pa.table({"user_id": pa.array([None], pa.int64()), "ts": log["ts"][:1], "amount": [9]})]
    )
    view = FeatureView(
        "v",
        [USER],
        Source.table(log, timestamp="ts"),
        [
            Aggregate("amount", "count", "1h", name="n"),
            Aggregate("amount", "sum", "1h", name="s"),
            Field("amount"),
        ],
    )
    spine = pa.table(
        {
            "user_id": pa.array([None, 1], pa.int64()),
            "event_time": pa.array([at(5), at(5)], pa.timestamp("us", tz="UTC")),
        }
    )
    assert _run(view, spine) == {
        "user_id": [None, 1],
        "event_time": [at(5), at(5)],
        "v__n": [0, 2],
        "v__s": [None, 3],
        "v__amount": [None, 2],
    }


def test_output_types() -> None:
    view = FeatureView(
        "v",
        [USER],
        Source.table(_events([(1, at(0), 7)]), timestamp="ts"),
        [*all_aggregates("amount", "1d"), Field("amount")],
    )
    out = STORE.training_set(_spine([1], [at(1)]), [(view, [f.name for f in view.features])])
    types = {name: out.schema.field(name).type for name in out.column_names}
    assert types["v__amount_count_1d"] == pa.int64()
    assert types["v__amount_sum_1d"] == pa.int64()
    assert types["v__amount_mean_1d"] == pa.float64()
    assert types["v__amount_min_1d"] == pa.int64()
    assert STORE.feature_types(view) == {
        "amount_count_1d": "BIGINT",
        "amount_sum_1d": "BIGINT",
        "amount_mean_1d": "DOUBLE",
        "amount_min_1d": "BIGINT",
        "amount_max_1d": "BIGINT",
        "amount_count_distinct_1d": "BIGINT",
        "amount_last_1d": "BIGINT",
        "amount": "BIGINT",
    }


@pytest.mark.parametrize("unit", ["s", "m", "h", "d"])
def test_every_window_unit(unit: str) -> None:
    span = {
        "s": timedelta(seconds=2),
        "m": timedelta(minutes=2),
        "h": timedelta(hours=2),
        "d": timedelta(days=2),
    }
    t = at(0) + span[unit] * 3
    # One event just inside the 2-unit window, one exactly at its start.
    log = _events([(1, t - span[unit] + US, 1), (1, t - span[unit], 10)])
    view = FeatureView(
        "v", [USER], Source.table(log, timestamp="ts"), [Aggregate("amount", "sum", f"2{unit}")]
    )
    assert _run(view, _spine([1], [t]))[f"v__amount_sum_2{unit}"] == [1]


def test_spine_order_preserved_and_spine_untouched() -> None:
    rng = random.Random(7)
    log = _events([(u, at(s), s) for u in range(5) for s in range(0, 100, 7)])
    view = FeatureView(
        "v",
        [USER],
        Source.table(log, timestamp="ts"),
        [Aggregate("amount", "sum", "30s", name="s"), Field("amount")],
    )
    rows = [(u, s) for u in range(6) for s in range(0, 110, 5)]
    rng.shuffle(rows)
    spine = pa.table(
        {
            "label": pa.array([rng.random() for _ in rows], pa.float64()),
            "event_time": pa.array([at(s) for _, s in rows], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([u for u, _ in rows], pa.int32()),  # a narrower integer type is fine
            "note": pa.array([f"r{i}" for i in range(len(rows))], pa.string()),
        }
    )
    out = STORE.training_set(spine, [(view, ["s", "amount"])])
    assert out.column_names == [*spine.column_names, "v__s", "v__amount"]
    assert out.select(spine.column_names).equals(spine)
    events = log_events([((u,), at(s), s) for u in range(5) for s in range(0, 100, 7)])
    for (u, s), got_sum, got_field in zip(
        rows, out.column("v__s").to_pylist(), out.column("v__amount").to_pylist(), strict=True
    ):
        assert got_sum == expected_aggregate(events, (u,), at(s), Aggregate("amount", "sum", "30s"), False)
        assert got_field == expected_field(events, (u,), at(s), None, False)


def test_duplicate_spine_rows_each_get_a_row() -> None:
    view = FeatureView(
        "v", [USER], Source.table(_events([(1, at(0), 3), (1, at(1), 4)]), timestamp="ts"), [Field("amount")]
    )
    out = _run(view, _spine([1, 1, 1, 2, 1], [at(5), at(5), at(1), at(5), at(5)]))
    assert out["v__amount"] == [4, 4, 3, None, 4]


def test_empty_spine() -> None:
    view = FeatureView("v", [USER], Source.table(_events([(1, at(0), 3)]), timestamp="ts"), [Field("amount")])
    out = STORE.training_set(_spine([], []), [(view, ["amount"])])
    assert out.num_rows == 0
    assert out.column_names == ["user_id", "event_time", "v__amount"]


def test_asked_features_only_in_asked_order() -> None:
    view = FeatureView(
        "v",
        [USER],
        Source.table(_events([(1, at(0), 3)]), timestamp="ts"),
        [
            Field("amount"),
            Aggregate("amount", "count", "1h", name="n"),
            Aggregate("amount", "max", "1h", name="m"),
        ],
    )
    out = STORE.training_set(_spine([1], [at(1)]), [(view, ["m", "amount"])])
    assert out.column_names == ["user_id", "event_time", "v__m", "v__amount"]


# -- time zones -----------------------------------------------------------------------------------


def _tz_view(log: pa.Table) -> FeatureView:
    return FeatureView(
        "v",
        [USER],
        Source.table(log, timestamp="ts"),
        [Aggregate("amount", "count", "1h", name="n"), Field("amount")],
    )


def _tz_log() -> pa.Table:
    return _events([(1, at(0), 1), (1, at(1800), 2), (1, at(3600), 3)])


def test_naive_spine_is_utc() -> None:
    spine = pa.table(
        {"user_id": [1], "event_time": pa.array([at(3600).replace(tzinfo=None)], pa.timestamp("us"))}
    )
    out = _run(_tz_view(_tz_log()), spine)
    assert out["v__n"] == [1]  # (00:00, 01:00) holds only the event at 00:30
    assert out["v__amount"] == [2]


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/New_York"])
def test_spine_in_another_zone_is_converted(zone: str) -> None:
    local = at(3600).astimezone(ZoneInfo(zone))
    spine = pa.table({"user_id": [1], "event_time": pa.array([local], pa.timestamp("us", tz=zone))})
    out = _run(_tz_view(_tz_log()), spine)
    assert out["v__n"] == [1]
    assert out["v__amount"] == [2]
    assert out["event_time"] == [local]  # the spine's column keeps its zone


def test_spine_times_as_strings() -> None:
    utc_text = (at(3600) + US).strftime("%Y-%m-%d %H:%M:%S.%f")  # no offset: UTC
    tokyo_text = (at(3600) + US).astimezone(ZoneInfo("Asia/Tokyo")).isoformat()
    spine = pa.table({"user_id": [1, 1], "event_time": [utc_text, tokyo_text]})
    out = _run(_tz_view(_tz_log()), spine)
    assert out["v__amount"] == [3, 3]


def test_source_in_another_zone_is_converted() -> None:
    zone = "Asia/Kolkata"
    log = _tz_log()
    log = log.set_column(1, "ts", log.column("ts").cast(pa.timestamp("us", tz=zone)))
    naive = log.set_column(1, "ts", log.column("ts").cast(pa.timestamp("us")))  # naive UTC wall times
    spine = _spine([1], [at(3600)])
    assert _run(_tz_view(log), spine) == _run(_tz_view(naive), spine) == _run(_tz_view(_tz_log()), spine)


@pytest.fixture
def machine_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run as if the machine's local zone were New York (DuckDB's default session zone)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset")
@pytest.mark.usefixtures("machine_zone")
def test_results_do_not_depend_on_the_machine_zone(tmp_path: Path) -> None:
    assert os.environ["TZ"] == "America/New_York"
    tokyo = _tz_log()
    tokyo = tokyo.set_column(1, "ts", tokyo.column("ts").cast(pa.timestamp("us", tz="Asia/Tokyo")))
    text = ["2024-03-01 12:00:00", "2024-03-01 12:30:00", "2024-03-01 13:00:00"]  # UTC, no offset
    pacsv.write_csv(pa.table({"user_id": [1, 1, 1], "ts": text, "amount": [1, 2, 3]}), tmp_path / "log.csv")
    csv_view = FeatureView(
        "v", [USER], Source.csv(tmp_path / "log.csv", timestamp="ts"), _tz_view(tokyo).features
    )
    paris = pa.table(
        {"user_id": [1], "event_time": pa.array([at(3600)], pa.timestamp("us", tz="Europe/Paris"))}
    )
    text_spine = pa.table({"user_id": [1], "event_time": ["2024-03-01 13:00:00"]})
    for view in (_tz_view(tokyo), csv_view):
        assert _run(view, paris) == {
            "user_id": [1],
            "event_time": paris.column(1).to_pylist(),
            "v__n": [1],
            "v__amount": [2],
        }
        assert _run(view, text_spine)["v__amount"] == [2]


# -- file sources ---------------------------------------------------------------------------------


def _file_log() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 1, 2, 1, 2], pa.int64()),
            "ts": pa.array([at(0), at(10), at(10), at(20), at(40)], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([1, 2, None, 4, 5], pa.int64()),
        }
    )


FILE_FEATURES: list[Feature] = [*all_aggregates("amount", "15s"), Field("amount")]


def _expected_file_result() -> dict[str, list[Any]]:
    view = FeatureView("v", [USER], Source.table(_file_log(), timestamp="ts"), FILE_FEATURES)
    return _run(view, _file_spine())


def _file_spine() -> pa.Table:
    return _spine([1, 2, 1, 2, 3], [at(10), at(11), at(21), at(41), at(5)])


def test_parquet_source(tmp_path: Path) -> None:
    pq.write_table(_file_log(), tmp_path / "log.parquet")
    view = FeatureView("v", [USER], Source.parquet(tmp_path / "log.parquet", timestamp="ts"), FILE_FEATURES)
    out = _run(view, _file_spine())
    assert out == _expected_file_result()
    assert out["v__amount_sum_15s"] == [1, None, 6, 5, None]


def test_parquet_glob_over_several_files(tmp_path: Path) -> None:
    log = _file_log()
    pq.write_table(log.slice(0, 2), tmp_path / "part-0.parquet")
    pq.write_table(log.slice(2), tmp_path / "part-1.parquet")
    view = FeatureView(
        "v", [USER], Source.parquet(tmp_path / "part-*.parquet", timestamp="ts"), FILE_FEATURES
    )
    assert _run(view, _file_spine()) == _expected_file_result()


def test_csv_source_with_text_timestamps(tmp_path: Path) -> None:
    log = _file_log()
    text = pa.table(
        {
            "user_id": log.column("user_id"),
            "ts": [t.strftime("%Y-%m-%d %H:%M:%S") for t in log.column("ts").to_pylist()],
            "amount": log.column("amount"),
        }
    )
    pacsv.write_csv(text, tmp_path / "log.csv")
    view = FeatureView("v", [USER], Source.csv(tmp_path / "log.csv", timestamp="ts"), FILE_FEATURES)
    assert _run(view, _file_spine()) == _expected_file_result()


def test_csv_source_with_offsets(tmp_path: Path) -> None:
    log = _file_log()
    (tmp_path / "log.csv").write_text(
        "user_id,ts,amount\n"
        + "".join(
            f"{u},{t.astimezone(timezone(timedelta(hours=-5))).isoformat()},{'' if a is None else a}\n"
            for u, t, a in zip(*log.to_pydict().values(), strict=True)
        )
    )
    view = FeatureView("v", [USER], Source.csv(tmp_path / "log.csv", timestamp="ts"), FILE_FEATURES)
    assert _run(view, _file_spine()) == _expected_file_result()


def test_ties_within_a_microsecond_and_in_text_take_the_later_row_of_the_source() -> None:
    # Distinct stored values can still be one instant: nanoseconds within a microsecond, or
    # one instant spelled two ways in text. The later row of the source must win each time.
    users = list(range(1, 41))
    base = int(at(0).timestamp() * 1_000_000) * 1000
    # Every stored value distinct, each user's two rows one microsecond; later rows earlier in ns.
    ns = [base + u * 1000 + 200 for u in users] + [base + u * 1000 + 100 for u in users]
    nanos = pa.table(
        {
            "user_id": pa.array(users + users, pa.int64()),
            "ts": pa.array(ns, pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            "amount": pa.array([1] * len(users) + [2] * len(users), pa.int64()),
        }
    )
    text = pa.table(
        {
            "user_id": pa.array(users + users, pa.int64()),
            "ts": [f"2026-01-01T00:00:{u:02d}Z" for u in users]
            + [f"2026-01-01T00:00:{u:02d}+00:00" for u in users],
            "amount": pa.array([1] * len(users) + [2] * len(users), pa.int64()),
        }
    )
    spine = _spine(users, [datetime(2026, 1, 1, 0, 1, tzinfo=UTC)] * len(users))
    for log in (nanos, text):
        view = FeatureView("v", [USER], Source.table(log, timestamp="ts"), [Field("amount")])
        assert _run(view, spine)["v__amount"] == [2] * len(users)


# -- bad input ------------------------------------------------------------------------------------


def _simple_view() -> FeatureView:
    return FeatureView("v", [USER], Source.table(_file_log(), timestamp="ts"), [Field("amount")])


def test_spine_without_time_column() -> None:
    spine = pa.table({"user_id": [1], "ts": [at(0)]})
    with pytest.raises(Invalid, match="spine has no 'event_time' column"):
        STORE.training_set(spine, [(_simple_view(), ["amount"])])


def test_spine_with_null_time() -> None:
    spine = pa.table({"user_id": [1, 1], "event_time": pa.array([at(0), None], pa.timestamp("us", tz="UTC"))})
    with pytest.raises(Invalid, match="1 null value"):
        STORE.training_set(spine, [(_simple_view(), ["amount"])])


def test_spine_time_of_the_wrong_type() -> None:
    spine = pa.table({"user_id": [1], "event_time": [3.5]})
    with pytest.raises(Invalid, match="not a timestamp"):
        STORE.training_set(spine, [(_simple_view(), ["amount"])])


def test_spine_without_join_key() -> None:
    spine = pa.table({"uid": [1], "event_time": [at(0)]})
    with pytest.raises(Invalid, match="spine has no join key 'user_id'"):
        STORE.training_set(spine, [(_simple_view(), ["amount"])])


@pytest.mark.parametrize(
    ("spine_keys", "event_keys"),
    [
        # A narrower spine type; an event key beyond its range matches nothing.
        (pa.array([1, 2, 3], pa.int32()), pa.array([1, 2, 2**40, 1], pa.int64())),
        (pa.array([1, 2, 3], pa.uint64()), pa.array([1, 2, -5, 1], pa.int16())),
        (pa.array(["a", "b", "c"]), pa.array(["a", "b", "x", "a"])),
        (pa.array([date(2024, 1, d) for d in (1, 2, 3)]), pa.array([date(2024, 1, d) for d in (1, 2, 9, 1)])),
        # Zoned timestamps as keys: one instant written in two zones is one key.
        (
            pa.array([at(0), at(1), at(2)], pa.timestamp("us", tz="UTC")),
            pa.array(
                [at(0).astimezone(ZoneInfo("Asia/Tokyo")), at(1), at(9), at(0)],
                pa.timestamp("us", tz="Asia/Tokyo"),
            ),
        ),
    ],
    ids=["int32-int64", "uint64-int16", "text", "date", "zoned"],
)
def test_join_keys_of_several_types_match_as_sql_compares_them(
    spine_keys: pa.Array, event_keys: pa.Array
) -> None:
    """Latest values for keys of several types, with spine and source typed differently
    where SQL compares them in a common type: the newest earlier event of the same key."""
    entity = Entity("thing", ["k"])
    log = pa.table(
        {
            "k": event_keys,
            "ts": pa.array([at(10), at(11), at(12), at(13)], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([1, 2, 3, 4], pa.int64()),
        }
    )
    view = FeatureView("v", [entity], Source.table(log, timestamp="ts"), [Field("amount")])
    spine = pa.table({"k": spine_keys, "event_time": pa.array([at(20)] * 3, pa.timestamp("us", tz="UTC"))})
    assert _run(view, spine)["v__amount"] == [4, 2, None]


def test_spine_key_of_the_wrong_type() -> None:
    spine = pa.table({"user_id": ["1"], "event_time": [at(0)]})
    with pytest.raises(Invalid, match="join key 'user_id' is VARCHAR in the spine but BIGINT") as info:
        STORE.training_set(spine, [(_simple_view(), ["amount"])])
    assert "cast the spine's keys" in str(info.value)


def test_missing_source_file(tmp_path: Path) -> None:
    view = FeatureView(
        "v", [USER], Source.parquet(tmp_path / "gone.parquet", timestamp="ts"), [Field("amount")]
    )
    with pytest.raises(NotFound, match="no file matches"):
        STORE.training_set(_spine([1], [at(0)]), [(view, ["amount"])])
    with pytest.raises(NotFound, match="no file matches"):
        STORE.schema(view.source)


def test_feature_types_reject_bad_definitions() -> None:
    log = _file_log().append_column("name", pa.array(["a"] * 5))
    source = Source.table(log, timestamp="ts")
    with pytest.raises(
        Invalid, match=r"reads column 'amout', absent from .*its columns are user_id, ts, amount"
    ):
        STORE.feature_types(FeatureView("v", [USER], source, [Field("amout")]))
    with pytest.raises(Invalid, match="mean needs a numeric or boolean column"):
        STORE.feature_types(FeatureView("v", [USER], source, [Aggregate("name", "mean", "1h")]))
    with pytest.raises(Invalid, match="no join key column 'item'"):
        STORE.feature_types(FeatureView("v", [ITEM], source, [Field("amount")]))
    with pytest.raises(Invalid, match="no timestamp column 'time'"):
        STORE.feature_types(FeatureView("v", [USER], Source.table(log, timestamp="time"), [Field("amount")]))
    with pytest.raises(Invalid, match="not a timestamp"):
        STORE.feature_types(
            FeatureView("v", [USER], Source.table(log, timestamp="amount"), [Field("amount")])
        )
    # min, max, last, count and count_distinct take any column
    ok = FeatureView(
        "v",
        [USER],
        source,
        [Aggregate("name", fn, "1h") for fn in ("min", "max", "last", "count", "count_distinct")],
    )
    assert STORE.feature_types(ok)["name_count_1h"] == "BIGINT"
    assert STORE.feature_types(ok)["name_max_1h"] == "VARCHAR"


@pytest.mark.parametrize("kind", ["table", "parquet"])
@pytest.mark.parametrize("inclusive", [False, True])
def test_a_spine_over_a_slice_of_the_log_sees_the_events_at_its_edges(
    kind: str, inclusive: bool, tmp_path: Path
) -> None:
    """Only events a spine row can see are read: none after the spine's last time, none before
    its first time less the TTL or the longest window. Events sit on exactly those edges."""
    rows = [
        (1, at(0), 1),
        (1, at(40), 2),
        (1, at(70), 3),  # exactly the first spine time (100 s) less the TTL (30 s): still fresh
        (2, at(69), 4),  # just before: expired at 100 s, but the newest event user 2 has then
        (2, at(100), 5),
        (2, at(110), 6),
        (2, at(110), 7),  # a tie: the later in the source wins
        (2, at(130), 8),  # exactly the last spine time: seen by an inclusive view only
        (2, at(140), 9),  # after every spine row
        (3, at(120), 10),  # a key the spine never asks about
    ]
    source = Source.table(_events(rows), timestamp="ts")
    if kind == "parquet":
        pq.write_table(_events(rows), tmp_path / "log.parquet")
        source = Source.parquet(tmp_path / "log.parquet", timestamp="ts")
    view = FeatureView(
        "v",
        [USER],
        source,
        [Field("amount", name="latest"), *all_aggregates("amount", "30s"), Aggregate("amount", "sum", "70s")],
        ttl="30s",
        inclusive=inclusive,
    )
    keys, seconds = [1, 2, 1, 2, 2], [100, 100, 130, 111, 130]
    out = STORE.training_set(
        _spine(keys, [at(s) for s in seconds]), [(view, [f.name for f in view.features])]
    )
    spine_rows = [((k,), at(s)) for k, s in zip(keys, seconds, strict=True)]
    check_against_oracle(
        out, spine_rows, view, log_events([((k,), t, v) for k, t, v in rows]), [(k,) for k in keys]
    )
    assert out.column("v__latest").to_pylist() == [
        3,
        5 if inclusive else None,
        None,
        7,
        8 if inclusive else 7,
    ]


def test_training_sets_from_several_threads_at_once(tmp_path: Path) -> None:
    """Calls share one database but each its own connection: names never collide."""
    from concurrent.futures import ThreadPoolExecutor

    pq.write_table(_file_log(), tmp_path / "log.parquet")
    store = DuckDBOfflineStore(threads=2)
    views = [
        FeatureView("p", [USER], Source.parquet(tmp_path / "log.parquet", timestamp="ts"), [Field("amount")]),
        FeatureView(
            "t", [USER], Source.table(_file_log(), timestamp="ts"), [Aggregate("amount", "sum", "1h")]
        ),
    ]
    requests = [(v, [f.name for f in v.features]) for v in views]
    alone = store.training_set(_file_spine(), requests)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.training_set(_file_spine(), requests), range(32)))
    assert all(r.equals(alone) for r in results)
    store.close()  # and opened again on the next call
    assert store.training_set(_file_spine(), requests).equals(alone)
    copy = pickle.loads(pickle.dumps(store))  # as its settings, for another process
    assert (copy.log_dir, copy.threads) == (store.log_dir, 2)
    assert copy.training_set(_file_spine(), requests[:1]).equals(
        alone.select(["user_id", "event_time", "p__amount"])
    )


def test_closing_the_store_lets_calls_under_way_finish() -> None:
    """close() lets go of the database; a training set running meanwhile on another thread
    keeps its own connection and finishes, and the next call opens a new database."""
    import threading

    store = DuckDBOfflineStore(threads=2)
    events = (  # big enough that the call is still running when close() comes
        "SELECT range % 1000 AS user_id, TIMESTAMP '2024-03-01' + to_microseconds(range) AS ts, "
        "range AS amount FROM range(4000000)"
    )
    view = FeatureView("v", [USER], Source.sql(events, timestamp="ts"), [Aggregate("amount", "sum", "1h")])
    t = datetime(2024, 3, 1, 0, 0, 5, tzinfo=UTC)
    spine = _spine([1, 2], [t, t])
    out: list[Any] = []
    worker = threading.Thread(
        target=lambda: out.append(store.training_set(spine, [(view, ["amount_sum_1h"])]))
    )
    worker.start()
    while store._database is None and worker.is_alive():  # until the call has its connection
        time.sleep(0.001)
    assert worker.is_alive()  # still under way
    store.close()
    worker.join(120)
    assert out and out[0].column("v__amount_sum_1h").to_pylist() == [
        sum(range(1, 4_000_000, 1000)),
        sum(range(2, 4_000_000, 1000)),
    ]
    assert store.training_set(spine, [(view, ["amount_sum_1h"])]).equals(out[0])


_FORKS = """
import os, sys, threading
import pyarrow as pa
from datetime import datetime, timedelta, timezone
from openlearner.features import Entity, FeatureView, Field, Source
from openlearner.features.offline.duckdb import DuckDBOfflineStore

t0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
log = pa.table({"user_id": [1, 1, 2], "ts": [t0, t0 + timedelta(seconds=5), t0], "amount": [1, 2, 3]})
view = FeatureView("v", [Entity("user", ["user_id"])], Source.table(log, timestamp="ts"), [Field("amount")])
spine = pa.table({"user_id": [1, 2], "event_time": [t0 + timedelta(seconds=9)] * 2})
store = DuckDBOfflineStore(threads=2)

def values():
    return store.training_set(spine, [(view, ["amount"])]).column("v__amount").to_pylist()

print("parent", values(), flush=True)
for case in ("exit", "use", "close", "locked"):
    if case == "locked":  # a parent thread holds the store's lock at the fork
        store._lock.acquire()
    pid = os.fork()
    if pid == 0:  # the child leaves through Python's normal shutdown, as a worker would
        if case == "use":
            print(case, values(), flush=True)
        elif case in ("close", "locked"):
            store.close()
            print(case, values(), flush=True)
        sys.exit(0)
    if case == "locked":
        store._lock.release()
    _, status = os.waitpid(pid, 0)
    print(case, "status", status, flush=True)
print("parent", values(), flush=True)
"""


def test_forked_children_use_a_database_of_their_own_and_exit_cleanly(tmp_path: Path) -> None:
    """A child forked after the parent used the store must never touch the parent's database
    (its threads and locks did not survive the fork): it opens its own, and it shuts down
    normally, having used the store, closed it or neither."""
    import subprocess
    import sys

    script = tmp_path / "forks.py"
    script.write_text(_FORKS)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[:-1] == [
        "parent [2, 3]",
        "exit status 0",
        "use [2, 3]",
        "use status 0",
        "close [2, 3]",
        "close status 0",
        "locked [2, 3]",
        "locked status 0",
        "parent [2, 3]",
    ]


def test_in_memory_source_from_another_process() -> None:
    view = FeatureView.from_spec(_simple_view().to_spec())  # the spec carries no data
    with pytest.raises(NotFound, match="in-memory table in another process"):
        STORE.training_set(_spine([1], [at(0)]), [(view, ["amount"])])


# -- entities (what materialize reads) -----------------------------------------------------------


def test_entities_newest_event_before_end_and_changed_ranges() -> None:
    view = FeatureView("v", [USER], Source.table(_file_log(), timestamp="ts"), [Field("amount")])
    got = STORE.entities(view, at(40), None).to_pydict()
    assert got == {"user_id": [1, 2], "event_time": [at(20), at(10)]}  # the event at 40 is not before 40
    # Only entities with an event inside a changed range; still their newest event before end.
    got = STORE.entities(view, at(40), [(at(15), at(25))]).to_pydict()
    assert got == {"user_id": [1], "event_time": [at(20)]}
    assert STORE.entities(view, at(40), [(at(10), at(10)), (at(100), at(200))]).to_pydict()["user_id"] == [
        1,
        2,
    ]
    assert STORE.entities(view, at(40), []).num_rows == 0
    inclusive = FeatureView("v", [USER], view.source, [Field("amount")], inclusive=True)
    assert STORE.entities(inclusive, at(40), None).to_pydict()["event_time"] == [at(20), at(40)]


def _written(path: Path, table: pa.Table, age_s: float) -> None:
    pq.write_table(table, path)
    past = time.time() - age_s
    os.utime(path, (past, past))


def test_files_rewritten_or_added_are_read_as_they_are_now(tmp_path: Path) -> None:
    """A training set reads a source's files as they are at the call: a file rewritten in
    place with events that share instants (the later in the file wins), a hidden one or one
    deep under ``**`` (DuckDB's glob lists them), one written just now."""
    view = FeatureView(
        "v",
        [USER],
        Source.parquet(tmp_path / "**" / "*.parquet", timestamp="ts"),
        [Field("amount")],
        ttl="30d",
    )
    spine = _spine([1, 2], [at(10), at(10)])
    (tmp_path / "a" / "b").mkdir(parents=True)
    _written(
        tmp_path / "a" / "b" / "part-0.parquet", _events([(1, at(1), 1), (1, at(2), 2), (2, at(3), 3)]), 100
    )
    assert _run(view, spine)["v__amount"] == [2, 3]
    assert _run(view, spine)["v__amount"] == [2, 3]
    # Rewritten in place: now events share instants; at each, the later in the file wins.
    ties = [(1, at(2), 5), (1, at(2), 6), (2, at(3), 8), (2, at(3), 7)]
    _written(tmp_path / "a" / "b" / "part-0.parquet", _events(ties), 50)
    assert _run(view, spine)["v__amount"] == [6, 7]
    # A hidden file at the top: DuckDB reads it.
    _written(tmp_path / ".late.parquet", _events([(1, at(4), 9), (1, at(4), 10)]), 40)
    assert _run(view, spine)["v__amount"] == [10, 7]
    # A file written just now.
    pq.write_table(_events([(2, at(5), 11)]), tmp_path / "a" / "new.parquet")
    assert _run(view, spine)["v__amount"] == [10, 11]
    assert _run(view, spine)["v__amount"] == [10, 11]
    # An in-memory table with ties.
    table_view = FeatureView(
        "t", [USER], Source.table(_events(ties), timestamp="ts"), [Field("amount")], ttl="30d"
    )
    assert _run(table_view, spine)["t__amount"] == [6, 7]


@pytest.mark.parametrize("kind", ["TIMESTAMP", "DATE"])
def test_events_at_minus_infinity_are_older_than_every_spine_row(kind: str) -> None:
    """A stored ``-infinity`` time (a "valid since forever" row) is the latest value until
    a real event comes; ``infinity`` is after every spine row."""
    source = Source.sql(
        f"SELECT * FROM (VALUES (0, '-infinity'::{kind}, 'sentinel'), (1, '2024-01-01'::{kind}, 'x'), "
        f"(1, 'infinity'::{kind}, 'future')) t(k, ts, v)",
        timestamp="ts",
    )
    view = FeatureView("v", [Entity("e", ["k"])], source, [Field("v")])
    spine = pa.table({"k": [0, 1], "event_time": pa.array([at(0), at(0)], pa.timestamp("us", tz="UTC"))})
    assert _run(view, spine)["v__v"] == ["sentinel", "x"]


def test_float_and_interval_keys_match_as_sql_compares_them() -> None:
    """0.0 and -0.0 are one key; so are 1 month and 30 days, 1 day and 24 hours."""
    floats = pa.table(
        {
            "k": pa.array([-0.0, 2.0], pa.float64()),
            "ts": pa.array([at(1), at(2)], pa.timestamp("us", tz="UTC")),
            "v": [1, 2],
        }
    )
    view = FeatureView("f", [Entity("e", ["k"])], Source.table(floats, timestamp="ts"), [Field("v")])
    spine = pa.table(
        {"k": [0.0, -0.0, 2.0], "event_time": pa.array([at(9)] * 3, pa.timestamp("us", tz="UTC"))}
    )
    assert _run(view, spine)["f__v"] == [1, 1, 2]
    source = Source.sql(
        "SELECT * FROM (VALUES (INTERVAL '1 month', TIMESTAMP '2024-01-01', 1), "
        "(INTERVAL '30 days', TIMESTAMP '2024-01-02', 2), (INTERVAL '1 day', TIMESTAMP '2024-01-03', 3), "
        "(INTERVAL '86400 seconds', TIMESTAMP '2024-01-04', 4)) t(k, ts, v)",
        timestamp="ts",
    )
    view = FeatureView("i", [Entity("e", ["k"])], source, [Field("v")])
    spine = pa.table(
        {
            "k": pa.array([(0, 30, 0), (0, 1, 0)], pa.month_day_nano_interval()),
            "event_time": pa.array([at(0)] * 2, pa.timestamp("us", tz="UTC")),
        }
    )
    assert _run(view, spine)["i__v"] == [2, 4]


def test_an_empty_spine_over_events_with_null_times_gives_no_rows() -> None:
    log = _events([(1, at(1), 1)]).set_column(1, "ts", pa.array([None], pa.timestamp("us", tz="UTC")))
    view = FeatureView("v", [USER], Source.table(log, timestamp="ts"), [Field("amount")])
    spine = _spine([], [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = STORE.training_set(spine, [(view, ["amount"])])
    assert out.num_rows == 0 and out.schema.field("v__amount").type == pa.int64()


def test_a_small_spine_reads_only_its_own_keys_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spine far smaller than the log (here 2 rows against 1,000 events of 100 users, no TTL)
    reads only its keys' events; one as large as a twentieth of the log reads the log once
    for all views of it."""
    from openlearner.features.offline import duckdb as offline

    read: list[int] = []
    real = offline._arrow

    def spy(con: Any, query: str, params: Any = None) -> pa.Table:
        table = real(con, query, params)
        if "__t" in table.column_names and "__k0" in table.column_names:
            read.append(table.num_rows)
        return table

    monkeypatch.setattr(offline, "_arrow", spy)
    log = _events([(i % 100, at(i), i) for i in range(1000)])
    view = FeatureView("v", [USER], Source.table(log, timestamp="ts"), [Field("amount")])
    assert _run(view, _spine([1, 1], [at(500), at(2000)]))["v__amount"] == [401, 901]
    assert read == [10]
    read.clear()
    spine = _spine(list(range(50)), [at(2000)] * 50)
    assert _run(view, spine)["v__amount"] == [900 + i for i in range(50)]
    assert read == [1000]


def test_a_small_spine_over_ties_reads_its_keys_events_again_in_source_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events cut to the spine's keys come out of a join; when two of them share an instant the
    store reads them again numbered in source order, so the later one still wins."""
    from openlearner.features.offline import duckdb as offline

    reads: list[str] = []
    real = offline._arrow

    def spy(con: Any, query: str, params: Any = None) -> pa.Table:
        table = real(con, query, params)
        if "__t" in table.column_names and "__k0" in table.column_names:
            reads.append("numbered" if "row_number()" in query else "joined")
        return table

    monkeypatch.setattr(offline, "_arrow", spy)
    rows = [(i % 100, at(i), i) for i in range(1000)]
    rows += [(1, at(301), 7001), (1, at(301), 7002), (2, at(302.5), 7003)]  # user 1: a tie at 301 s
    view = FeatureView("v", [USER], Source.table(_events(rows), timestamp="ts"), [Field("amount")])
    assert _run(view, _spine([1], [at(350)]))["v__amount"] == [7002]
    assert reads == ["joined", "numbered"]
    reads.clear()
    assert _run(view, _spine([2], [at(350)]))["v__amount"] == [7003]  # no tie among user 2's events
    assert reads == ["joined"]


@pytest.mark.parametrize("column", ["__t", "__k0", "__v0", "__seq"])
@pytest.mark.parametrize("cut", [False, True])
def test_a_field_column_named_like_the_stores_own_columns(
    column: str, cut: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Source columns whose names the store also uses inside its reads stay the user's."""
    from openlearner.features.offline import duckdb as offline

    monkeypatch.setattr(offline, "_CUT_RATIO", 0 if cut else 10**12)
    log = pa.table(
        {
            "user_id": [1, 2, 2, 1],
            "ts": pa.array([at(1), at(2), at(2), at(3)], pa.timestamp("us", tz="UTC")),
            column: ["a", "b", "c", "d"],
        }
    )
    view = FeatureView("v", [USER], Source.table(log, timestamp="ts"), [Field(column, name="value")])
    out = STORE.training_set(_spine([1, 2], [at(10), at(10)]), [(view, ["value"])])
    assert out.column("v__value").to_pylist() == ["d", "c"]
    assert out.schema.field("v__value").type == pa.string()


def test_a_source_with_a_push_log_is_sized_from_its_files_footers(tmp_path: Path) -> None:
    """Whether a spine is small next to its source counts the source's and the push log's rows
    from their Parquet footers, the log's rows included in the answer."""
    store = DuckDBOfflineStore(log_dir=tmp_path / "log", threads=2)
    pq.write_table(_events([(u % 10, at(u), u) for u in range(100)]), tmp_path / "events.parquet")
    view = FeatureView(
        "v", [USER], Source.parquet(tmp_path / "events.parquet", timestamp="ts"), [Field("amount")]
    )
    store.append(view, _events([(3, at(200), 7)]))
    from openlearner.features.offline import duckdb as offline

    con = store._connect()
    try:
        log = store._log_glob(view)
        item = offline._Fields(view, list(view.features), "unused", "unused", {}, log)
        assert offline._row_count(con, item) == 101
    finally:
        con.close()
    assert store.training_set(_spine([3, 4], [at(300), at(300)]), [(view, ["amount"])]).column(
        "v__amount"
    ).to_pylist() == [7, 94]
    store.close()
