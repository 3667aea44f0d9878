"""``learner demo``: the whole path on simulated ads data, with a summary at the end."""

from __future__ import annotations

import time

import click

from openlearner.cli.context import open_workspace

__all__ = ["COMMANDS"]


@click.command("demo")
@click.option("--days", default=7, show_default=True, type=int, help="Simulated days (the last is held out).")
@click.option("--impressions-per-day", default=100_000, show_default=True, type=int)
@click.option("--requests", default=1000, show_default=True, type=int, help="Single-row HTTP requests timed.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.pass_context
def demo(ctx: click.Context, days: int, impressions_per_day: int, requests: int, seed: int) -> None:
    """Events → features → model → registry → served predictions, in one go."""
    from openlearner.demo import DemoConfig, run_demo

    started = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f}s] {message}")

    config = DemoConfig(days=days, impressions_per_day=impressions_per_day, requests=requests, seed=seed)
    ws = open_workspace(ctx, create=True)
    summary = run_demo(ws, config, progress=progress)
    click.echo("")
    click.echo(summary.render())


COMMANDS = [demo]
