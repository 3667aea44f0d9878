"""``learner runs``: tracked training runs."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace

__all__ = ["COMMANDS"]


@click.group("runs")
def runs() -> None:
    """Tracked runs."""


@runs.command("list")
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.pass_context
def list_runs(ctx: click.Context, workflow: str | None) -> None:
    """Runs, newest first."""
    ws = open_workspace(ctx)
    found = ws.flow.runs(workflow)
    if not found:
        click.echo("no runs yet")
    for run in found:
        started = f"{run.started_at:%Y-%m-%d %H:%M}" if run.started_at else "-"
        click.echo(f"{run.id}  {run.workflow}  {run.status}  {started}")


@runs.command("show")
@click.argument("run_id")
@click.pass_context
def show(ctx: click.Context, run_id: str) -> None:
    """One run's parameters and metrics."""
    ws = open_workspace(ctx)
    run = ws.flow.get(run_id)
    click.echo(f"{run.id}  {run.workflow}  {run.status}")
    click.echo("  params   " + (" ".join(f"{k}={v}" for k, v in run.params.items()) or "-"))
    click.echo("  metrics  " + (" ".join(f"{k}={v:.4f}" for k, v in sorted(run.metrics.items())) or "-"))
    if run.error:
        click.echo(f"  error    {run.error}")


COMMANDS = [runs]
