"""Failures: retries with backoff, timeouts, resume after a failure and after a killed driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openlearner import Workspace
from openlearner.errors import Conflict, NotFound
from openlearner.flow import LocalExecutor, RetryPolicy, operator, workflow


def bump(path: str) -> int:
    """Count one more call in the file ``path``; returns the new count."""
    file = Path(path)
    count = int(file.read_text()) + 1 if file.exists() else 1
    file.write_text(str(count))
    return count


@operator(retries=2, backoff=0.01)
def flaky(counter: str, fail_times: int) -> int:
    attempt = bump(counter)
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@workflow
def retrying(counter: str, fail_times: int) -> int:
    return flaky(counter, fail_times)


@operator
def upstream(counter: str) -> int:
    return bump(counter)


@operator
def fragile(value: int, flag: str) -> int:
    if Path(flag).exists():
        raise RuntimeError("the flag is up")
    return value * 10


@workflow
def resumable(counter: str, flag: str) -> int:
    return fragile(upstream(counter), flag)


@operator(timeout=0.5, cache=False)
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@workflow
def too_slow(seconds: float = 30.0) -> float:
    return sleepy(seconds)


def test_retries_back_off_and_then_succeed(workspace: Workspace, tmp_path: Path) -> None:
    counter = str(tmp_path / "n")
    run = workspace.flow.run(retrying, params={"counter": counter, "fail_times": 2}, executor="thread")
    assert run.status == "succeeded" and run.outputs == 3
    (node,) = workspace.flow.operators(run.id)
    assert node.attempts == 3 and node.status == "succeeded" and node.error is None


def test_the_last_failed_attempt_fails_the_run_with_its_traceback(
    workspace: Workspace, tmp_path: Path
) -> None:
    counter = str(tmp_path / "n")
    run = workspace.flow.run(retrying, params={"counter": counter, "fail_times": 9}, executor="thread")
    assert run.status == "failed"
    assert run.error == "operator flaky failed: ConnectionError: attempt 3 failed"
    (node,) = workspace.flow.operators(run.id)
    assert node.attempts == 3 and "Traceback" in (node.error or "") and "in flaky" in (node.error or "")
    assert Path(counter).read_text() == "3"


def test_backoff_grows_exponentially() -> None:
    policy = RetryPolicy(retries=5, backoff=1.0, factor=2.0, max_backoff=5.0)
    assert [policy.delay(k) for k in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_an_operator_past_its_timeout_is_stopped(workspace: Workspace) -> None:
    executor = LocalExecutor(mode="process", cpus=1)
    try:
        run = workspace.flow.run(too_slow, executor=executor)
    finally:
        executor.shutdown()
    assert run.status == "failed" and "timeout" in (run.error or "")


def test_resume_reruns_only_what_failed(workspace: Workspace, tmp_path: Path) -> None:
    counter, flag = str(tmp_path / "n"), tmp_path / "flag"
    flag.touch()
    run = workspace.flow.run(resumable, params={"counter": counter, "flag": str(flag)}, executor="thread")
    assert run.status == "failed" and "the flag is up" in (run.error or "")
    flag.unlink()
    resumed = workspace.flow.resume(run.id)
    assert resumed.id == run.id and resumed.status == "succeeded" and resumed.outputs == 10
    assert Path(counter).read_text() == "1"  # upstream ran once
    assert {o.node: o.status for o in workspace.flow.operators(run.id)} == {
        "upstream": "succeeded",
        "fragile": "succeeded",
    }
    assert workspace.flow.resume(run.id).status == "succeeded"  # nothing left to do
    with pytest.raises(NotFound):
        workspace.flow.resume("nope")


DRIVER = """
import sys
sys.path.insert(0, {folder!r})
from openlearner import Workspace
from killable import stuck
ws = Workspace.open({home!r})
ws.flow.heartbeat = 0.2
ws.flow.run(stuck, params={{"folder": {folder!r}}}, executor="thread")
"""

KILLABLE = """
import time
from pathlib import Path
from openlearner.flow import operator, workflow

@operator
def first(folder: str) -> int:
    path = Path(folder, "first-calls")
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    return calls

@operator
def second(calls: int, folder: str) -> int:
    Path(folder, "second-started").touch()
    while Path(folder, "block").exists():
        time.sleep(0.05)
    return calls + 100

@workflow
def stuck(folder: str) -> int:
    return second(first(folder), folder)
"""


def test_a_killed_driver_is_marked_abandoned_and_resumes(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "killable.py").write_text(KILLABLE)
    (folder / "block").touch()
    script = DRIVER.format(folder=str(folder), home=str(workspace.root))
    driver = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(folder)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = workspace.flow.tracker.runs("stuck")
            done = [
                o for r in runs for o in workspace.flow.tracker.operators(r.id) if o.status == "succeeded"
            ]
            if done and (folder / "second-started").exists():
                break
            assert driver.poll() is None, "the driver ended early"
            time.sleep(0.05)
        else:
            pytest.fail("the driver never got to the second operator")
        (run,) = runs
        with pytest.raises(Conflict, match="still running"):
            workspace.flow.resume(run.id)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert workspace.flow.check_abandoned() == [run.id]
    assert workspace.flow.get(run.id).status == "abandoned"
    (folder / "block").unlink()
    sys.path.insert(0, str(folder))
    try:
        resumed = workspace.flow.resume(run.id)
    finally:
        sys.path.remove(str(folder))
    assert resumed.status == "succeeded" and resumed.outputs == 101
    assert (folder / "first-calls").read_text() == "1"


def test_a_silent_driver_elsewhere_is_abandoned_after_its_heartbeat_goes_stale(workspace: Workspace) -> None:
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from openlearner.storage.schema import runs

    run = workspace.flow.tracker.start("remote", {}, heartbeat=True)
    with workspace.db.engine.begin() as con:
        con.execute(sa.update(runs).where(runs.c.id == run.id).values(driver={"host": "elsewhere", "pid": 1}))
    assert workspace.flow.check_abandoned() == []
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert workspace.flow.check_abandoned(now=later) == [run.id]
    hand = workspace.flow.start("by-hand")
    assert workspace.flow.check_abandoned(now=later + timedelta(days=1)) == []
    assert workspace.flow.get(hand.id).status == "running"
