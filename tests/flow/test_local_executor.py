"""LocalExecutor: resources are held while a task runs, so the machine is never oversubscribed."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from openlearner import Workspace
from openlearner.errors import Invalid
from openlearner.flow import LocalExecutor, Resources, operator, workflow

_LOCK = threading.Lock()
_RUNNING = {"now": 0, "most": 0}


def _enter_and_leave() -> int:
    with _LOCK:
        _RUNNING["now"] += 1
        _RUNNING["most"] = max(_RUNNING["most"], _RUNNING["now"])
    time.sleep(0.05)
    with _LOCK:
        _RUNNING["now"] -= 1
    return 1


@operator(resources=Resources(cpu=1), cache=False)
def light(i: int) -> int:
    return _enter_and_leave()


@operator(resources=Resources(cpu=2), cache=False)
def heavy(i: int) -> int:
    return _enter_and_leave()


@operator(resources=Resources(cpu=1, memory="1GB"), cache=False)
def hungry(i: int) -> int:
    return _enter_and_leave()


@workflow
def many(kind: str = "light", n: int = 6) -> list:
    op = {"light": light, "heavy": heavy, "hungry": hungry}[kind]
    return [op(i) for i in range(n)]


@operator(cache=False)
def crash(x: int) -> int:
    os._exit(3)


@workflow
def crashing(x: int = 1) -> int:
    return crash(x)


@pytest.mark.parametrize(
    ("kind", "cpus", "memory", "most"),
    [("light", 2, None, 2), ("heavy", 2, None, 1), ("hungry", 4, 2 * 10**9, 2)],
)
def test_tasks_never_take_more_than_the_machine_has(
    workspace: Workspace, kind: str, cpus: int, memory: int | None, most: int
) -> None:
    _RUNNING.update(now=0, most=0)
    executor = LocalExecutor(mode="thread", cpus=cpus, memory=memory)
    try:
        run = workspace.flow.run(many, params={"kind": kind}, executor=executor)
    finally:
        executor.shutdown()
    assert run.status == "succeeded" and run.outputs == [1] * 6
    assert 1 <= _RUNNING["most"] <= most


def test_requests_beyond_the_machine_are_refused() -> None:
    executor = LocalExecutor(mode="thread", cpus=2, memory=10**9, gpus=0)
    with pytest.raises(Invalid, match="asks for 4 CPUs; this machine has 2"):
        executor.check(Resources(cpu=4))
    with pytest.raises(Invalid, match="asks for 1 GPUs; this machine has 0"):
        executor.check(Resources(gpu=1))
    with pytest.raises(Invalid, match=r"2\.0 GB of memory"):
        executor.check(Resources(memory="2GB"))
    with pytest.raises(Invalid, match="not a size"):
        Resources(memory="lots")
    with pytest.raises(Invalid, match="non-negative"):
        Resources(cpu=-1)
    executor.shutdown()


def test_a_worker_that_dies_fails_its_operator_and_the_pool_recovers(workspace: Workspace) -> None:
    executor = LocalExecutor(mode="process", cpus=1)
    try:
        run = workspace.flow.run(crashing, executor=executor)
        assert run.status == "failed" and "BrokenProcessPool" in (run.error or "")
        again = workspace.flow.run(many, params={"kind": "light", "n": 2}, executor=executor)
        assert again.status == "succeeded"
    finally:
        executor.shutdown()


_STARTED_BY = {"who": "import"}  # the driver marks it; forked workers inherit the mark, spawned ones do not


@operator(cache=False)
def where_am_i(i: int) -> dict:
    return {"who": _STARTED_BY["who"], "pid": os.getpid()}


@operator(resources=Resources(cpu=1, gpu=1), cache=False)
def where_am_i_with_a_gpu(i: int) -> dict:
    return {"who": _STARTED_BY["who"], "pid": os.getpid()}


@workflow
def locate(n: int = 2) -> dict:
    return {
        **{f"cpu{i}": where_am_i(i) for i in range(n)},
        **{f"gpu{i}": where_am_i_with_a_gpu(i) for i in range(n)},
    }


def test_gpu_operators_run_in_fresh_workers_and_the_others_in_forked_ones(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked child cannot use CUDA once its parent has touched it: an operator that asks
    for a GPU runs in a spawned worker, which finds it by importing its module."""
    monkeypatch.setitem(_STARTED_BY, "who", "driver")
    executor = LocalExecutor(cpus=2, gpus=1)  # a pretend GPU: the accounting is what is tested
    try:
        run = workspace.flow.run(locate, executor=executor)
    finally:
        executor.shutdown()
    assert run.status == "succeeded", run.error
    out = run.outputs
    assert {out[f"cpu{i}"]["who"] for i in range(2)} == {"driver"}  # forked: the driver's memory
    assert {out[f"gpu{i}"]["who"] for i in range(2)} == {"import"}  # spawned: imported afresh
    assert os.getpid() not in {a["pid"] for a in out.values()}


def test_a_gpu_operator_a_fresh_process_cannot_import_is_refused_before_running(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    notebook = types.ModuleType("notebook_cell_7")  # as a notebook's or `python -c`'s code is
    monkeypatch.setitem(sys.modules, "notebook_cell_7", notebook)

    def train(i: int) -> int:
        return i

    train.__module__, train.__qualname__ = "notebook_cell_7", "train"
    notebook.train = operator(resources=Resources(gpu=1))(train)  # type: ignore[attr-defined]

    @workflow
    def from_a_notebook() -> int:
        return notebook.train(1)  # type: ignore[attr-defined,no-any-return]

    with pytest.raises(Invalid, match=r"asks for a GPU.*cannot import its module 'notebook_cell_7'"):
        workspace.flow.run(from_a_notebook, executor=LocalExecutor(cpus=2, gpus=1))
    run = workspace.flow.run(from_a_notebook, executor=LocalExecutor(mode="thread", cpus=2, gpus=1))
    assert run.status == "succeeded"


_WORKFLOW_FILE = """
import os

from openlearner.flow import Resources, operator, workflow

MARK = {"who": "import"}


@operator(resources=Resources(cpu=1, gpu=1), cache=False)
def on_gpu(i: int) -> dict:
    return {"who": MARK["who"], "pid": os.getpid()}


@workflow
def gpu_file_flow() -> dict:
    return {"a": on_gpu(1)}
"""


def test_a_gpu_operator_of_a_workflow_file_runs_in_a_fresh_worker(
    workspace: Workspace, tmp_path: Path
) -> None:
    """`learner flow run flows.py:wf` loads the file under a name no new process can import:
    the spawned worker loads the operator's module from its file."""
    from openlearner.flow.facade import load_workflow

    path = tmp_path / "gpu_flows.py"
    path.write_text(_WORKFLOW_FILE)
    wf = load_workflow(f"{path}:gpu_file_flow")
    sys.modules["openlearner_workflow_gpu_flows"].MARK["who"] = "driver"  # type: ignore[attr-defined]
    executor = LocalExecutor(cpus=2, gpus=1)
    try:
        run = workspace.flow.run(wf, executor=executor)
    finally:
        executor.shutdown()
    assert run.status == "succeeded", run.error
    assert run.outputs["a"]["who"] == "import" and run.outputs["a"]["pid"] != os.getpid()


def test_resume_refuses_what_the_executor_cannot_give_before_running(workspace: Workspace) -> None:
    run = workspace.flow.run(locate, executor=LocalExecutor(mode="thread", cpus=2, gpus=1))
    assert run.status == "succeeded"
    workspace.flow.tracker.restart(run.id, "thread")  # as if it had stopped half-way
    workspace.flow.tracker.finish(run, error="stopped")
    with pytest.raises(Invalid, match="asks for 1 GPUs; this machine has 0"):
        workspace.flow.resume(run.id, executor=LocalExecutor(cpus=2, gpus=0))


def test_a_pool_that_cannot_start_fails_its_task_and_the_executor_goes_on(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = LocalExecutor(mode="thread", cpus=2, gpus=1)
    real = executor._ensure_pool
    failures = iter([OSError("too many open files")])

    def flaky(*args: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args)

    monkeypatch.setattr(executor, "_ensure_pool", flaky)
    try:
        first = workspace.flow.run(locate, params={"n": 1}, executor=executor, cache=False)
        assert first.status == "failed" and "too many open files" in (first.error or "")
        again = workspace.flow.run(locate, params={"n": 1}, executor=executor, cache=False)
        assert again.status == "succeeded", again.error
    finally:
        executor.shutdown()


def test_a_task_cancelled_at_shutdown_gives_back_its_resources_and_fails_its_future() -> None:
    from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

    from openlearner.flow.task import Task

    executor = LocalExecutor(mode="thread", cpus=2)
    task = Task("n", "n", where_am_i, None, [], {}, "", Resources(cpu=1))  # type: ignore[arg-type]
    executor._take(task.resources, +1)
    inner: Future[Any] = Future()
    inner.cancel()
    outer: Future[Any] = Future()
    executor._finish(ThreadPoolExecutor(1), task, outer, inner, None)
    assert executor._free[0] == 2
    with pytest.raises(CancelledError, match="shut down before this task ran"):
        outer.result(timeout=1)


def test_a_gpu_operator_is_refused_when_the_main_script_is_no_file(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned worker first re-runs the main script; `python -` names it <stdin>."""
    import types

    stdin_main = types.ModuleType("__main__")
    stdin_main.__file__ = "<stdin>"
    monkeypatch.setitem(sys.modules, "__main__", stdin_main)
    with pytest.raises(Invalid, match=r"re-runs this program's main script, '<stdin>'"):
        workspace.flow.run(locate, executor=LocalExecutor(cpus=2, gpus=1))


@operator(resources=Resources(cpu=1, gpu=1), cache=False)
def seen_devices_whole(i: int) -> str:
    time.sleep(0.2)  # holds its device while the other is handed out (from dispatch to the end)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


@operator(resources=Resources(cpu=1, gpu=0.5), cache=False)
def seen_devices_half(i: int) -> str:
    time.sleep(0.2)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


@workflow
def two_on_gpus(half: bool = False) -> dict:
    op = seen_devices_half if half else seen_devices_whole
    return {"a": op(1), "b": op(2)}


@pytest.mark.parametrize(("half", "expected"), [(False, {"3", "5"}), (True, {"3"})])
def test_each_gpu_task_sees_only_its_devices(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, half: bool, expected: set[str]
) -> None:
    """Two gpu=1 operators get a device each (a device is held from dispatch to the end, and
    a worker takes a second to start); two gpu=0.5 share the first."""
    from openlearner.flow.executors import local

    monkeypatch.setattr(local.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # as the machine's scheduler gave them
    executor = LocalExecutor(cpus=2)
    assert executor.devices == ["3", "5"] and executor.gpus == 2
    try:
        run = workspace.flow.run(two_on_gpus, params={"half": half}, executor=executor)
    finally:
        executor.shutdown()
    assert run.status == "succeeded", run.error
    assert set(run.outputs.values()) == expected
    assert executor._device_free == [1.0, 1.0]  # every share given back


def test_devices_are_handed_out_by_device_not_by_count() -> None:
    executor = LocalExecutor(mode="thread", cpus=8, gpus=2)
    assert executor._devices_for(0) == ()
    assert executor._devices_for(2) == (0, 1)
    executor._take(Resources(gpu=0.5), +1, (0,))
    assert executor._devices_for(1) == (1,)  # device 0 is half taken: no whole GPU there
    assert executor._devices_for(0.5) == (0,)  # but half of it is left
    assert executor._devices_for(2) is None  # two whole GPUs are not free
    executor._take(Resources(gpu=1), +1, (1,))
    assert executor._devices_for(0.75) is None and executor._devices_for(0.5) == (0,)
    assert not executor._fits(Resources(gpu=1)) and executor._fits(Resources(gpu=0.25))


@pytest.mark.parametrize("gpus", [-1, 1.5, True])
def test_a_gpu_count_that_is_no_count_is_refused(gpus: object) -> None:
    with pytest.raises(Invalid, match="gpus is a count of devices"):
        LocalExecutor(gpus=gpus)  # type: ignore[arg-type]
