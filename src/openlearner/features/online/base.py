"""The online store seam: write a view's latest rows, read them back by entity key."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from openlearner.errors import Invalid

if TYPE_CHECKING:
    from openlearner.config import Settings

__all__ = ["EVENT_TIME", "OnlineStore", "encode_key", "open_online_store"]

EVENT_TIME = "event_time"
"""Column holding, per row, the time of the newest event behind the values (UTC)."""


def encode_key(values: Sequence[Any]) -> str:
    """One entity's key values as the string every online store indexes by."""
    return orjson.dumps(list(values)).decode()


class OnlineStore(ABC):
    """Latest feature values per entity key, per view.

    A backend implements ``write``, ``read_keys``, ``delete`` and ``close``; ``read`` (the
    Arrow form) is built on ``read_keys`` once, here.
    """

    @abstractmethod
    def write(self, view: str, join_keys: Sequence[str], rows: pa.Table) -> int:
        """Upsert ``rows`` (join keys, ``event_time``, feature columns) atomically; return the count."""

    @abstractmethod
    def read_keys(self, view: str, keys: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Encoded key → (event time in µs since the epoch, feature values), for keys present.

        One round trip for the whole batch; the predictor's hot path calls this directly.
        """

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


def open_online_store(settings: Settings) -> OnlineStore:
    """The online store named by ``settings.online_store``."""
    if settings.online_store == "sqlite":
        from openlearner.features.online.sqlite import SQLiteOnlineStore

        return SQLiteOnlineStore(settings.resolved_online_path)
    raise Invalid(f"online store {settings.online_store!r} is not available yet; use online_store='sqlite'")
