"""Run tracking in the metadata DB: runs, operator executions, stepped metrics, artifacts and lineage.

:class:`RunTracker` records runs (also by hand, with ``track``); :class:`RunRecorder`
buffers what one running workflow reports and writes it in batches, each write also
refreshing the run's heartbeat so a dead driver can be told from a slow one.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from openlearner.errors import Invalid, NotFound
from openlearner.storage.metadata import MetadataDB, execute_many
from openlearner.storage.schema import operator_runs, run_artifacts, run_metrics, runs

__all__ = ["STATUSES", "ArtifactLineage", "OperatorRun", "Run", "RunRecorder", "RunTracker"]

STATUSES = ("running", "succeeded", "failed", "abandoned")


@dataclass
class Run:
    """One recorded execution of a workflow; ``outputs`` holds what the workflow returned."""

    id: str
    workflow: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    executor: str | None = None
    target: str | None = None
    outputs: dict[str, Any] | Any = field(default_factory=dict)
    heartbeat_at: datetime | None = None


@dataclass
class OperatorRun:
    """One node of a run: its status, attempts, timing, resources, cache use and error."""

    run_id: str
    node: str
    operator: str
    status: str
    attempts: int
    cache_hit: bool
    cache_key: str | None
    resources: dict[str, Any]
    inputs: list[str]
    outputs: list[dict[str, Any]] | None
    error: str | None
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class ArtifactLineage:
    """Where a stored value came from: the run, node and operator, and the digests it was made from."""

    digest: str
    kind: str
    run_id: str
    node: str
    operator: str | None
    inputs: list[str]
    created_at: datetime


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(value, str | int | float | bool | type(None) | list | dict):
            raise Invalid(
                f"run parameter {key!r} must be a string, number, bool, list, dict or None, "
                f"not {type(value).__name__}"
            )
        out[str(key)] = value
    return out


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    for key, value in metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise Invalid(f"metric {key!r} must be a finite number, not {value!r}")
    return {str(k): float(v) for k, v in metrics.items()}


def driver_identity() -> dict[str, Any]:
    """Which process drives a run (host and pid), so a dead driver is recognised at once."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return True


class RunTracker:
    """Records runs and answers questions about them."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    def start(
        self,
        workflow: str,
        params: Mapping[str, Any] | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        target: str | None = None,
        executor: str | None = None,
        git_commit: str | None = None,
        heartbeat: bool = False,
    ) -> Run:
        """Record a new running run and return it (``heartbeat``: its driver will keep a heartbeat)."""
        if not workflow or not isinstance(workflow, str):
            raise Invalid("a run needs the name of its workflow")
        now = datetime.now(UTC)
        run = Run(
            uuid.uuid4().hex,
            workflow,
            "running",
            _json_params(params or {}),
            started_at=now,
            tags={str(k): str(v) for k, v in (tags or {}).items()},
            git_commit=git_commit,
            executor=executor,
            target=target,
            heartbeat_at=now if heartbeat else None,
        )
        with self.db.engine.begin() as con:
            con.execute(
                sa.insert(runs).values(
                    id=run.id,
                    workflow=workflow,
                    status=run.status,
                    params=run.params,
                    metrics={},
                    started_at=now,
                    tags=run.tags,
                    git_commit=git_commit,
                    target=target,
                    executor=executor,
                    heartbeat_at=run.heartbeat_at,
                    driver=driver_identity(),
                )
            )
        return run

    def restart(self, run_id: str, executor: str | None) -> None:
        """Mark a stopped run running again (for ``resume``), driven by this process."""
        now = datetime.now(UTC)
        with self.db.engine.begin() as con:
            con.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status="running",
                    error=None,
                    ended_at=None,
                    heartbeat_at=now,
                    driver=driver_identity(),
                    executor=executor,
                )
            )

    def log_metrics(self, run: Run, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add or overwrite metrics of a run (finite numbers only); each value is also kept as history."""
        clean = _finite(metrics)
        run.metrics.update(clean)
        now = datetime.now(UTC)
        with self.db.engine.begin() as con:
            con.execute(sa.update(runs).where(runs.c.id == run.id).values(metrics=dict(run.metrics)))
            if clean:
                con.execute(
                    sa.insert(run_metrics),
                    [
                        {
                            "run_id": run.id,
                            "node": None,
                            "name": k,
                            "value": v,
                            "step": step,
                            "logged_at": now,
                        }
                        for k, v in clean.items()
                    ],
                )

    def finish(
        self, run: Run, *, error: str | None = None, outputs: Any = None, status: str | None = None
    ) -> None:
        """Mark a run succeeded, or failed with ``error``; ``outputs`` are the stored workflow outputs."""
        run.status = status or ("failed" if error else "succeeded")
        run.error = error
        run.ended_at = datetime.now(UTC)
        values: dict[str, Any] = {"status": run.status, "error": error, "ended_at": run.ended_at}
        if outputs is not None:
            values["outputs"] = outputs
        with self.db.engine.begin() as con:
            con.execute(sa.update(runs).where(runs.c.id == run.id).values(**values))

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

    def runs(
        self, workflow: str | None = None, *, status: str | None = None, limit: int | None = None
    ) -> list[Run]:
        """Runs, newest first, optionally of one workflow and with one status."""
        query = sa.select(runs).order_by(runs.c.started_at.desc())
        if workflow:
            query = query.where(runs.c.workflow == workflow)
        if status:
            query = query.where(runs.c.status == status)
        if limit:
            query = query.limit(limit)
        with self.db.engine.connect() as con:
            return [_run(r) for r in con.execute(query).mappings()]

    def operators(self, run_id: str) -> list[OperatorRun]:
        """The operator executions of a run, in the order they started."""
        query = sa.select(operator_runs).where(operator_runs.c.run_id == run_id)
        with self.db.engine.connect() as con:
            rows = [_operator_run(r) for r in con.execute(query).mappings()]
        far = datetime.max.replace(tzinfo=UTC)
        return sorted(rows, key=lambda r: (_utc(r.started_at) or far, r.node))

    def metric_history(
        self, run_id: str, name: str | None = None
    ) -> list[tuple[str, str | None, int | None, float]]:
        """Every logged value of a run's metrics: ``(name, node, step, value)`` in logging order."""
        query = sa.select(run_metrics).where(run_metrics.c.run_id == run_id).order_by(run_metrics.c.id)
        if name:
            query = query.where(run_metrics.c.name == name)
        with self.db.engine.connect() as con:
            return [(r["name"], r["node"], r["step"], r["value"]) for r in con.execute(query).mappings()]

    def lineage(self, digest: str) -> list[ArtifactLineage]:
        """Every operator execution that produced the value ``digest`` (oldest first)."""
        query = (
            sa.select(run_artifacts, operator_runs.c.operator)
            .select_from(
                run_artifacts.outerjoin(
                    operator_runs,
                    sa.and_(
                        operator_runs.c.run_id == run_artifacts.c.run_id,
                        operator_runs.c.node == run_artifacts.c.node,
                    ),
                )
            )
            .where(run_artifacts.c.digest == digest)
            .order_by(run_artifacts.c.created_at)
        )
        with self.db.engine.connect() as con:
            return [
                ArtifactLineage(
                    r["digest"],
                    r["kind"],
                    r["run_id"],
                    r["node"],
                    r["operator"],
                    list(r["inputs"]),
                    r["created_at"],
                )
                for r in con.execute(query).mappings()
            ]

    def artifacts(self, run_id: str) -> list[ArtifactLineage]:
        """The values a run's operators produced."""
        query = sa.select(run_artifacts).where(run_artifacts.c.run_id == run_id)
        with self.db.engine.connect() as con:
            return [
                ArtifactLineage(
                    r["digest"], r["kind"], r["run_id"], r["node"], None, list(r["inputs"]), r["created_at"]
                )
                for r in con.execute(query).mappings()
            ]

    def cached(self, keys: Sequence[str]) -> dict[str, tuple[list[dict[str, Any]], str, str]]:
        """For each cache key with a successful execution, the newest one's outputs, run id and node."""
        found: dict[str, tuple[datetime, list[dict[str, Any]], str, str]] = {}
        unique = list(dict.fromkeys(keys))
        c = operator_runs.c
        with self.db.engine.connect() as con:
            for i in range(0, len(unique), 500):
                query = sa.select(c.cache_key, c.outputs, c.ended_at, c.run_id, c.node).where(
                    c.cache_key.in_(unique[i : i + 500]), c.status == "succeeded", c.cache_hit.is_(False)
                )
                for key, outputs, ended, run_id, node in con.execute(query):
                    ended = _utc(ended) or datetime.min.replace(tzinfo=UTC)
                    if outputs is not None and (key not in found or found[key][0] < ended):
                        found[key] = (ended, outputs, run_id, node)
        return {k: v[1:] for k, v in found.items()}

    def node_metrics(
        self, sources: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[tuple[str, float, int | None, float]]]:
        """Metrics logged by the given ``(run id, node)`` executions, in logging order."""
        out: dict[tuple[str, str], list[tuple[str, float, int | None, float]]] = {}
        runs_ = sorted({r for r, _ in sources})
        wanted = set(sources)
        if not runs_:
            return out
        m = run_metrics.c
        query = (
            sa.select(m.run_id, m.node, m.name, m.value, m.step, m.logged_at)
            .where(m.run_id.in_(runs_))
            .order_by(m.id)
        )
        with self.db.engine.connect() as con:
            for run_id, node, name, value, step, at in con.execute(query):
                if (run_id, node) in wanted:
                    out.setdefault((run_id, node), []).append(
                        (name, value, step, (_utc(at) or datetime.now(UTC)).timestamp())
                    )
        return out

    def mark_abandoned(self, *, stale_after: timedelta, now: datetime | None = None) -> list[str]:
        """Mark running runs whose driver is gone abandoned: its process has ended, or no heartbeat for ``stale_after``."""
        now = now or datetime.now(UTC)
        host = socket.gethostname()
        gone: list[str] = []
        with self.db.engine.connect() as con:
            rows = con.execute(
                sa.select(runs.c.id, runs.c.heartbeat_at, runs.c.driver).where(runs.c.status == "running")
            ).all()
        for run_id, beat, driver in rows:
            beat = _utc(beat)
            if beat is None:
                continue  # a run tracked by hand (``track``) has no heartbeat
            dead = isinstance(driver, dict) and driver.get("host") == host and not _alive(int(driver["pid"]))
            if dead or now - beat > stale_after:
                gone.append(run_id)
        for run_id in gone:
            with self.db.engine.begin() as con:
                con.execute(
                    sa.update(runs)
                    .where(runs.c.id == run_id, runs.c.status == "running")
                    .values(
                        status="abandoned",
                        ended_at=now,
                        error="the driver stopped without finishing the run (no heartbeat); resume it with "
                        f"`learner flow resume {run_id}`",
                    )
                )
        return gone


_NODE_DEFAULTS: dict[str, Any] = {
    "operator": "",
    "status": "pending",
    "attempts": 0,
    "cache_key": None,
    "cache_hit": False,
    "resources": {},
    "inputs": [],
    "outputs": None,
    "error": None,
    "started_at": None,
    "ended_at": None,
}


SETTLED = frozenset({"succeeded", "failed", "skipped"})
"""Operator statuses a run does not change again (a retry records ``retrying``, not ``failed``)."""


class RunRecorder:
    """Buffers one run's operator states, metrics and artifacts; :meth:`flush` writes them and the heartbeat.

    :meth:`flush_settled` writes only the operators that finished, so a driver can write them
    while others still run (each row once, not once running and again finished) and the
    run's last write is short.
    """

    def __init__(self, db: MetadataDB, run_id: str) -> None:
        self.db = db
        self.run_id = run_id
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one flush at a time: a row is inserted once
        self._nodes: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._settled: set[str] = set()  # dirty and in a SETTLED status
        self._metrics: list[dict[str, Any]] = []
        self._artifacts: dict[tuple[str, int], dict[str, Any]] = {}
        self.summary: dict[str, float] = {}
        with db.engine.connect() as con:  # rows a resumed run already has are updated, not inserted
            self._stored_nodes = set(
                con.execute(sa.select(operator_runs.c.node).where(operator_runs.c.run_id == run_id)).scalars()
            )
            self._stored_outputs = {
                (node, index)
                for node, index in con.execute(
                    sa.select(run_artifacts.c.node, run_artifacts.c.output).where(
                        run_artifacts.c.run_id == run_id
                    )
                )
            }

    def node(self, node: str, **values: Any) -> None:
        """Update what is known about ``node`` (operator, status, attempts, outputs, error, times...)."""
        with self._lock:
            self._nodes.setdefault(node, dict(_NODE_DEFAULTS)).update(values)
            self._dirty.add(node)
            if "status" in values:
                if values["status"] in SETTLED:
                    self._settled.add(node)
                else:
                    self._settled.discard(node)

    def metrics(self, node: str, items: Sequence[tuple[str, float, int | None, float]]) -> None:
        """Metrics a node logged: ``(name, value, step, unix time)``."""
        with self._lock:
            for name, value, step, at in items:
                self.summary[name] = value
                self._metrics.append(
                    {
                        "run_id": self.run_id,
                        "node": node,
                        "name": name,
                        "value": value,
                        "step": step,
                        "logged_at": datetime.fromtimestamp(at, UTC),
                    }
                )

    def artifacts(self, node: str, outputs: Sequence[dict[str, Any]], inputs: Sequence[str]) -> None:
        """Lineage: each output of ``node`` was made from the values ``inputs``."""
        now = datetime.now(UTC)
        with self._lock:
            for index, ref in enumerate(outputs):
                self._artifacts[(node, index)] = {
                    "b_node": node,
                    "b_output": index,
                    "digest": ref["digest"],
                    "kind": ref["kind"],
                    "inputs": inputs,
                    "created_at": now,
                }

    @property
    def settled(self) -> int:
        """How many finished operators wait to be written."""
        return len(self._settled)

    def flush(self) -> None:
        """Write everything buffered, and the heartbeat, in one transaction of batched statements.

        If the database fails, nothing is lost: what was buffered stays buffered for the next
        flush, and the error is raised.
        """
        self._flush(settled_only=False)

    def flush_settled(self) -> None:
        """Write the operators that finished (with the metrics and lineage buffered) and the heartbeat."""
        self._flush(settled_only=True)

    def _flush(self, *, settled_only: bool) -> None:
        with self._writing:
            with self._lock:
                taken = sorted(self._settled if settled_only else self._dirty)
                nodes = [{"b_node": n, **self._nodes[n]} for n in taken]
                self._dirty.difference_update(taken)
                self._settled.difference_update(taken)
                metrics, self._metrics = self._metrics, []
                artifacts, self._artifacts = self._artifacts, {}
                summary = dict(self.summary)
            committed: list[bool] = []
            try:
                self._write(nodes, metrics, artifacts, summary, committed)
            except BaseException:
                if committed:  # an interrupt after the commit: the rows are in, not to be written twice
                    raise
                with self._lock:  # back in the buffer (with any newer values) for the next flush
                    self._dirty.update(taken)
                    self._settled.update(n for n in taken if self._nodes[n]["status"] in SETTLED)
                    self._metrics[:0] = metrics
                    self._artifacts = {**artifacts, **self._artifacts}
                raise

    def _write(
        self,
        nodes: list[dict[str, Any]],
        metrics: list[dict[str, Any]],
        artifacts: dict[tuple[str, int], dict[str, Any]],
        summary: dict[str, float],
        committed: list[bool],
    ) -> None:
        with self.db.engine.begin() as con:
            old = [row for row in nodes if row["b_node"] in self._stored_nodes]
            new = [row for row in nodes if row["b_node"] not in self._stored_nodes]
            # A resources dict or an inputs list shared by rows: one JSON text.
            memo: dict[tuple[int, type], Any] = {}
            _upsert(con, operator_runs, self.run_id, ("node",), tuple(_NODE_DEFAULTS), old, new, memo)
            if metrics:
                con.execute(sa.insert(run_metrics), metrics)
            old_outputs = [row for key, row in artifacts.items() if key in self._stored_outputs]
            new_outputs = [row for key, row in artifacts.items() if key not in self._stored_outputs]
            fields = ("digest", "kind", "inputs", "created_at")
            _upsert(
                con, run_artifacts, self.run_id, ("node", "output"), fields, old_outputs, new_outputs, memo
            )
            run_values: dict[str, Any] = {"heartbeat_at": datetime.now(UTC)}
            if summary:
                current = con.execute(sa.select(runs.c.metrics).where(runs.c.id == self.run_id)).scalar_one()
                run_values["metrics"] = {**(current or {}), **summary}
            con.execute(sa.update(runs).where(runs.c.id == self.run_id).values(**run_values))
        committed.append(True)
        self._stored_nodes.update(row["b_node"] for row in new)
        self._stored_outputs.update(artifacts)


def _upsert(
    con: sa.Connection,
    table: sa.Table,
    run_id: str,
    keys: Sequence[str],
    fields: Sequence[str],
    stored: list[dict[str, Any]],
    fresh: list[dict[str, Any]],
    json_memo: dict[tuple[int, type], Any] | None = None,
) -> None:
    """One run's rows of ``table``: update those already ``stored``, insert the ``fresh`` ones.

    Rows give each key column as ``b_<key>`` (SQLAlchemy reserves the column names in an
    UPDATE's WHERE) and each of ``fields`` under its own name. ``json_memo``: as for
    :func:`execute_many`, shared while the rows are alive.
    """
    c = table.c
    if stored:
        where = [c.run_id == run_id, *(c[k] == sa.bindparam(f"b_{k}") for k in keys)]
        statement = sa.update(table).where(*where).values({f: sa.bindparam(f) for f in fields})
        execute_many(con, statement, stored, json_memo)
    if fresh:
        bound: dict[str, Any] = {k: sa.bindparam(f"b_{k}") for k in keys} | {
            f: sa.bindparam(f) for f in fields
        }
        execute_many(con, sa.insert(table).values(run_id=run_id, **bound), fresh, json_memo)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite returns naive datetimes


def _run(row: Mapping[Any, Any]) -> Run:
    return Run(
        id=row["id"],
        workflow=row["workflow"],
        status=row["status"],
        params=dict(row["params"]),
        metrics=dict(row["metrics"]),
        error=row["error"],
        started_at=_utc(row["started_at"]),
        ended_at=_utc(row["ended_at"]),
        tags=dict(row["tags"] or {}),
        git_commit=row["git_commit"],
        executor=row["executor"],
        target=row["target"],
        outputs=row["outputs"] if row["outputs"] is not None else {},
        heartbeat_at=_utc(row["heartbeat_at"]),
    )


def _operator_run(row: Mapping[Any, Any]) -> OperatorRun:
    return OperatorRun(
        run_id=row["run_id"],
        node=row["node"],
        operator=row["operator"],
        status=row["status"],
        attempts=row["attempts"],
        cache_hit=bool(row["cache_hit"]),
        cache_key=row["cache_key"],
        resources=dict(row["resources"] or {}),
        inputs=list(row["inputs"] or []),
        outputs=row["outputs"],
        error=row["error"],
        started_at=_utc(row["started_at"]),
        ended_at=_utc(row["ended_at"]),
    )
