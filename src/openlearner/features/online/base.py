"""The online store seam: write a view's latest rows, read them back by entity key."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from openlearner.errors import Invalid

if TYPE_CHECKING:
    from openlearner.config import Settings

__all__ = [
    "EVENT_TIME",
    "OnlineStore",
    "ViewValues",
    "encode_int_keys",
    "encode_key",
    "encode_rows",
    "open_online_store",
]

ViewValues = tuple[list[int | None], list[dict[str, Any] | None]]
"""One view's answer to :meth:`OnlineStore.read_columns`: event times (µs) and value documents."""

EVENT_TIME = "event_time"
"""Column holding, per row, the time of the newest event behind the values (UTC)."""


def encode_key(values: Sequence[Any]) -> str:
    """One entity's key values as the string every online store indexes by."""
    return orjson.dumps(list(values)).decode()


def encode_int_keys(values: Sequence[int]) -> list[str]:
    """:func:`encode_key` of each one-value key in ``values``, all of them exact ints (not
    bools): what orjson writes for them, about 5x faster."""
    return [f"[{v}]" for v in values]


def encode_rows(view: str, join_keys: Sequence[str], rows: pa.Table) -> list[tuple[str, int, bytes]]:
    """A write's rows as (encoded key, event time in µs since the epoch, JSON document of the features).

    Every backend stores these three things per entity. ``Invalid`` names a missing column, a
    null event time or a feature value that JSON cannot hold.
    """
    missing = [c for c in (*join_keys, EVENT_TIME) if c not in rows.column_names]
    if missing:
        raise Invalid(f"rows for view {view!r} lack column(s) {', '.join(missing)}")
    if rows.column(EVENT_TIME).null_count:
        raise Invalid(f"rows for view {view!r} have a null {EVENT_TIME}")
    features = [c for c in rows.column_names if c not in join_keys and c != EVENT_TIME]
    columns = rows.select([*join_keys, *features]).to_pydict()
    keys = zip(*(columns[k] for k in join_keys), strict=True)
    return [
        (encode_key(key), us, _document(view, {f: columns[f][i] for f in features}))
        for i, (key, us) in enumerate(zip(keys, _event_times_us(rows.column(EVENT_TIME)), strict=True))
    ]


def _event_times_us(column: pa.ChunkedArray) -> list[int]:
    if pa.types.is_timestamp(column.type) and column.type.unit == "us":
        # Arrow holds µs since the epoch (UTC, whatever the zone) already; going through
        # datetime objects would cost about 4 s per million rows.
        return column.cast(pa.int64()).to_pylist()
    return [_to_us(value) for value in column.to_pylist()]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_US


def _json_default(value: object) -> object:
    # DECIMAL columns (common in warehouse Parquet) arrive as Decimal, which JSON lacks.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def _document(view: str, values: dict[str, Any]) -> bytes:
    """One entity's feature values as JSON; ``Invalid`` names a feature that cannot be stored."""
    options = orjson.OPT_SERIALIZE_NUMPY
    try:
        return orjson.dumps(values, default=_json_default, option=options)
    except orjson.JSONEncodeError:
        for name, value in values.items():
            try:
                orjson.dumps(value, default=_json_default, option=options)
            except orjson.JSONEncodeError:
                raise Invalid(
                    f"cannot store feature {name!r} of view {view!r} online: a {type(value).__name__} "
                    "value is not JSON-serializable; cast the column to a number, string or timestamp"
                ) from None
        raise


class OnlineStore(ABC):
    """Latest feature values per entity key, per view.

    A backend implements ``write``, ``read_keys``, ``delete`` and ``close``; ``read`` (the
    Arrow form) is built on ``read_keys`` once, here.
    """

    @property
    def keeps_documents(self) -> bool:
        """Whether :meth:`read_columns` may now answer a document it answered before as the very
        same object (while it is unchanged), so a reader may remember what it made of it by
        identity. Asked after a read; may change from one read to the next."""
        return False

    @abstractmethod
    def write(self, view: str, join_keys: Sequence[str], rows: pa.Table) -> int:
        """Upsert ``rows`` (join keys, ``event_time``, feature columns) atomically; return the count."""

    @abstractmethod
    def read_keys(self, view: str, keys: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Encoded key → (event time in µs since the epoch, feature values), for keys present.

        One round trip for the whole batch; the predictor's hot path calls this directly.
        """

    def read_views(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[dict[str, tuple[int, dict[str, Any]]]]:
        """:meth:`read_keys` for several views at once; a store with a network hop makes it one trip."""
        return [self.read_keys(view, keys) for view, keys in requests]

    def read_columns(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[ViewValues]:
        """Per view, each asked key's event time (µs) and values, in the order asked, repeats included.

        ``None`` in both lists for a key that is absent. All views in one call (one round trip and
        one snapshot where the store can); ``FeatureStore.online`` reads through this. The
        documents may be shared with other reads (a store may keep them): do not change them.
        """
        out: list[ViewValues] = []
        for (_, keys), found in zip(requests, self.read_views(requests), strict=True):
            hits = [found.get(k) for k in keys]
            out.append(([h[0] if h else None for h in hits], [h[1] if h else None for h in hits]))
        return out

    @abstractmethod
    def delete(self, view: str) -> None:
        """Remove every row of ``view``."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def read(self, view: str, keys: pa.Table, features: Sequence[str]) -> pa.Table:
        """One row per row of ``keys``: ``event_time`` (UTC) and each feature, null when absent."""
        encoded = [encode_key(k) for k in zip(*keys.to_pydict().values(), strict=True)]
        found = self.read_keys(view, encoded)
        hits = [found.get(k) for k in encoded]
        times = pa.array([h[0] if h else None for h in hits], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        arrays = [times] + [pa.array([h[1].get(f) if h else None for h in hits]) for f in features]
        return pa.Table.from_arrays(arrays, names=[EVENT_TIME, *features])


def open_online_store(settings: Settings, workspace_id: str) -> OnlineStore:
    """The online store named by ``settings.online_store``.

    Redis keys are prefixed with ``settings.redis_namespace``, by default
    ``openlearner:<workspace_id>``, so workspaces can share one server.
    """
    if settings.online_store == "sqlite":
        from openlearner.features.online.sqlite import SQLiteOnlineStore

        return SQLiteOnlineStore(settings.resolved_online_path, cache_entries=settings.online_cache_entries)
    if settings.online_store == "redis":
        from openlearner.features.online.redis import RedisOnlineStore

        return RedisOnlineStore(
            settings.redis_url,
            settings.redis_namespace or f"openlearner:{workspace_id}",
            spin_us=settings.redis_spin_us,
        )
    raise Invalid(f"unknown online store {settings.online_store!r}; use 'sqlite' or 'redis'")
