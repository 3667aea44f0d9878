"""``learner flow``, ``learner runs`` and ``learner scheduler`` end to end, including bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from openlearner import Workspace
from openlearner.cli.main import main

FLOWS = """
from pathlib import Path
from openlearner.flow import operator, workflow

@operator
def grow(days: int, rate: float, flag: str) -> float:
    if Path(flag).exists():
        raise RuntimeError("flag raised")
    return days * rate

@workflow
def growth(days: int = 7, rate: float = 0.5, flag: str = "/nonexistent") -> dict:
    return {"metrics": {"size": grow(days, rate, flag)}}

@workflow(schedule="every 15m")
def ticking() -> float:
    return grow(1, 1.0, "/nonexistent")
"""


@pytest.fixture
def flows(tmp_path: Path) -> str:
    path = tmp_path / "flows.py"
    path.write_text(FLOWS)
    return str(path)


def learner(home: Path, *args: str) -> int:
    return main(["--home", str(home), *args])


def run_id(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("run "))


def test_run_list_show_compare_and_resume(
    flows: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "ws"
    assert (
        learner(
            home, "flow", "run", f"{flows}:growth", "-p", "days=3", "--executor", "thread", "--tag", "who=me"
        )
        == 0
    )
    out = capsys.readouterr().out
    first = run_id(out)
    assert "succeeded" in out and "size: 1.5" in out
    with Workspace.open(home) as ws:  # the file is recorded, so another process can resume the run
        assert ws.flow.get(first).target == f"{Path(flows).resolve()}:growth"
    assert (
        learner(home, "flow", "run", f"{flows}:growth", "-p", "rate=2", "--executor", "thread", "--no-cache")
        == 0
    )
    second = run_id(capsys.readouterr().out)
    assert learner(home, "runs", "list", "--workflow", "growth") == 0
    listed = capsys.readouterr().out
    assert first in listed and second in listed
    assert learner(home, "runs", "show", first) == 0
    shown = capsys.readouterr().out
    assert "days=3" in shown and "who=me" in shown and "grow" in shown and "attempts=1" in shown
    assert learner(home, "runs", "compare", first, second) == 0
    table = capsys.readouterr().out
    assert "*days" in table and "*rate" in table and "size" in table

    flag = tmp_path / "flag"
    flag.touch()
    assert learner(home, "flow", "run", f"{flows}:growth", "-p", f"flag={flag}", "--executor", "thread") == 1
    captured = capsys.readouterr()
    failed = run_id(captured.out)
    assert "flag raised" in captured.err and f"learner flow resume {failed}" in captured.err
    assert learner(home, "runs", "show", failed) == 0
    assert "traceback of grow" in capsys.readouterr().out
    flag.unlink()
    assert learner(home, "flow", "resume", failed) == 0
    assert "succeeded" in capsys.readouterr().out


def test_bad_input_is_one_line_and_a_non_zero_exit(
    flows: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "ws"
    cases = [
        (["flow", "run", "no_such_module_q:wf"], "cannot import"),
        (["flow", "run", f"{flows}:missing"], "is not a workflow"),
        (["flow", "run", f"{flows}:growth", "-p", "days=seven"], "takes int, not 'seven'"),
        (["flow", "run", f"{flows}:growth", "-p", "weeks=1"], "no parameter 'weeks'"),
        (["flow", "run", f"{flows}:growth", "-p", "days"], "NAME=VALUE"),
        (["runs", "show", "nope"], "no run 'nope'"),
        (["scheduler", "openlearner.flow"], "no workflow with a schedule"),
    ]
    for args, message in cases:
        assert learner(home, *args) != 0, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (args, err)


def test_scheduler_once_runs_what_is_due(
    flows: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "ws"
    assert learner(home, "scheduler", flows, "--once", "--executor", "thread") == 0
    assert "ran ticking" in capsys.readouterr().out
    assert learner(home, "scheduler", flows, "--once", "--executor", "thread") == 0
    assert "nothing is due" in capsys.readouterr().out
    assert learner(home, "runs", "list", "--workflow", "ticking") == 0
    assert "succeeded" in capsys.readouterr().out
