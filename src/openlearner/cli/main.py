"""Entry point of ``learner``: errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from pydantic import ValidationError

from openlearner.errors import Invalid, OpenLearnerError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Workspace folder (default: $OPENLEARNER_HOME or ./.openlearner).",
)
@click.version_option(package_name="openlearner")
def cli(home: Path | None) -> None:
    """OpenLearner: features, training workflows, a model registry and real-time prediction."""


def _register_commands() -> None:
    from openlearner.cli import demo, features, flow, models, predictor, registry, runs, scheduler, workspace

    for module in (workspace, demo, features, models, registry, flow, runs, scheduler, predictor):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Run ``learner``; returns the exit status."""
    try:
        cli.main(args=argv, prog_name="learner", standalone_mode=False)
    except OpenLearnerError as exc:
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except ValidationError as exc:
        if exc.title != "Settings":
            raise  # not ours to word: a model of the user's own code
        click.echo(f"error: {_settings_problem(exc)}", err=True)  # an OPENLEARNER_* variable refused
        return Invalid.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "learner"
        click.echo(f"error: {_one_line(exc.format_message())} (see: {command} --help)", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    return 0


def _settings_problem(exc: ValidationError) -> str:
    """Each refused setting as its environment variable, what was given and what is expected."""
    problems = []
    for error in exc.errors():
        name = "OPENLEARNER_" + "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{name}={error.get('input')!r} is refused: {error['msg']}")
    return _one_line("; ".join(problems) + "; fix or unset the variable")


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
