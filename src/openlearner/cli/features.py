"""``learner features``: browse, plan, apply, materialize and read the shared feature catalog."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from openlearner.cli.context import open_workspace
from openlearner.errors import Invalid
from openlearner.features.definitions import Aggregate

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


@features.command("search")
@click.argument("text")
@click.pass_context
def search(ctx: click.Context, text: str) -> None:
    """Views whose name, features, tags, owner or description mention TEXT."""
    ws = open_workspace(ctx)
    found = ws.features.search(text)
    if not found:
        click.echo(f"no feature view mentions {text!r}")
    for view in found:
        tags = f" [{', '.join(view.tags)}]" if view.tags else ""
        click.echo(f"{view.name}{tags}  owner: {view.owner or '-'}  {view.description}")
        click.echo("  " + ", ".join(f"{view.name}:{f.name}" for f in view.features))


@features.command("describe")
@click.argument("view")
@click.pass_context
def describe(ctx: click.Context, view: str) -> None:
    """A view's definition, statistics, freshness, and the services and models that use it."""
    ws = open_workspace(ctx)
    d = ws.features.describe(view)
    v = d.view
    click.echo(f"{v.name}: {v.description or '(no description)'}")
    click.echo(
        f"  owner {v.owner or '-'}; tags {', '.join(v.tags) or '-'}; keys {', '.join(v.join_keys)}; "
        f"ttl {v.ttl or 'none'}; online {'yes' if v.online else 'no'}"
    )
    click.echo(
        f"  source {v.source.name} ({v.source.source_kind}: {v.source.location or 'in memory'}), "
        f"time column {v.source.timestamp}"
    )
    last = d.last_materialization
    if last is None:
        click.echo("  freshness: never materialized (run: learner features materialize)")
    else:
        click.echo(
            f"  freshness: values as of {last.end:%Y-%m-%d %H:%M:%S} UTC for {last.rows:,} entities "
            f"(materialized {last.at:%Y-%m-%d %H:%M:%S} UTC)"
        )
    for feature in v.features:
        what = (
            f"{feature.function}({feature.column}) over {feature.window}"
            if isinstance(feature, Aggregate)
            else f"latest {feature.column}"
        )
        stats = (last.stats if last else {}).get(feature.name)
        click.echo(f"  {v.name}:{feature.name}  {d.dtypes.get(feature.name, '?')}  {what}")
        if stats:
            click.echo("      " + "  ".join(f"{k} {_number(x)}" for k, x in stats.items()))
    click.echo(f"  feature services: {', '.join(d.services) or 'none'}")
    users = ws.registry.versions_using(v.name)
    click.echo("  models: " + (", ".join(f"{m.name} v{m.version}" for m in users) or "none"))


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


@features.command("plan")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def plan(ctx: click.Context, file: Path) -> None:
    """Show what applying the definitions in FILE would change."""
    from openlearner.features.files import definitions_from_file

    ws = open_workspace(ctx)
    for change in ws.features.plan(definitions_from_file(file)):
        click.echo(str(change))


@features.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Apply breaking changes (removed or retyped features) too.")
@click.pass_context
def apply(ctx: click.Context, file: Path, force: bool) -> None:
    """Validate the definitions in FILE against their sources and store them, all or none."""
    from openlearner.features.files import definitions_from_file

    ws = open_workspace(ctx, create=True)
    for change in ws.features.apply(definitions_from_file(file), force=force):
        click.echo(str(change))


@features.command("materialize")
@click.option("--end", default=None, help="ISO time to compute values as of (default: now, UTC).")
@click.option("--view", "views", multiple=True, help="Only this view (repeatable).")
@click.option("--full", is_flag=True, help="Recompute every entity (after late events in a source).")
@click.pass_context
def materialize(ctx: click.Context, end: str | None, views: tuple[str, ...], full: bool) -> None:
    """Write the latest feature values of online views to the online store."""
    when = None
    if end is not None:
        try:
            when = datetime.fromisoformat(end)
        except ValueError:
            raise Invalid(f"--end {end!r} is not an ISO time such as 2026-11-27T12:00:00") from None
    ws = open_workspace(ctx)
    written = ws.features.materialize(end=when, views=list(views) or None, full=full)
    if not written:
        click.echo("no online feature views to materialize")
    for name, rows in written.items():
        click.echo(f"{name}: {rows:,} entities")


@features.command("get")
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--entity",
    "entities",
    multiple=True,
    required=True,
    help="KEY=V1,V2,... (repeat for several keys); integers are read as integers.",
)
@click.pass_context
def get(ctx: click.Context, refs: tuple[str, ...], entities: tuple[str, ...]) -> None:
    """Online values of REFS ('view:feature') for the given entities."""
    keys: dict[str, list[object]] = {}
    for item in entities:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise Invalid(f"--entity {item!r} must look like user_id=1,2,3")
        keys[key] = [int(v) if v.lstrip("-").isdigit() else v for v in values.split(",")]
    ws = open_workspace(ctx)
    table = ws.features.online(list(refs), keys)
    for row in table.to_pylist():
        click.echo("  ".join(f"{k}={v}" for k, v in row.items() if not k.endswith("__event_time")))


COMMANDS = [features]
