"""Sweeps and comparisons: variants of a workflow's parameters, ranked by a metric."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openlearner.errors import Invalid
from openlearner.flow.runs import Run

__all__ = ["RunComparison", "SweepEntry", "SweepResult", "compare_runs", "grid_variants", "rank_runs"]

MAX_VARIANTS = 1000


def grid_variants(
    grid: Mapping[str, Sequence[Any]], *, samples: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Every combination of ``grid`` (in order), or ``samples`` of them drawn at random with ``seed``."""
    if not isinstance(grid, Mapping) or not grid:
        raise Invalid("a sweep needs a grid: {parameter: [values, ...]}")
    for name, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise Invalid(f"grid values of {name!r} must be a non-empty list, not {values!r}")
    size = math.prod(len(v) for v in grid.values())
    if samples is None and size > MAX_VARIANTS:
        raise Invalid(f"the grid has {size:,} points; pass samples=N for a random search over it")
    names = list(grid)
    if samples is None:
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]
    if not isinstance(samples, int) or samples < 1:
        raise Invalid(f"samples must be a positive integer, not {samples!r}")
    rng = random.Random(seed)
    picked = rng.sample(range(size), min(samples, size))
    variants = []
    for index in picked:
        combo: dict[str, Any] = {}
        for name in reversed(names):
            values = grid[name]
            index, position = divmod(index, len(values))
            combo[name] = values[position]
        variants.append({n: combo[n] for n in names})
    return variants


def metric_of(run: Run, metric: str) -> float | None:
    """A run's value of ``metric``: a logged metric, else a number in its ``metrics`` output."""
    if metric in run.metrics:
        return float(run.metrics[metric])
    outputs = run.outputs if isinstance(run.outputs, dict) else {}
    for holder in (outputs.get("metrics"), outputs):
        if isinstance(holder, dict) and isinstance(holder.get(metric), int | float):
            return float(holder[metric])
    return None


@dataclass(frozen=True)
class SweepEntry:
    """One variant of a sweep: its parameters, run and metric value (None when it failed)."""

    params: dict[str, Any]
    run: Run
    value: float | None


@dataclass(frozen=True)
class SweepResult:
    """The variants of a sweep, best first; failed variants last."""

    id: str
    metric: str
    mode: str
    entries: list[SweepEntry]

    @property
    def best(self) -> SweepEntry:
        """The best variant that succeeded."""
        if not self.entries or self.entries[0].value is None:
            raise Invalid(f"no variant of the sweep produced metric {self.metric!r}")
        return self.entries[0]

    def render(self) -> str:
        """A ranked table as text."""
        lines = [f"sweep {self.id}: {self.metric} ({self.mode})"]
        for rank, e in enumerate(self.entries, 1):
            value = f"{e.value:.6g}" if e.value is not None else e.run.status
            params = " ".join(f"{k}={v}" for k, v in e.params.items())
            lines.append(f"{rank:>3}. {value:>12}  {params}  run {e.run.id}")
        return "\n".join(lines)


def rank_runs(
    runs: Sequence[Run], variants: Sequence[dict[str, Any]], metric: str, mode: str, sweep_id: str
) -> SweepResult:
    """Order the runs of a sweep by ``metric`` (``min`` or ``max``)."""
    entries = [
        SweepEntry(dict(v), r, metric_of(r, metric) if r.status == "succeeded" else None)
        for r, v in zip(runs, variants, strict=True)
    ]
    sign = 1.0 if mode == "min" else -1.0
    entries.sort(key=lambda e: (e.value is None, sign * e.value if e.value is not None else 0.0))
    return SweepResult(sweep_id, metric, mode, entries)


@dataclass(frozen=True)
class RunComparison:
    """Runs side by side: each parameter's and metric's value per run."""

    runs: list[Run]
    params: dict[str, list[Any]]
    metrics: dict[str, list[float | None]]

    @property
    def differing(self) -> list[str]:
        """Parameters whose values differ between the runs."""
        return [k for k, values in self.params.items() if len({repr(v) for v in values}) > 1]

    def render(self) -> str:
        """A text table: one column per run, parameters (differing ones marked *) then metrics."""
        head = ["", *[r.id[:12] for r in self.runs]]
        rows = [
            head,
            ["workflow", *[r.workflow for r in self.runs]],
            ["status", *[r.status for r in self.runs]],
        ]
        for name, values in self.params.items():
            mark = "*" if name in self.differing else ""
            rows.append([f"{mark}{name}", *["-" if v is None else str(v) for v in values]])
        for name, numbers in self.metrics.items():
            rows.append([name, *["-" if v is None else f"{v:.6g}" for v in numbers]])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        )


def compare_runs(runs: Sequence[Run]) -> RunComparison:
    """Line up the parameters and metrics of ``runs``."""
    params = sorted({k for r in runs for k in r.params})
    metrics = sorted({k for r in runs for k in r.metrics})
    return RunComparison(
        list(runs),
        {k: [r.params.get(k) for r in runs] for k in params},
        {k: [r.metrics.get(k) for r in runs] for k in metrics},
    )
