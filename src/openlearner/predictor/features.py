"""The feature join on the hot path: entity keys in, the model's float32 input matrix out.

Built once per loaded model version (views, keys and TTLs resolved from the catalog), so a
request does no catalog lookups: one online read per view for the whole batch, values
placed straight into a numpy matrix. Missing or expired values become what the training
set holds for an entity with no events in the window: 0 for ``count`` and
``count_distinct`` aggregates, NaN (null, which the trees route as missing) for every
other feature. Misses are counted per feature.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Corrupt, Invalid
from openlearner.features.definitions import Aggregate, Feature, FeatureView, column_name
from openlearner.features.online.base import OnlineStore, ViewValues, encode_int_keys, encode_key
from openlearner.features.online.reader import tuple_getter
from openlearner.registry.signature import Signature

__all__ = ["FeatureJoin", "JoinResult"]

_ZERO_WHEN_EMPTY = ("count", "count_distinct")  # SQL counts over no rows are 0, not null
_REMEMBERED = 10_000
"""Documents per view whose row of values a join remembers (see :meth:`FeatureJoin.join`)."""


@dataclass(frozen=True)
class _ViewPlan:
    view: str
    join_keys: tuple[str, ...]
    ttl_us: int | None
    features: tuple[tuple[str, int, float, str], ...]
    """(feature, column in the matrix, default, ``view:feature``) for each feature read."""


@dataclass(frozen=True, slots=True)
class _Kept:
    """What a document the online store keeps became, for a join that remembers it by identity."""

    document: Any
    """The document itself (held, so that its id stays its own)."""
    row: npt.NDArray[np.float64]
    """Its values in the join's order, nulls NaN."""
    row32: npt.NDArray[np.float32]
    nans: npt.NDArray[np.int64] | None
    """1 where it holds a NaN, over every value the join reads (None: it holds none)."""


@dataclass
class JoinResult:
    """The input matrix of a batch, and what was missing per row."""

    matrix: npt.NDArray[np.float32]
    missing: dict[int, str]
    """Row → which view found no (fresh) values for it, e.g. ``user_stats for user_id=42``."""
    miss_counts: npt.NDArray[np.int64]
    """Per value read (in the join's order), the rows of this batch that got its default."""
    miss_keys: list[str] = field(repr=False)

    @property
    def misses(self) -> Counter[str]:
        """``view:feature`` → rows of this batch that got the default instead of a stored value."""
        return _counted(self.miss_keys, self.miss_counts)


class FeatureJoin:
    """Assembles the input matrix of one model version from keys, online values and inputs."""

    def __init__(self, signature: Signature, online: OnlineStore, views: Mapping[str, FeatureView]) -> None:
        if signature.serving is None:
            raise Invalid("this model takes raw tensors, not entity keys")
        self.signature = signature
        self.online = online
        index = {c: i for i, c in enumerate(signature.columns)}
        grouped: dict[str, list[tuple[str, int, float, str]]] = {}
        for ref in signature.serving.features:
            view, feature = ref.split(":")
            column = index[column_name(view, feature)]
            default = _default(views[view].feature(feature))
            grouped.setdefault(view, []).append((feature, column, default, f"{view}:{feature}"))
        self.plans = [
            _ViewPlan(view, tuple(views[view].join_keys), _us(views[view].ttl_delta), tuple(features))
            for view, features in grouped.items()
        ]
        self.request_columns = [(spec.name, index[spec.name]) for spec in signature.serving.request_inputs]
        # Per view, once: feature names, defaults and miss keys; and the matrix column of every
        # value read, in the order they are read, so a whole batch is placed in one numpy step.
        self._layout = [
            ([f[0] for f in p.features], [f[2] for f in p.features], [f[3] for f in p.features])
            for p in self.plans
        ]
        self._read_columns = np.array([f[1] for p in self.plans for f in p.features], dtype=np.intp)
        # Per view, a getter of its stored values in one C call; per value read, whose miss it
        # is, its view, and whether its default is NaN (so misses are counted from the NaNs).
        self._getters = [tuple_getter(names) for names, _, _ in self._layout]
        self._miss_keys = [f[3] for p in self.plans for f in p.features]
        self._view_of = np.array([v for v, p in enumerate(self.plans) for _ in p.features], dtype=np.intp)
        self._default_not_nan = np.array(
            [not np.isnan(f[2]) for p in self.plans for f in p.features], dtype=np.int64
        )
        self._miss_counts = np.zeros(len(self._miss_keys), dtype=np.int64)
        self._defaults = [np.array(defaults, dtype=np.float64) for _, defaults, _ in self._layout]
        # Per view, what a document the store keeps became (see _Kept).
        self._remembered: list[dict[int, _Kept]] = [{} for _ in self.plans]
        # A one-row batch starts from a row of NaN (columns neither read nor sent stay so);
        # each view's kept row then goes to its columns, each request input to its own.
        read_count = len(self._read_columns)
        bounds = np.cumsum([0, *(len(p.features) for p in self.plans)])
        self._spans = [(int(bounds[v]), int(bounds[v + 1])) for v in range(len(self.plans))]
        self._view_columns = [self._read_columns[start:end] for start, end in self._spans]
        self._blank = np.full((1, len(signature.columns)), np.nan, dtype=np.float32)
        self._no_misses = np.zeros(read_count, dtype=np.int64)
        self._no_misses.flags.writeable = False

    @property
    def misses(self) -> Counter[str]:
        """``view:feature`` → rows served its default since this join was built."""
        return _counted(self._miss_keys, self._miss_counts)

    def assemble(self, tensors: dict[str, npt.NDArray[Any]], rows: int) -> npt.NDArray[np.float32]:
        """The model input for ``rows`` rows; ``tensors`` holds keys and request inputs (1-D)."""
        return self.join(tensors, rows).matrix

    def join(self, tensors: dict[str, npt.NDArray[Any]], rows: int) -> JoinResult:
        """:meth:`assemble`, also saying which rows and features fell back to defaults."""
        # All views of the batch in one call: one round trip on a networked store, one
        # SELECT (one snapshot) on SQLite; answers come in the order of the keys asked.
        reads = self.online.read_columns([(p.view, self._keys(p, tensors)) for p in self.plans])
        now_us = time.time_ns() // 1000
        # Per view, each row's values (a null stored value, and a default NaN, become NaN), then
        # one conversion and one placement for the batch. A store that answers an unchanged
        # document as the same object lets each document's row be made once and remembered.
        remembered = self._remembered if self.online.keeps_documents else None
        if rows == 1 and remembered is not None:
            one = self._one_row(tensors, reads, now_us, remembered)
            if one is not None:
                return one
        missing: dict[int, str] = {}
        blocks = []
        defaulted = [0] * len(self.plans)  # per view, rows that got its defaults
        for view, (plan, (names, _, _), (times, docs)) in enumerate(
            zip(self.plans, self._layout, reads, strict=True)
        ):
            made = None if remembered is None else remembered[view]
            block: list[Any] = []
            for row in range(rows):
                stamp = times[row]
                stored = _fresh(stamp, docs[row], plan.ttl_us, now_us)
                if stored is None:
                    block.append(self._defaults[view])
                    defaulted[view] += 1
                    if row not in missing:
                        keys = ", ".join(
                            f"{k}={tensors[k][row : row + 1].tolist()[0]!r}" for k in plan.join_keys
                        )
                        state = "no values" if stamp is None else "values older than its ttl"
                        missing[row] = f"{plan.view} has {state} for {keys}"
                    continue
                block.append(
                    self._values(view, stored) if made is None else self._row(view, stored, made).row
                )
            blocks.append(
                _numbers(plan.view, names, block, (rows, len(names))) if rows else np.empty((0, len(names)))
            )
        read = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
        matrix = np.full((rows, len(self.signature.columns)), np.nan, dtype=np.float32)
        matrix[:, self._read_columns] = read
        # A miss is a NaN read from the store (JSON has no NaN: it was null), or any value of
        # a view whose defaults the row got (whatever the default, NaN or 0). Counted here as
        # one array; names are put to the counts only when someone asks (a metrics scrape).
        counts = np.isnan(read).sum(axis=0)
        if missing:
            counts += np.array(defaulted)[self._view_of] * self._default_not_nan
        self._miss_counts += counts
        for name, column in self.request_columns:
            matrix[:, column] = tensors[name]
        return JoinResult(matrix, missing, counts, self._miss_keys)

    def _values(self, view: int, stored: dict[str, Any]) -> Any:
        """A stored document's values of view ``view``, in the join's order."""
        try:
            return self._getters[view](stored)
        except KeyError:  # a feature added since these values were written: null
            return [stored.get(name) for name in self._layout[view][0]]
        except TypeError:  # not a document of values
            raise Corrupt(
                f"the online store holds a value of view {self.plans[view].view!r} that is not a "
                "document of feature values; run materialize again"
            ) from None

    def _row(self, view: int, stored: dict[str, Any], made: dict[int, _Kept]) -> _Kept:
        """What a kept document of view ``view`` becomes, made once: its row of values (float64,
        nulls NaN), the same in float32, and where it holds NaNs (over every value read)."""
        known = made.get(id(stored))
        if known is not None and known.document is stored:
            return known
        names = self._layout[view][0]
        row = _numbers(self.plans[view].view, names, self._values(view, stored), (len(names),))
        nans = None
        if np.isnan(row).any():
            start, end = self._spans[view]
            nans = np.zeros(len(self._read_columns), dtype=np.int64)
            nans[start:end] = np.isnan(row)
            nans.flags.writeable = False  # shared by every batch that reads it
        if len(made) >= _REMEMBERED:
            made.clear()
        kept = _Kept(stored, row, row.astype(np.float32), nans)  # holding it keeps its id its own
        made[id(stored)] = kept
        return kept

    def _one_row(
        self,
        tensors: dict[str, npt.NDArray[Any]],
        reads: list[ViewValues],
        now_us: int,
        remembered: list[dict[int, _Kept]],
    ) -> JoinResult | None:
        """A one-row batch whose every view has fresh values, placed straight into its row;
        None when a view has none (the general road names and counts what is missing)."""
        matrix = self._blank.copy()
        row = matrix[0]
        counts = None
        for view, (plan, (times, docs)) in enumerate(zip(self.plans, reads, strict=True)):
            stored = _fresh(times[0], docs[0], plan.ttl_us, now_us)
            if stored is None:
                return None
            kept = self._row(view, stored, remembered[view])
            row[self._view_columns[view]] = kept.row32
            if kept.nans is not None:
                counts = kept.nans if counts is None else counts + kept.nans
        # Each request input cast as the general road casts it: straight to float32.
        for name, column in self.request_columns:
            row[column] = tensors[name][0]
        if counts is None:
            counts = self._no_misses
        else:
            self._miss_counts += counts
        return JoinResult(matrix, {}, counts, self._miss_keys)

    @staticmethod
    def _keys(plan: _ViewPlan, tensors: dict[str, npt.NDArray[Any]]) -> list[str]:
        """The encoded key of every row, for one view."""
        if len(plan.join_keys) == 1:
            column = tensors[plan.join_keys[0]]
            if column.dtype.kind in "iu":
                return encode_int_keys(column.tolist())
        return [
            encode_key(values) for values in zip(*(tensors[k].tolist() for k in plan.join_keys), strict=True)
        ]


def _fresh(
    stamp: int | None, stored: dict[str, Any] | None, ttl_us: int | None, now_us: int
) -> dict[str, Any] | None:
    """An entity's stored values of a view, if there are any and they are within its TTL."""
    if stamp is None or stored is None or (ttl_us is not None and now_us - stamp > ttl_us):
        return None
    return stored


def _numbers(view: str, names: list[str], values: Any, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """``values`` of features ``names`` (one row's, or a block of rows) as float64 of ``shape``,
    nulls as NaN."""
    try:
        array = np.array(values, dtype=np.float64)
    except (ValueError, TypeError):
        array = None
    if array is None or array.shape != shape:
        raise Corrupt(
            f"the online store holds a value of view {view!r} that is not one number per feature "
            f"(of {', '.join(names)}); make those features numeric in the view's source, then "
            "materialize again"
        )
    return array


def _counted(keys: list[str], counts: npt.NDArray[np.int64]) -> Counter[str]:
    return Counter({keys[i]: int(counts[i]) for i in np.flatnonzero(counts)})


def _default(feature: Feature) -> float:
    """The training set's value of ``feature`` for an entity without events: counts are 0."""
    if isinstance(feature, Aggregate) and feature.function in _ZERO_WHEN_EMPTY:
        return 0.0
    return float("nan")


def _us(delta: timedelta | None) -> int | None:
    return None if delta is None else delta // timedelta(microseconds=1)
