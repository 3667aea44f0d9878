"""``learner scheduler``: start scheduled and data-triggered workflows when they are due."""

from __future__ import annotations

from typing import Any

import click

from openlearner.cli.context import open_workspace
from openlearner.errors import Invalid

__all__ = ["COMMANDS", "scheduled_workflows"]


def scheduled_workflows(targets: tuple[str, ...]) -> list[Any]:
    """The workflows named (MODULE:WORKFLOW) or found in modules and files (every scheduled one)."""
    from openlearner.flow import Workflow, load_workflow
    from openlearner.flow.facade import file_workflow, load_module

    found: list[Workflow] = []
    for target in targets:
        if ":" in target:
            found.append(load_workflow(target))
            continue
        module = load_module(target)
        # Workflows of a file record the file, as load_workflow does, so their runs can resume.
        scheduled = [
            file_workflow(v, target, attr) if target.endswith(".py") else v
            for attr, v in vars(module).items()
            if isinstance(v, Workflow) and (v.schedule is not None or v.when is not None)
        ]
        if not scheduled:
            raise Invalid(f"{target} defines no workflow with a schedule or a data trigger")
        found.extend(scheduled)
    return list({w.target: w for w in found}.values())


@click.command("scheduler")
@click.argument("targets", nargs=-1, required=True)
@click.option("--once", is_flag=True, help="Start what is due now, wait for it, and exit.")
@click.option(
    "--poll", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between checks."
)
@click.option("--executor", type=click.Choice(["local", "thread", "ray"]), default=None)
@click.pass_context
def scheduler(
    ctx: click.Context, targets: tuple[str, ...], once: bool, poll: float, executor: str | None
) -> None:
    """Run the scheduled workflows in TARGETS (modules, FILE.py or MODULE:WORKFLOW) when due."""
    from openlearner.flow import Scheduler

    workflows = scheduled_workflows(targets)
    ws = open_workspace(ctx, create=True)
    runner = Scheduler(ws.flow, workflows, executor=executor)
    click.echo("scheduling " + ", ".join(w.name for w in workflows))
    if once:
        ws.flow.check_abandoned()
        started = runner.tick(wait=True)
        for due in started:
            click.echo(f"ran {due.workflow.name} ({due.reason})")
        if not started:
            click.echo("nothing is due")
        return
    try:
        runner.serve(poll=poll, log=click.echo)
    except KeyboardInterrupt:
        click.echo("scheduler stopped")


COMMANDS = [scheduler]
