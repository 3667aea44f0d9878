"""``workspace.flow``: run, resume, list, compare and sweep workflows; runs tracked in the metadata DB."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

from openlearner.errors import Conflict, Invalid, NotFound
from openlearner.flow.engine import Engine, NodeState, settled_heap
from openlearner.flow.executors.base import Executor, open_executor
from openlearner.flow.operator import load_file_module
from openlearner.flow.runs import ArtifactLineage, OperatorRun, Run, RunRecorder, RunTracker
from openlearner.flow.sweep import RunComparison, SweepResult, compare_runs, grid_variants, rank_runs
from openlearner.flow.values import load_value
from openlearner.flow.workflow import Graph, Output, Workflow, known_workflow, remember_workflow
from openlearner.storage.artifacts.base import ArtifactStore
from openlearner.storage.metadata import MetadataDB

__all__ = ["Flow", "file_workflow", "load_module", "load_workflow"]

HEARTBEAT_SECONDS = 5.0


def load_module(name: str) -> ModuleType:
    """The module imported as ``name``, or the Python file ``name`` when it ends in ``.py``."""
    try:
        if not name.endswith(".py"):
            return import_module(name)
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise NotFound(f"no workflow file {path}")
        return load_file_module(f"openlearner_workflow_{path.stem}", path)
    except ModuleNotFoundError as exc:
        raise NotFound(f"cannot import {name!r}: {exc}") from exc


def _check_nodes(graph: Graph, runner: Executor) -> None:
    """Refuse, before anything runs, an operator the executor cannot give what it asks for or
    whose workers cannot find it by name (thread runs need no name; GPU operators of the
    local executor run in newly started workers, which must import their module)."""
    for node in graph.nodes.values():
        try:
            runner.check(node.operator.resources)
            if runner.name != "thread":
                fresh = runner.name == "local" and node.operator.resources.gpu > 0
                node.operator.check_findable(fresh=fresh)
        except Invalid as exc:
            raise Invalid(f"{node.line}: {node.id}: {exc}") from None


def file_workflow(workflow: Workflow, path: str, attr: str) -> Workflow:
    """Record that ``workflow`` came from file ``path``, so another process can load it to resume."""
    workflow.target = f"{Path(path).expanduser().resolve()}:{attr}"
    remember_workflow(workflow)
    return workflow


def load_workflow(target: str) -> Workflow:
    """The workflow named ``module:name`` or ``path/to/file.py:name``."""
    if not isinstance(target, str) or ":" not in target:
        raise Invalid(f"name a workflow as MODULE:WORKFLOW or FILE.py:WORKFLOW, not {target!r}")
    known = known_workflow(target)
    if known is not None:
        return known
    module_name, _, attr = target.rpartition(":")
    found: Any = load_module(module_name)
    for part in attr.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, Workflow):
        raise NotFound(f"{target!r} is not a workflow (decorate the function with @workflow)")
    return file_workflow(found, module_name, attr) if module_name.endswith(".py") else found


def _git_commit(workflow: Workflow) -> str | None:
    folder = os.path.dirname(os.path.abspath(workflow.fn.__code__.co_filename))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


class Flow:
    """Runs workflows and keeps their records (``workspace.flow``)."""

    def __init__(
        self,
        db: MetadataDB,
        artifacts: ArtifactStore,
        artifact_uri: str,
        *,
        executor: str = "local",
        ray_address: str | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.db = db
        self.tracker = RunTracker(db)
        self.artifacts = artifacts
        self.artifact_uri = artifact_uri
        self.default_executor = executor
        self.ray_address = ray_address
        self.heartbeat = heartbeat

    # -- running -------------------------------------------------------------------------

    def _executor(self, executor: str | Executor | None) -> tuple[Executor, bool]:
        if executor is None or isinstance(executor, str):
            name = executor or self.default_executor
            if name == "ray":
                from openlearner.flow.executors.ray import RayExecutor

                return RayExecutor(address=self.ray_address), True
            return open_executor(name), True
        if not all(hasattr(executor, m) for m in ("submit", "shutdown", "check")):
            raise Invalid(f"executor must be 'local', 'thread', 'ray' or an Executor, not {executor!r}")
        return executor, False

    def run(
        self,
        workflow: Workflow | str,
        params: Mapping[str, Any] | None = None,
        *,
        executor: str | Executor | None = None,
        cache: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> Run:
        """Trace ``workflow`` with ``params``, run its DAG and return the finished run.

        A failed operator does not raise: the run comes back ``failed`` with the error,
        after every branch that did not depend on it has finished.
        """
        wf = load_workflow(workflow) if isinstance(workflow, str) else workflow
        if not isinstance(wf, Workflow):
            raise Invalid(f"{workflow!r} is not a workflow; decorate it with @workflow")
        graph = wf.trace(dict(params or {}))
        runner, owned = self._executor(executor)
        try:
            _check_nodes(graph, runner)
            run = self.tracker.start(
                wf.name,
                graph.params,
                tags=tags,
                target=wf.target,
                executor=runner.name,
                git_commit=_git_commit(wf),
                heartbeat=True,
            )
            return self._drive(run, graph, runner, cache, {})
        finally:
            if owned:
                runner.shutdown()

    def resume(self, run_id: str, *, executor: str | Executor | None = None) -> Run:
        """Run again what failed or never ran in run ``run_id``, reusing every node that succeeded."""
        self.check_abandoned()
        run = self.tracker.get(run_id)
        if run.status == "succeeded":
            return self.get(run_id)
        if run.status == "running":
            raise Conflict(f"run {run_id} is still running; resume it after it ends or is marked abandoned")
        if not run.target:
            raise Invalid(f"run {run_id} was tracked by hand, not by ws.flow.run, so it cannot be resumed")
        wf = load_workflow(run.target)
        graph = wf.trace(run.params)
        reuse = {
            o.node: o.outputs for o in self.tracker.operators(run_id) if o.status == "succeeded" and o.outputs
        }
        runner, owned = self._executor(executor if executor is not None else run.executor)
        try:
            _check_nodes(graph, runner)
            self.tracker.restart(run_id, runner.name)
            run.status, run.error, run.ended_at = "running", None, None
            return self._drive(run, graph, runner, True, reuse)
        finally:
            if owned:
                runner.shutdown()

    def _drive(
        self, run: Run, graph: Graph, runner: Executor, cache: bool, reuse: dict[str, list[dict[str, Any]]]
    ) -> Run:
        recorder = RunRecorder(self.db, run.id)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                try:
                    recorder.flush()
                except Exception:
                    continue

        thread = threading.Thread(target=beat, name=f"flow-heartbeat-{run.id[:8]}", daemon=True)
        thread.start()
        engine = Engine(
            graph,
            runner,
            self.artifacts,
            self.artifact_uri,
            self.tracker,
            recorder,
            use_cache=cache,
            reuse=reuse,
        )
        try:
            with settled_heap():
                states = engine.run()
        except BaseException as exc:
            stop.set()
            thread.join()
            recorder.flush()
            self.tracker.finish(run, error=f"{type(exc).__name__}: {exc}")
            raise
        stop.set()
        thread.join()
        failed = [n for n, s in states.items() if s.status == "failed"]
        outputs = _resolve_outputs(graph.outputs, states)
        for name, value in _output_metrics(outputs).items():
            recorder.summary.setdefault(name, value)
        recorder.flush()
        error = None
        if failed:
            last = (states[failed[0]].error or "").strip().splitlines()
            error = f"operator {failed[0]} failed: {last[-1] if last else 'unknown error'}"
            if len(failed) > 1:
                error += f" (and {len(failed) - 1} more: {', '.join(failed[1:])})"
        self.tracker.finish(run, error=error, outputs=outputs)
        return self.get(run.id)

    # -- reading -------------------------------------------------------------------------

    def get(self, run_id: str) -> Run:
        """The run ``run_id`` with its outputs loaded (datasets and models lazily)."""
        run = self.tracker.get(run_id)
        run.outputs = self.outputs_of(run)
        return run

    def outputs_of(self, run: Run) -> Any:
        """Decode a run's stored outputs: refs become values, Datasets and ModelArtifacts."""
        return _decode(run.outputs, self.artifacts)

    def runs(
        self, workflow: str | None = None, *, status: str | None = None, limit: int | None = None
    ) -> list[Run]:
        """Runs, newest first (dead drivers' runs are marked abandoned first)."""
        self.check_abandoned()
        return self.tracker.runs(workflow, status=status, limit=limit)

    def operators(self, run_id: str) -> list[OperatorRun]:
        """A run's operator executions: status, attempts, times, resources, cache hit, error."""
        self.tracker.get(run_id)
        return self.tracker.operators(run_id)

    def metric_history(
        self, run_id: str, name: str | None = None
    ) -> list[tuple[str, str | None, int | None, float]]:
        """Every logged metric value of a run: ``(name, node, step, value)``."""
        return self.tracker.metric_history(run_id, name)

    def lineage(self, digest: str) -> list[ArtifactLineage]:
        """Which operator of which run produced the value ``digest``, and from which inputs."""
        return self.tracker.lineage(digest)

    def artifacts_of(self, run_id: str) -> list[ArtifactLineage]:
        """The values a run produced, with the inputs of each."""
        return self.tracker.artifacts(run_id)

    def check_abandoned(
        self, *, now: datetime | None = None, stale_after: timedelta | None = None
    ) -> list[str]:
        """Mark runs whose driver died abandoned; returns their ids."""
        stale = stale_after or timedelta(seconds=max(60.0, 6 * self.heartbeat))
        return self.tracker.mark_abandoned(stale_after=stale, now=now)

    def compare(self, run_ids: Sequence[str]) -> RunComparison:
        """Parameters and metrics of runs side by side."""
        if len(run_ids) < 1:
            raise Invalid("compare needs at least one run id")
        return compare_runs([self.tracker.get(r) for r in run_ids])

    def sweep(
        self,
        workflow: Workflow | str,
        *,
        grid: Mapping[str, Sequence[Any]],
        metric: str,
        mode: str = "min",
        params: Mapping[str, Any] | None = None,
        samples: int | None = None,
        seed: int = 0,
        executor: str | Executor | None = None,
        parallel: int = 4,
    ) -> SweepResult:
        """Run one variant per grid point (or ``samples`` random ones) in parallel and rank them by ``metric``."""
        if mode not in ("min", "max"):
            raise Invalid(f"mode is 'min' or 'max', not {mode!r}")
        wf = load_workflow(workflow) if isinstance(workflow, str) else workflow
        variants = grid_variants(grid, samples=samples, seed=seed)
        base = dict(params or {})
        for variant in variants:
            wf.bind({**base, **variant})  # bad names or types fail before anything runs
        runner, owned = self._executor(executor)
        sweep_id = os.urandom(6).hex()
        try:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(variants)))) as pool:
                futures = [
                    pool.submit(self.run, wf, {**base, **v}, executor=runner, tags={"sweep": sweep_id})
                    for v in variants
                ]
                done = [f.result() for f in futures]
        finally:
            if owned:
                runner.shutdown()
        return rank_runs(done, variants, metric, mode, sweep_id)

    # -- tracking by hand ----------------------------------------------------------------

    def start(self, workflow: str, params: Mapping[str, Any] | None = None) -> Run:
        """Record a run started by hand (see :meth:`track`)."""
        return self.tracker.start(workflow, params)

    def log_metrics(self, run: Run, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add metrics to a run tracked by hand."""
        self.tracker.log_metrics(run, metrics, step)

    def finish(self, run: Run, *, error: str | None = None) -> None:
        """End a run tracked by hand."""
        self.tracker.finish(run, error=error)

    @contextmanager
    def track(self, workflow: str, params: Mapping[str, Any] | None = None) -> Iterator[Run]:
        """A run around a block of code: succeeded when it ends, failed if it raises."""
        with self.tracker.track(workflow, params) as run:
            yield run


def _resolve_outputs(value: Any, states: dict[str, NodeState]) -> Any:
    if isinstance(value, Output):
        state = states[value.node]
        return {"$ref": state.outputs[value.index]} if state.status == "succeeded" else None
    if isinstance(value, list):
        return [_resolve_outputs(v, states) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_outputs(v, states) for k, v in value.items()}
    return value


def _decode(value: Any, store: ArtifactStore) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$ref"}:
            return load_value(value["$ref"], store)
        return {k: _decode(v, store) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, store) for v in value]
    return value


def _inline(value: Any) -> Any:
    """The value of an inline JSON ref, or ``value`` itself."""
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return value["$ref"].get("value")
    return value


def _output_metrics(outputs: Any) -> dict[str, float]:
    """Numbers in a ``metrics`` output (a dict of numbers, stored inline) become run metrics."""
    if not isinstance(outputs, dict):
        return {}
    found = _inline(outputs.get("metrics"))
    if not isinstance(found, dict):
        return {}
    numbers = {str(k): _inline(v) for k, v in found.items()}
    return {k: float(v) for k, v in numbers.items() if isinstance(v, int | float) and not isinstance(v, bool)}
