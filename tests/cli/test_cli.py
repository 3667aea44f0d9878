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


@pytest.mark.parametrize(
    ("variable", "value", "phrase"),
    [
        ("OPENLEARNER_ONLINE_STORE", "cassandra", "OPENLEARNER_ONLINE_STORE='cassandra' is refused"),
        ("OPENLEARNER_REDIS_SPIN_US", "-5", "greater than or equal to 0"),
    ],
)
def test_a_setting_the_environment_gets_wrong_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, phrase: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert_one_line_error(run("--home", str(tmp_path / "ws"), "init"), 2, phrase)
    assert not (tmp_path / "ws").exists()


def test_a_validation_error_not_of_the_settings_is_not_worded_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydantic

    from openlearner.cli import main as entry

    class Other(pydantic.BaseModel):
        count: int

    def fail(*args: object, **kwargs: object) -> None:
        Other(count="many")  # type: ignore[arg-type]

    monkeypatch.setattr(entry.cli, "main", fail)
    with pytest.raises(pydantic.ValidationError, match="Other"):
        main(["init"])


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("--days", "1"), "2 to 366 days"),
        (("--days", "100000000"), "2 to 366 days"),
        (("--impressions-per-day", "10"), "between 1,000"),
        (("--impressions-per-day", "1000000000000"), "between 1,000"),
        (("--days", "300", "--impressions-per-day", "1000000"), "at most 20 million"),
        (("--requests", "100000000000"), "between 1 and 100,000"),
        (("--seed", "-1"), "non-negative"),
    ],
)
def test_demo_refuses_sizes_it_cannot_run_before_doing_any_work(
    tmp_path: Path, args: tuple[str, ...], phrase: str
) -> None:
    assert_one_line_error(run("--home", str(tmp_path / "ws"), "demo", *args), 2, phrase)
    assert not (tmp_path / "ws" / "data" / "ads_events").exists()


def test_predictor_on_a_port_in_use_says_to_choose_another(tmp_path: Path) -> None:
    import socket

    home = str(tmp_path / "ws")
    assert run("--home", home, "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        assert_one_line_error(
            run("--home", home, "predictor", "serve", "--port", port), 6, "choose another --port"
        )


def test_predictor_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    home = str(tmp_path / "ws")
    assert run("--home", home, "init").returncode == 0
    assert_one_line_error(
        run("--home", home, "predictor", "serve", "--host", "0.0.0.0"), 2, "without a token"
    )
