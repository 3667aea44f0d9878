"""The latest-value lookup of training sets (``offline.asof``) against a row-by-row oracle.

Training sets exercise it through DuckDB in ``test_offline_duckdb.py``; here it is driven
directly, with times far enough apart that one int64 cannot hold an id and a time (the
ranked path), ties at one instant, null and absent keys, and keys of several columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openlearner.features.offline.asof import _stable_by_id, key_ids, latest_before

NEAR = st.integers(0, 40)  # times a few µs apart: ties and neighbours
FAR = st.sampled_from([-(2**63) + 1, -(2**61), -(2**40), -7, 0, 3, 2**40, 2**61, 2**63 - 1])  # past id * span


def oracle(
    spine: list[tuple[int, int]], events: list[tuple[int, int]], inclusive: bool, ttl: int | None
) -> list[int | None]:
    """Per spine (id, time): the index of the newest event of that id before it (the later in
    the list among ties), None if there is none or it is older than ``ttl``."""
    out: list[int | None] = []
    for sid, st_ in spine:
        best = None
        for i, (eid, et) in enumerate(events):
            if sid < 0 or eid != sid or (et > st_ if inclusive else et >= st_):
                continue
            if best is None or et >= events[best][1]:
                best = i
        if best is not None and ttl is not None and st_ - events[best][1] > ttl:
            best = None
        out.append(best)
    return out


@settings(max_examples=300, deadline=None)
@given(
    times=st.sampled_from(["near", "far"]),
    data=st.data(),
    inclusive=st.booleans(),
    ttl=st.one_of(st.none(), st.integers(0, 30), st.sampled_from([2**61, 2**63 - 1])),
)
def test_latest_before_matches_the_oracle(
    times: str, data: st.DataObject, inclusive: bool, ttl: int | None
) -> None:
    """Events in any order or in time order (a log as written: the radix path), and in an
    order that may not be the source's (``in_order=False``: a tie must then say so)."""
    when = NEAR if times == "near" else st.one_of(FAR, NEAR)
    ids = st.integers(-1, 3)
    events = data.draw(st.lists(st.tuples(ids, when), max_size=25))
    if data.draw(st.booleans()):
        events.sort(key=lambda e: e[1])  # stable: ties keep their order
    spine = data.draw(st.lists(st.tuples(ids, when), min_size=1, max_size=12))
    arrays = (
        np.array([s[0] for s in spine], dtype=np.int64),
        np.array([s[1] for s in spine], dtype=np.int64),
        np.array([e[0] for e in events], dtype=np.int64),
        np.array([e[1] for e in events], dtype=np.int64),
    )
    expected = oracle(spine, events, inclusive, ttl)
    found = latest_before(*arrays, inclusive=inclusive, ttl_us=ttl)
    assert found is not None and found.to_pylist() == expected
    unordered = latest_before(*arrays, inclusive=inclusive, ttl_us=ttl, in_order=False)
    kept = [e for e in events if e[0] >= 0]  # ids are key_ids' ones: -1 is no spine key
    tie = any(i >= 0 for i, _ in spine) and len(set(kept)) < len(kept)
    assert (unordered is None) == tie
    assert unordered is None or unordered.to_pylist() == expected


@pytest.mark.parametrize("largest", [5, 2**16 - 1, 2**16, 2**20, 2**33])
def test_the_radix_order_of_ids_is_the_stable_order(largest: int) -> None:
    ids = np.random.default_rng(largest).integers(0, largest + 1, 5_000)
    ids[0] = largest
    assert np.array_equal(_stable_by_id(ids), np.argsort(ids, kind="stable"))


@pytest.mark.parametrize("spread", [10, 10**9])  # a lookup table, then hashing
def test_integer_key_ids_map_equal_values_to_one_id(spread: int) -> None:
    rng = np.random.default_rng(spread)
    spine = rng.integers(-spread, spread, 300)
    events = np.concatenate([rng.integers(-spread, spread, 2_000), [2**63 - 1, -(2**63), 2**62]])
    spine_id, event_id = key_ids([pa.array(spine)], [pa.array(events)])
    of_value = dict(zip(spine.tolist(), spine_id.tolist(), strict=True))
    assert len(set(of_value.values())) == len(of_value)  # one id per value, none shared
    assert event_id.tolist() == [of_value.get(v, -1) for v in events.tolist()]


def test_times_too_far_apart_for_one_int64_are_ranked() -> None:
    """Two ids over 2**61 µs: id * span overflows an int64, so instants are ranked; the
    answers are still each id's own newest event."""
    events_us = np.array([-(2**61), 2**61, -(2**61) + 5, 2**61 - 1], dtype=np.int64)
    events_id = np.array([0, 0, 1, 1], dtype=np.int64)
    spine_id = np.array([0, 1, 0, 1, 1], dtype=np.int64)
    spine_us = np.array([2**61, 2**61, 2**61 + 1, 0, -(2**61)], dtype=np.int64)
    found = latest_before(spine_id, spine_us, events_id, events_us, inclusive=False, ttl_us=None)
    assert found.to_pylist() == [0, 3, 1, 2, None]


def test_key_ids_of_several_columns_nulls_and_absent_tuples() -> None:
    spine = [pa.array([1, 1, 2, None, 2]), pa.array(["a", "b", "a", "a", "a"])]
    events = [pa.chunked_array([[2, 1], [1, 3, None, 1]]), pa.array(["a", "b", "c", "a", "a", "a"])]
    spine_id, event_id = key_ids(spine, events)
    assert spine_id[3] == -1  # a null never matches
    assert spine_id[2] == spine_id[4] and len({*spine_id[:3]}) == 3
    expected = [spine_id[2], spine_id[1], -1, -1, -1, spine_id[0]]  # (1, c) and (3, a): no spine row
    assert event_id.tolist() == expected


@pytest.mark.parametrize("rows", [0, 1])
def test_no_events_or_an_empty_spine_finds_nothing(rows: int) -> None:
    empty = np.array([], dtype=np.int64)
    some = np.zeros(rows, dtype=np.int64)
    assert latest_before(some, some, empty, empty, inclusive=True, ttl_us=None).to_pylist() == [None] * rows
