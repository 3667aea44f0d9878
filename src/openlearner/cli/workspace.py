"""``learner init``: create a workspace."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]


@click.command("init")
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create a workspace (or migrate an existing one to this version's schema)."""
    from openlearner.workspace import Workspace

    ws = Workspace.init(ctx.find_root().params.get("home"))
    ctx.call_on_close(ws.close)
    click.echo(f"workspace ready at {ws.root} (metadata schema {ws.db.current_revision()})")


COMMANDS = [init]
