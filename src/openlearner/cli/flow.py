"""``learner flow``: run and resume workflows."""

from __future__ import annotations

import json
import typing
from typing import Any

import click

from openlearner.cli.context import open_workspace
from openlearner.errors import Invalid, OpenLearnerError

__all__ = ["COMMANDS", "parse_params"]


def _convert(name: str, text: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation) or annotation
    try:
        if origin is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if origin is int:
            return int(text)
        if origin is float:
            return float(text)
        if origin is str:
            return text
        if origin in (list, dict):
            return json.loads(text)
    except ValueError:
        raise Invalid(
            f"parameter {name!r} takes {getattr(origin, '__name__', origin)}, not {text!r}"
        ) from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(pairs: tuple[str, ...], annotations: dict[str, Any]) -> dict[str, Any]:
    """``("days=7", ...)`` as typed workflow parameters (per the workflow's annotations)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise Invalid(f"write parameters as -p NAME=VALUE, not {pair!r}")
        if name not in annotations:
            raise Invalid(
                f"the workflow has no parameter {name!r}; it takes {', '.join(annotations) or 'none'}"
            )
        params[name] = _convert(name, text, annotations[name])
    return params


def _tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Invalid(f"write tags as --tag KEY=VALUE, not {pair!r}")
        tags[key] = value
    return tags


def _short(value: Any) -> str:
    from openlearner.flow import Dataset, ModelArtifact

    if isinstance(value, Dataset):
        return f"Dataset {value.digest[:12] if value.digest else ''} ({value.num_rows:,} rows)"
    if isinstance(value, ModelArtifact):
        return f"ModelArtifact {value.format} {value.digest[:12] if value.digest else ''}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return repr(value)


def echo_run(run: Any) -> None:
    """Print a finished run; a failed run becomes a non-zero exit."""
    click.echo(f"run {run.id}  {run.workflow}  {run.status}")
    outputs = run.outputs if isinstance(run.outputs, dict) else {"output": run.outputs}
    for name, value in outputs.items():
        click.echo(f"  {name:<12} {_short(value)}")
    if run.status != "succeeded":
        raise OpenLearnerError(
            f"run {run.id} {run.status}: {run.error}; fix it and `learner flow resume {run.id}`"
        )


@click.group("flow")
def flow() -> None:
    """Run and resume workflows."""


@flow.command("run")
@click.argument("target")
@click.option("-p", "--param", "params", multiple=True, help="A workflow parameter, NAME=VALUE (repeatable).")
@click.option(
    "--executor", type=click.Choice(["local", "thread", "ray"]), default=None, help="Where operators run."
)
@click.option("--no-cache", is_flag=True, help="Run every operator even when a cached result matches.")
@click.option("--tag", "tags", multiple=True, help="A tag on the run, KEY=VALUE (repeatable).")
@click.pass_context
def run_command(
    ctx: click.Context,
    target: str,
    params: tuple[str, ...],
    executor: str | None,
    no_cache: bool,
    tags: tuple[str, ...],
) -> None:
    """Run the workflow TARGET (MODULE:WORKFLOW or FILE.py:WORKFLOW)."""
    from openlearner.flow import load_workflow

    wf = load_workflow(target)
    ws = open_workspace(ctx, create=True)
    run = ws.flow.run(
        wf, parse_params(params, wf.params), executor=executor, cache=not no_cache, tags=_tags(tags)
    )
    echo_run(run)


@flow.command("resume")
@click.argument("run_id")
@click.option("--executor", type=click.Choice(["local", "thread", "ray"]), default=None)
@click.pass_context
def resume(ctx: click.Context, run_id: str, executor: str | None) -> None:
    """Re-run what failed or never ran in RUN_ID, reusing what succeeded."""
    ws = open_workspace(ctx)
    echo_run(ws.flow.resume(run_id, executor=executor))


COMMANDS = [flow]
