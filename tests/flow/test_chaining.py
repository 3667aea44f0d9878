"""Chaining: nodes handed to an executor before their inputs exist, then settled in dependency order.

A deterministic executor finishes every task before the engine hears of any, and reports
them children first, so the engine must hold a chained result until its inputs have
succeeded, and withdraw it when one fails. The same cases then run on Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from openlearner import Workspace
from openlearner.flow import Executor, operator, workflow
from openlearner.flow.executors.base import Chaining
from openlearner.flow.operator import Resources
from openlearner.flow.task import InputRef, Task, TaskResult, Upstream, execute


def _resolve(value: Any, results: Mapping[str, TaskResult]) -> Any:
    if isinstance(value, Upstream):
        return InputRef(results[value.node].outputs[value.index])
    if isinstance(value, list | tuple):
        return type(value)(_resolve(v, results) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, results) for k, v in value.items()}
    return value


class BackwardsExecutor:
    """Runs nothing until the engine stops handing over work, then runs every task in order and
    reports the results last task first. A task whose upstream failed is not run."""

    name = "backwards"

    def __init__(self) -> None:
        self.tasks: list[tuple[Task, dict[str, str], Future[TaskResult]]] = []
        self.chained: list[str] = []
        self.deferred: list[str] = []
        self.ran: list[str] = []
        self._nodes: dict[int, str] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def check(self, resources: Resources) -> None:
        pass

    def submit(self, task: Task) -> Future[TaskResult]:
        return self._add(task, {})

    def chain(self, task: Task, upstream: Mapping[str, Future[TaskResult]]) -> Future[TaskResult] | None:
        self.chained.append(task.node)
        return self._add(task, {node: node for node in upstream})

    def defer(self, future: Future[TaskResult]) -> None:
        self.deferred.append(self._nodes[id(future)])

    def _add(self, task: Task, upstream: dict[str, str]) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        self._nodes[id(future)] = task.node
        with self._lock:
            self.tasks.append((task, upstream, future))
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(0.2, self._run_all)
            self._timer.start()
        return future

    def _run_all(self) -> None:
        with self._lock:
            batch, self.tasks = self.tasks, []
        results: dict[str, TaskResult] = {}
        for task, upstream, _ in batch:
            if any(results[node].error is not None for node in upstream):
                results[task.node] = TaskResult(error="not run: an upstream operator failed")
                continue
            self.ran.append(task.node)
            task.kwargs = _resolve(task.kwargs, results)
            results[task.node] = execute(task)
        for task, _, future in reversed(batch):
            future.set_result(results[task.node])

    def shutdown(self) -> None:
        pass


def bump(path: str) -> int:
    file = Path(path)
    count = int(file.read_text()) + 1 if file.exists() else 1
    file.write_text(str(count))
    return count


@operator(cache=False)
def seed(x: int) -> int:
    return x


@operator(cache=False)
def double(x: int) -> int:
    return 2 * x


@operator(cache=False)
def total(values: list[int]) -> int:
    return sum(values)


@workflow
def fan(width: int = 4) -> int:
    return total([double(double(seed(i))) for i in range(width)])


@operator(cache=False)
def explode(x: int) -> int:
    raise ValueError(f"bad input {x}")


@operator(cache=False)
def witness(x: int, folder: str) -> int:
    Path(folder, f"ran-{x}").touch()
    return x


@workflow
def broken_chain(folder: str) -> dict:
    return {"broken": witness(explode(1), folder), "fine": witness(seed(2), folder)}


@operator(retries=2, backoff=0.01, cache=False)
def flaky(counter: str) -> int:
    if bump(counter) == 1:
        raise ConnectionError("the first attempt fails")
    return 5


@operator(cache=False)
def counted(x: int, counter: str) -> int:
    bump(counter)
    return x + 1


@workflow
def retried_chain(folder: str) -> int:
    return counted(flaky(f"{folder}/flaky"), f"{folder}/counted")


@operator
def cached_double(x: int) -> int:
    return 2 * x


@workflow
def cached_chain(x: int = 3) -> int:
    return cached_double(seed(x))


def test_a_chaining_executor_is_recognised() -> None:
    assert isinstance(BackwardsExecutor(), Chaining)
    from openlearner.flow import LocalExecutor

    assert not isinstance(LocalExecutor(mode="thread"), Chaining)


def test_results_reported_children_first_settle_in_dependency_order(workspace: Workspace) -> None:
    executor = BackwardsExecutor()
    run = workspace.flow.run(fan, executor=executor, cache=False)
    assert run.status == "succeeded", run.error
    assert run.outputs == 2 * 2 * sum(range(4))
    # Only the roots waited for the driver; everything downstream was handed over at once.
    assert sorted(executor.chained) == sorted(
        n for n in run_nodes(workspace, run.id) if not n.startswith("seed")
    )
    # Every dependant is chained, so the engine waits on no result but for its records.
    assert sorted(executor.deferred) == sorted(run_nodes(workspace, run.id))
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert all(o.status == "succeeded" and o.attempts == 1 for o in nodes.values())
    # Lineage and cache keys of chained nodes name their inputs, as for any other node.
    assert nodes["double"].inputs and nodes["double"].inputs == [
        o["digest"] for o in nodes["seed"].outputs or []
    ]
    assert all(o.cache_key for o in nodes.values())
    lineage = workspace.flow.lineage(nodes["total"].outputs[0]["digest"])  # type: ignore[index]
    assert [(entry.node, len(entry.inputs)) for entry in lineage] == [("total", 4)]


def run_nodes(workspace: Workspace, run_id: str) -> list[str]:
    return [o.node for o in workspace.flow.operators(run_id)]


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """A folder where operators leave a file each time they run."""
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


def test_a_chained_node_whose_input_failed_is_skipped_and_never_runs(
    workspace: Workspace, marks: Path
) -> None:
    executor = BackwardsExecutor()
    run = workspace.flow.run(broken_chain, params={"folder": str(marks)}, executor=executor, cache=False)
    assert run.status == "failed"
    assert "ValueError: bad input 1" in (run.error or "")
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert nodes["explode"].status == "failed"
    assert nodes["witness"].status == "skipped" and nodes["witness"].attempts == 0
    assert nodes["witness#2"].status == "succeeded"
    assert sorted(p.name for p in marks.iterdir()) == ["ran-2"]
    assert "witness" in executor.chained and "witness" not in executor.ran


def test_a_chained_node_is_withdrawn_when_its_input_retries_and_runs_once_on_the_retried_value(
    workspace: Workspace, marks: Path
) -> None:
    executor = BackwardsExecutor()
    run = workspace.flow.run(retried_chain, params={"folder": str(marks)}, executor=executor, cache=False)
    assert run.status == "succeeded", run.error
    assert run.outputs == 6
    assert (marks / "flaky").read_text() == "2" and (marks / "counted").read_text() == "1"
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert nodes["flaky"].attempts == 2 and nodes["counted"].attempts == 1
    # Chained on each attempt of its input, run only on the one that succeeded.
    assert executor.chained == ["counted", "counted"] and executor.ran.count("counted") == 1


def test_nodes_that_need_a_cache_lookup_wait_for_their_inputs(workspace: Workspace) -> None:
    executor = BackwardsExecutor()
    first = workspace.flow.run(cached_chain, executor=executor)
    assert first.status == "succeeded" and first.outputs == 6
    assert executor.chained == []
    # The engine waits on seed to look up cached_double; only the last node is left to the records.
    assert executor.deferred == ["cached_double"]
    again = workspace.flow.run(cached_chain, executor=BackwardsExecutor())
    nodes = {o.node: o for o in workspace.flow.operators(again.id)}
    assert again.outputs == 6 and nodes["cached_double"].cache_hit


@operator(cache=False, timeout=30)
def bounded(x: int) -> int:
    return x


@workflow
def after_a_timeout(x: int = 4) -> int:
    return double(bounded(x))


def test_nothing_is_chained_on_an_input_the_driver_may_give_up_on(workspace: Workspace) -> None:
    executor = BackwardsExecutor()
    run = workspace.flow.run(after_a_timeout, executor=executor, cache=False)
    assert run.status == "succeeded" and run.outputs == 8
    assert executor.chained == []  # its task could still finish after a driver-side timeout


@pytest.fixture
def ray_executor(ray_cluster: Any) -> Any:
    from openlearner.flow.executors.ray import RayExecutor

    runner = RayExecutor()
    yield runner
    runner.shutdown()


@pytest.mark.ray
def test_ray_chains_a_dag_and_gets_the_same_outputs(workspace: Workspace, ray_executor: Executor) -> None:
    run = workspace.flow.run(fan, params={"width": 6}, executor=ray_executor, cache=False)
    assert run.status == "succeeded", run.error
    assert run.outputs == 2 * 2 * sum(range(6))
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert all(o.status == "succeeded" and o.attempts == 1 and o.cache_key for o in nodes.values())
    assert len(nodes["total"].inputs) == 6


@pytest.mark.ray
def test_ray_skips_a_chained_node_whose_input_failed(
    workspace: Workspace, ray_executor: Executor, marks: Path
) -> None:
    run = workspace.flow.run(broken_chain, params={"folder": str(marks)}, executor=ray_executor, cache=False)
    assert run.status == "failed"
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert nodes["witness"].status == "skipped" and nodes["witness#2"].status == "succeeded"
    assert sorted(p.name for p in marks.iterdir()) == ["ran-2"]


@pytest.mark.ray
def test_ray_reruns_a_chained_node_on_its_retried_input(
    workspace: Workspace, ray_executor: Executor, marks: Path
) -> None:
    run = workspace.flow.run(retried_chain, params={"folder": str(marks)}, executor=ray_executor, cache=False)
    assert run.status == "succeeded", run.error
    assert run.outputs == 6
    assert (marks / "counted").read_text() == "1"


@workflow
def lanes(width: int = 40) -> list[int]:
    # cached_double looks up the cache, so it is submitted once its input succeeded; the
    # double chained on it makes it a deferred future, one per lane.
    return [double(cached_double(double(seed(i)))) for i in range(width)]


def test_every_future_only_the_records_wait_on_is_deferred_and_the_engine_is_freed_after_the_run(
    workspace: Workspace,
) -> None:
    import gc
    import weakref

    from openlearner.flow import engine

    engines: list[weakref.ref[engine.Engine]] = []
    original = engine.Engine.run

    def run(self: engine.Engine) -> Any:
        engines.append(weakref.ref(self))
        return original(self)

    executor = BackwardsExecutor()
    gc.collect()
    gc.disable()  # what is freed must be freed by reference counting, not by a later GC pass
    try:
        engine.Engine.run = run  # type: ignore[method-assign]
        outcome = workspace.flow.run(lanes, executor=executor, cache=True)
    finally:
        engine.Engine.run = original  # type: ignore[method-assign]
        gc.enable()
    assert outcome.status == "succeeded", outcome.error
    assert sum(n.startswith("cached_double") for n in executor.deferred) == 40
    assert engines and engines[0]() is None
