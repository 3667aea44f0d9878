"""The point-in-time lookup of latest values, in numpy and Arrow: for each spine row, the event
of the same entity that came last before it.

Entity keys (any number of columns, any hashable Arrow type) become dense integer ids, each
event and spine row one int64 ``id * span + time``, and the lookup is one sort of the events
and one binary search per spine row. DuckDB's ASOF join does the same in general form, but
sorts every payload column along with the keys and runs one join after the other; here only
the int64s are sorted, the payload is gathered once at the end, and views run side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["key_ids", "latest_before"]

_LIMIT = 2**62  # composite values stay below this: no int64 overflow in id * span + time
_INT64_MIN = -(2**63)


def _ids(values: pa.ChunkedArray | pa.Array, value_set: pa.Array) -> np.ndarray:
    """Each value's index in ``value_set`` (int64), -1 for null or absent."""
    found = pc.index_in(values, value_set=value_set, skip_nulls=True)
    return np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)


def _column_ids(
    spine: pa.ChunkedArray | pa.Array, events: pa.ChunkedArray | pa.Array
) -> tuple[np.ndarray, np.ndarray, int]:
    """Ids of one key column's values (:func:`key_ids`), and how many distinct spine values.

    Signed integers without nulls over a range not much wider than the spine (the usual
    entity ids) go through a lookup table indexed by value, which costs a third of hashing;
    anything else through Arrow's hash lookup."""
    values = pc.unique(spine).drop_null()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if (
        pa.types.is_signed_integer(spine.type)
        and events.type == spine.type
        and spine.null_count == 0
        and events.null_count == 0
        and len(values)
    ):
        distinct = np.asarray(values.to_numpy(), dtype=np.int64)
        low, high = int(distinct.min()), int(distinct.max())
        if high - low < 16 * len(spine) + 65_536:
            table = np.full(high - low + 1, -1, dtype=np.int64)
            table[distinct - low] = np.arange(distinct.size)
            s = table[np.asarray(spine.to_numpy(), dtype=np.int64) - low]
            at = np.asarray(events.to_numpy(), dtype=np.int64) - low  # wraps only far outside
            inside = (at >= 0) & (at <= high - low)
            return s, np.where(inside, table[np.where(inside, at, 0)], -1), distinct.size
    return _ids(spine, values), _ids(events, values), len(values)


def key_ids(
    spine: Sequence[pa.ChunkedArray | pa.Array], events: Sequence[pa.ChunkedArray | pa.Array]
) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids of the spine's key tuples (``spine``: one array per key column), and the same
    ids for the events' tuples (``events``: the same columns, of the same types).

    A tuple with a null, and an event tuple no spine row has, gets -1: SQL equality never
    matches a null, and no spine row could ask for such an event.
    """
    spine_id: np.ndarray | None = None
    event_id: np.ndarray | None = None
    for spine_col, event_col in zip(spine, events, strict=True):
        s, e, n = _column_ids(spine_col, event_col)
        if spine_id is None or event_id is None:
            spine_id, event_id = s, e
            continue
        # Two columns' ids into one: id * n + next, made dense again over the spine's tuples
        # (so they never grow past the spine's row count, however many columns).
        spine_pair = np.where((spine_id >= 0) & (s >= 0), spine_id * n + s, -1)
        event_pair = np.where((event_id >= 0) & (e >= 0), event_id * n + e, -1)
        tuples = pa.array(np.unique(spine_pair[spine_pair >= 0]))
        spine_id, event_id = _ids(pa.array(spine_pair), tuples), _ids(pa.array(event_pair), tuples)
    assert spine_id is not None and event_id is not None, "a view has at least one join key"
    return spine_id, event_id


def latest_before(
    spine_id: np.ndarray,
    spine_us: np.ndarray,
    event_id: np.ndarray,
    event_us: np.ndarray,
    *,
    inclusive: bool,
    ttl_us: int | None,
    in_order: bool = True,
) -> pa.Array | None:
    """For each spine row, the index of the event with its id that came last before it (at or
    before it when ``inclusive``), no older than ``ttl_us``; null where there is none.

    Ids are :func:`key_ids`' (-1: matches nothing); times are µs since the epoch. Among events
    of one id at one instant, the one that comes later in ``event_us`` wins (a stable sort),
    so the caller passes events in source order; if they may not be (``in_order=False``),
    such a tie returns None instead, and the caller asks again with events in order.
    """
    rows = spine_id.size
    keep = np.flatnonzero(event_id >= 0)
    if keep.size == 0 or rows == 0 or int(spine_id.max()) < 0:
        return pa.nulls(rows, pa.int64())
    ev_us = event_us[keep]
    # A log written as it happened is in time order: then a stable sort by id alone (a radix
    # sort of 16-bit digits, about a third of a general sort) leaves each id's events in
    # time order, ties in source order.
    by_time = ev_us.size < 2 or bool(np.all(ev_us[1:] >= ev_us[:-1]))
    low = min(int(ev_us.min()), int(spine_us.min()))
    span = max(int(ev_us.max()), int(spine_us.max())) - low + 1  # Python ints: no overflow
    events = event_id[keep].astype(np.int64, copy=False)  # id * span + time, made in place
    order = _stable_by_id(events) if by_time else None  # by id alone, before ids become composites
    if (max(int(spine_id.max()), int(events.max())) + 1) * span < _LIMIT:
        events *= span
        ev_us -= low
        events += ev_us
        sp_t = spine_us - low
    else:
        # Too many ids over too long a time for one int64: rank the instants instead, which
        # keeps their order and takes at most as many values as there are rows.
        instants, rank = np.unique(np.concatenate([ev_us, spine_us]), return_inverse=True)
        span = instants.size
        events *= span
        events += rank[: ev_us.size]
        sp_t = rank[ev_us.size :]
    del ev_us
    if order is None:
        order = np.argsort(events)
    ordered = events[order]
    if ordered.size > 1 and bool(np.any(ordered[1:] == ordered[:-1])):
        # Ties at one instant: the later in the source wins.
        if not in_order:
            return None
        if not by_time:
            order = np.argsort(events, kind="stable")
            ordered = events[order]
    asked = spine_id * span + sp_t
    needles = np.argsort(asked)  # ascending needles: numpy's search then reuses its bounds
    found = np.empty(rows, dtype=np.int64)
    found[needles] = np.searchsorted(ordered, asked[needles], side="right" if inclusive else "left") - 1
    ok = (spine_id >= 0) & (found >= 0)
    found = np.where(ok, found, 0)
    ok &= ordered[found] // span == spine_id  # the event before may be another entity's
    source = keep[order[found]]
    if ttl_us is not None:
        # event >= spine - ttl, with spine - ttl held at the smallest int64 (no wrap-around)
        oldest = np.where(spine_us < _INT64_MIN + ttl_us, _INT64_MIN, spine_us - ttl_us)
        ok &= event_us[source] >= oldest
    return pa.array(source, mask=~ok)


def _stable_by_id(ids: np.ndarray) -> np.ndarray:
    """The stable order of non-negative ``ids``: least significant 16 bits first, each pass a
    stable sort of 16-bit keys, which numpy does by radix."""
    order = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while int(ids.max(initial=0)) >> shift:
        digit = ((ids[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order
