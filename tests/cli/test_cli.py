"""The ``learner`` command: user mistakes are one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openlearner.cli.main import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``learner`` in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "openlearner.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, phrase: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and phrase in lines[0]
    assert "Traceback" not in result.stderr


def test_commands_on_a_missing_workspace_say_how_to_create_one(tmp_path: Path) -> None:
    result = run("--home", str(tmp_path / "none"), "models", "list")
    assert_one_line_error(result, 3, "learner init")
    assert not (tmp_path / "none").exists()


def test_init_then_browse_an_empty_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "ws")
    assert main(["--home", home, "init"]) == 0
    assert "workspace ready" in capsys.readouterr().out
    assert main(["--home", home, "models", "list"]) == 0
    assert "no models registered yet" in capsys.readouterr().out
    assert main(["--home", home, "runs", "list"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    assert main(["--home", home, "features", "list"]) == 0
    assert "no feature views yet" in capsys.readouterr().out


def test_unknown_model_and_run_are_one_line_not_found(tmp_path: Path) -> None:
    home = str(tmp_path / "ws")
    assert run("--home", home, "init").returncode == 0
    assert_one_line_error(run("--home", home, "models", "show", "ads_ctr"), 3, "no model 'ads_ctr'")
    assert_one_line_error(run("--home", home, "runs", "show", "abc"), 3, "no run 'abc'")


def test_usage_mistakes_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run("--home", str(tmp_path), "models", "show"), 2, "Missing argument")
    assert_one_line_error(run("no-such-command"), 2, "No such command")
    assert_one_line_error(run("demo", "--days", "many"), 2, "'many' is not a valid integer")


def test_demo_refuses_sizes_it_cannot_learn_from(tmp_path: Path) -> None:
    assert_one_line_error(run("--home", str(tmp_path / "ws"), "demo", "--days", "1"), 2, "at least 2 days")


def test_predictor_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    home = str(tmp_path / "ws")
    assert run("--home", home, "init").returncode == 0
    assert_one_line_error(
        run("--home", home, "predictor", "serve", "--host", "0.0.0.0"), 2, "without a token"
    )
