"""Run tracking: every training run's parameters, metrics, status and timing, in the metadata DB.

This is the facade ``workspace.flow``; workflows, operators and executors build on it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from openlearner.errors import Invalid, NotFound
from openlearner.storage.metadata import MetadataDB
from openlearner.storage.schema import runs

__all__ = ["Run", "RunTracker"]

STATUSES = ("running", "succeeded", "failed")


@dataclass
class Run:
    """One recorded execution of a workflow."""

    id: str
    workflow: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(value, str | int | float | bool | type(None)):
            raise Invalid(
                f"run parameter {key!r} must be a string, number, bool or None, not {type(value).__name__}"
            )
        out[str(key)] = value
    return out


class RunTracker:
    """Records runs (``workspace.flow``)."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    def start(self, workflow: str, params: Mapping[str, Any] | None = None) -> Run:
        """Record a new running run and return it."""
        if not workflow or not isinstance(workflow, str):
            raise Invalid("a run needs the name of its workflow")
        run = Run(
            uuid.uuid4().hex, workflow, "running", _json_params(params or {}), started_at=datetime.now(UTC)
        )
        with self.db.engine.begin() as con:
            con.execute(
                sa.insert(runs).values(
                    id=run.id,
                    workflow=workflow,
                    status=run.status,
                    params=run.params,
                    metrics={},
                    started_at=run.started_at,
                )
            )
        return run

    def log_metrics(self, run: Run, metrics: Mapping[str, float]) -> None:
        """Add or overwrite metrics of a run (finite numbers only)."""
        for key, value in metrics.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise Invalid(f"metric {key!r} must be a finite number, not {value!r}")
        run.metrics.update({k: float(v) for k, v in metrics.items()})
        with self.db.engine.begin() as con:
            con.execute(sa.update(runs).where(runs.c.id == run.id).values(metrics=dict(run.metrics)))

    def finish(self, run: Run, *, error: str | None = None) -> None:
        """Mark a run succeeded, or failed with ``error``."""
        run.status = "failed" if error else "succeeded"
        run.error = error
        run.ended_at = datetime.now(UTC)
        with self.db.engine.begin() as con:
            con.execute(
                sa.update(runs)
                .where(runs.c.id == run.id)
                .values(status=run.status, error=error, ended_at=run.ended_at)
            )

    @contextmanager
    def track(self, workflow: str, params: Mapping[str, Any] | None = None) -> Iterator[Run]:
        """Context manager: a run that succeeds when the block ends and fails if it raises."""
        run = self.start(workflow, params)
        try:
            yield run
        except BaseException as exc:
            self.finish(run, error=f"{type(exc).__name__}: {exc}")
            raise
        self.finish(run)

    def get(self, run_id: str) -> Run:
        """The run with id ``run_id``."""
        with self.db.engine.connect() as con:
            row = con.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise NotFound(f"no run {run_id!r}; list runs with `learner runs list`")
        return _run(row)

    def runs(self, workflow: str | None = None) -> list[Run]:
        """Runs, newest first, optionally of one workflow."""
        query = sa.select(runs).order_by(runs.c.started_at.desc())
        if workflow:
            query = query.where(runs.c.workflow == workflow)
        with self.db.engine.connect() as con:
            return [_run(r) for r in con.execute(query).mappings()]


def _run(row: Mapping[Any, Any]) -> Run:
    return Run(
        id=row["id"],
        workflow=row["workflow"],
        status=row["status"],
        params=dict(row["params"]),
        metrics=dict(row["metrics"]),
        error=row["error"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )
