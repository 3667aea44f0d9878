"""``learner runs``: tracked runs, their operators and metrics, side by side."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace

__all__ = ["COMMANDS"]


@click.group("runs")
def runs() -> None:
    """Tracked runs."""


@runs.command("list")
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status", default=None, help="Only runs with this status (running, succeeded, failed, abandoned)."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def list_runs(ctx: click.Context, workflow: str | None, status: str | None, limit: int) -> None:
    """Runs, newest first."""
    ws = open_workspace(ctx)
    found = ws.flow.runs(workflow, status=status, limit=limit)
    if not found:
        click.echo("no runs yet")
    for run in found:
        started = f"{run.started_at:%Y-%m-%d %H:%M}" if run.started_at else "-"
        seconds = (
            f"{(run.ended_at - run.started_at).total_seconds():.1f}s"
            if run.ended_at and run.started_at
            else "-"
        )
        click.echo(f"{run.id}  {run.workflow}  {run.status}  {started}  {seconds}")


@runs.command("show")
@click.argument("run_id")
@click.pass_context
def show(ctx: click.Context, run_id: str) -> None:
    """One run: parameters, metrics, tags, and each operator's status, attempts, cache use and time."""
    ws = open_workspace(ctx)
    ws.flow.check_abandoned()
    run = ws.flow.get(run_id)
    click.echo(f"{run.id}  {run.workflow}  {run.status}")
    click.echo("  params   " + (" ".join(f"{k}={v}" for k, v in run.params.items()) or "-"))
    click.echo("  metrics  " + (" ".join(f"{k}={v:.4f}" for k, v in sorted(run.metrics.items())) or "-"))
    if run.tags:
        click.echo("  tags     " + " ".join(f"{k}={v}" for k, v in sorted(run.tags.items())))
    if run.git_commit:
        click.echo(f"  commit   {run.git_commit}")
    if run.executor:
        click.echo(f"  executor {run.executor}")
    if run.error:
        click.echo(f"  error    {run.error}")
    operators = ws.flow.operators(run_id)
    if operators:
        click.echo("  operators")
        for op in operators:
            took = (
                f"{(op.ended_at - op.started_at).total_seconds():.2f}s"
                if op.ended_at and op.started_at
                else "-"
            )
            cached = "cached" if op.cache_hit else ""
            click.echo(
                f"    {op.node:<24} {op.status:<10} attempts={op.attempts} {took:>8} {cached}".rstrip()
            )
        failed = [op for op in operators if op.status == "failed" and op.error]
        for op in failed:
            click.echo(f"  traceback of {op.node}:")
            for line in (op.error or "").rstrip().splitlines():
                click.echo(f"    {line}")


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.pass_context
def compare(ctx: click.Context, run_ids: tuple[str, ...]) -> None:
    """Parameters (differing ones marked *) and metrics of runs side by side."""
    ws = open_workspace(ctx)
    click.echo(ws.flow.compare(list(run_ids)).render())


COMMANDS = [runs]
