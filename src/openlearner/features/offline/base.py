"""The offline store seam: describe a source, build a point-in-time training set."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import pyarrow as pa

from openlearner.features.definitions import FeatureView, Source

__all__ = ["FeatureRequest", "OfflineStore"]

FeatureRequest = tuple[FeatureView, Sequence[str]]
"""A view and the names of the features wanted from it."""


class OfflineStore(Protocol):
    """Computes feature values as of each spine row's time, from the views' sources."""

    def schema(self, source: Source) -> dict[str, str]:
        """Column name → engine type name of ``source``; raises ``NotFound``/``Invalid``."""
        ...

    def feature_types(self, view: FeatureView) -> dict[str, str]:
        """Validate ``view`` against its source; each feature's output type. Raises ``Invalid``."""
        ...

    def entities(
        self, view: FeatureView, end: datetime, changed: Sequence[tuple[datetime, datetime]] | None = None
    ) -> pa.Table:
        """Join keys + ``event_time`` (newest) of entities with events before ``end`` (in ``changed``)."""
        ...

    def append(self, view: FeatureView, rows: pa.Table) -> int:
        """Append pushed rows to the view's offline log (seen by later training sets)."""
        ...

    def pushed_since(self, view: FeatureView, since: datetime) -> datetime | None:
        """The earliest event time among rows pushed to ``view`` after ``since``, if any."""
        ...

    def training_set(
        self, spine: pa.Table, requests: Sequence[FeatureRequest], timestamp: str = "event_time"
    ) -> pa.Table:
        """The spine with one column per requested feature (``<view>__<feature>``), row for row."""
        ...

    def close(self) -> None:
        """Release what the store holds open (it opens again when used)."""
        ...
