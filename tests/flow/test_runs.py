"""Run tracking."""

from __future__ import annotations

import pytest

from openlearner import Workspace
from openlearner.errors import Invalid, NotFound


def test_track_records_success_with_params_and_metrics(workspace: Workspace) -> None:
    with workspace.flow.track("ads_ctr", {"days": 7, "lr": 0.1}) as run:
        workspace.flow.log_metrics(run, {"ne": 0.84, "auc": 0.8})
    stored = workspace.flow.get(run.id)
    assert stored.status == "succeeded" and stored.ended_at is not None
    assert stored.params == {"days": 7, "lr": 0.1}
    assert stored.metrics == {"ne": 0.84, "auc": 0.8}


def test_track_records_failure_and_reraises(workspace: Workspace) -> None:
    with pytest.raises(RuntimeError, match="boom"), workspace.flow.track("ads_ctr") as run:
        raise RuntimeError("boom")
    stored = workspace.flow.get(run.id)
    assert stored.status == "failed" and stored.error == "RuntimeError: boom"


def test_runs_are_listed_newest_first_and_filtered(workspace: Workspace) -> None:
    first = workspace.flow.start("a")
    second = workspace.flow.start("b")
    assert [r.id for r in workspace.flow.runs()] == [second.id, first.id]
    assert [r.id for r in workspace.flow.runs("a")] == [first.id]


def test_bad_inputs(workspace: Workspace) -> None:
    with pytest.raises(NotFound, match="no run"):
        workspace.flow.get("missing")
    with pytest.raises(Invalid, match="workflow"):
        workspace.flow.start("")
    with pytest.raises(Invalid, match="parameter 'obj'"):
        workspace.flow.start("w", {"obj": object()})
    run = workspace.flow.start("w")
    with pytest.raises(Invalid, match="finite number"):
        workspace.flow.log_metrics(run, {"ne": float("nan")})
    assert workspace.flow.get(run.id).metrics == {}


_HEAP_CHECK = """
import gc

from openlearner.flow.engine import settled_heap


def check(ok, what):
    if not ok:  # not assert: the check must hold under python -O too
        raise SystemExit(what)


check(gc.get_freeze_count() == 0, "a fresh interpreter froze nothing")
with settled_heap():
    check(gc.get_freeze_count() > 0, "a run freezes the heap it found")
check(gc.get_freeze_count() == 0, "and hands it back")
gc.freeze()  # a process that froze its own objects (a pre-fork server, say) is left as it is
frozen = gc.get_freeze_count()
with settled_heap():
    check(gc.get_freeze_count() == frozen, "a frozen heap is left as it is")
check(gc.get_freeze_count() == frozen, "and stays so")
gc.unfreeze()
gc.disable()
with settled_heap():
    check(gc.get_freeze_count() == 0, "with collection off, nothing is frozen")
print("ok")
"""


def test_a_run_leaves_the_heap_it_found_out_of_full_collections_and_hands_it_back() -> None:
    """In a fresh interpreter: the tests before this one may have frozen this process's heap
    (an in-process predictor server does), and the check starts from a heap nobody froze."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _HEAP_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
