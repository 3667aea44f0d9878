"""``learner features``: browse the shared feature catalog."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace

__all__ = ["COMMANDS"]


@click.group("features")
def features() -> None:
    """The feature catalog."""


@features.command("list")
@click.pass_context
def list_features(ctx: click.Context) -> None:
    """Every feature view and its features."""
    ws = open_workspace(ctx)
    views = ws.features.views()
    if not views:
        click.echo("no feature views yet; define them in Python and apply them (see docs/features.md)")
    for view in views:
        keys = ", ".join(view.join_keys)
        click.echo(f"{view.name}  (keys: {keys}; ttl: {view.ttl or 'none'}; owner: {view.owner or '-'})")
        for feature in view.features:
            click.echo(f"  {view.name}:{feature.name}")
    ws.close()


COMMANDS = [features]
