"""``learner models``: registered models, their versions and aliases."""

from __future__ import annotations

from pathlib import Path

import click

from openlearner.cli.context import open_workspace
from openlearner.storage.files import write_atomically

__all__ = ["COMMANDS"]


@click.group("models")
def models() -> None:
    """The model registry."""


@models.command("list")
@click.pass_context
def list_models(ctx: click.Context) -> None:
    """Registered models with their newest version and aliases."""
    ws = open_workspace(ctx)
    names = ws.registry.models()
    if not names:
        click.echo("no models registered yet")
    for name in names:
        versions = ws.registry.versions(name)
        aliases = ", ".join(f"{a}→{v.version}" for v in versions for a in v.aliases) or "no aliases"
        click.echo(f"{name}  versions: {len(versions)}  ({aliases})")


@models.command("versions")
@click.argument("name")
@click.pass_context
def versions(ctx: click.Context, name: str) -> None:
    """Every version of NAME."""
    ws = open_workspace(ctx)
    for v in ws.registry.versions(name):
        metrics = " ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items()))
        aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
        click.echo(
            f"{v.version}{aliases}  {v.status}  {v.created_at:%Y-%m-%d %H:%M}  {v.framework}  {metrics}"
        )


@models.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Version number (default: newest).")
@click.option("--alias", default=None, help="Alias, e.g. production.")
@click.pass_context
def show(ctx: click.Context, name: str, version: int | None, alias: str | None) -> None:
    """One version: signature, parity report, metrics and lineage."""
    ws = open_workspace(ctx)
    v = ws.registry.get(name, version=version, alias=alias)
    click.echo(f"{v.name} version {v.version} ({v.status}) aliases: {', '.join(v.aliases) or '-'}")
    click.echo(f"  artifact   sha256:{v.artifact_digest}")
    click.echo(
        f"  framework  {v.framework}; libraries: {', '.join(f'{k} {x}' for k, x in v.libraries.items())}"
    )
    click.echo("  inputs     " + ", ".join(t.describe() for t in v.client_signature.serving_inputs()))
    click.echo("  outputs    " + ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in v.signature.outputs))
    if v.signature.columns and v.signature.serving is None:
        click.echo("  columns    " + ", ".join(v.signature.columns))
    if v.feature_service:
        click.echo(f"  features   {v.feature_service.name}: {', '.join(v.feature_service.features)}")
    click.echo(
        f"  parity     max |Δp| {v.parity['max_abs_diff']:.2e} over {v.parity['rows']} rows "
        f"({'passed' if v.parity['passed'] else 'FAILED'})"
    )
    click.echo("  metrics    " + (" ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items())) or "-"))
    click.echo(f"  run        {v.run_id or '-'}; training set sha256:{v.training_set_digest or '-'}")
    click.echo(f"  created    {v.created_at:%Y-%m-%d %H:%M:%S %Z} by {v.created_by}")
    if v.tags:
        click.echo("  tags       " + " ".join(f"{k}={x}" for k, x in sorted(v.tags.items())))
    if v.serving_metadata:
        click.echo("  serving    metadata: " + ", ".join(sorted(v.serving_metadata)))


@models.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--alias", default="production", show_default=True, help="Alias to move.")
@click.option("--force", is_flag=True, help="Skip the gates (failed parity, incompatible signature).")
@click.pass_context
def promote(ctx: click.Context, name: str, version: int, alias: str, force: bool) -> None:
    """Point ALIAS of NAME at VERSION, through the promotion gates."""
    move = open_workspace(ctx).registry.promote(name, version, alias, force=force)
    if move.from_version == move.to_version:
        click.echo(f"{name} {alias}: already version {move.to_version}; nothing moved")
    else:
        click.echo(f"{name} {alias}: {_from(move.from_version)} → version {move.to_version}")


@models.command("rollback")
@click.argument("name")
@click.option("--alias", default="production", show_default=True, help="Alias to move back.")
@click.pass_context
def rollback(ctx: click.Context, name: str, alias: str) -> None:
    """Move ALIAS of NAME back to the version it pointed to before its last move."""
    move = open_workspace(ctx).registry.rollback(name, alias)
    click.echo(f"{name} {alias}: version {move.from_version} → version {move.to_version} (rolled back)")


@models.command("history")
@click.argument("name")
@click.option("--alias", default="production", show_default=True, help="Alias whose moves to list.")
@click.pass_context
def history(ctx: click.Context, name: str, alias: str) -> None:
    """Every move of ALIAS of NAME: when, who, from, to."""
    for m in open_workspace(ctx).registry.alias_history(name, alias):
        click.echo(
            f"{m.moved_at:%Y-%m-%d %H:%M:%S}  {m.moved_by}  {_from(m.from_version)} → version {m.to_version}"
        )


@models.command("archive")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
def archive(ctx: click.Context, name: str, version: int) -> None:
    """Retire VERSION of NAME (refused while an alias points to it)."""
    open_workspace(ctx).registry.archive(name, version)
    click.echo(f"{name} version {version} archived")


@models.command("export")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Version number (default: newest).")
@click.option("--alias", default=None, help="Alias, e.g. production.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write (default: NAME-VERSION.onnx here).",
)
@click.pass_context
def export(
    ctx: click.Context, name: str, version: int | None, alias: str | None, output: Path | None
) -> None:
    """Write a version's ONNX graph (sha256-verified) to a file."""
    registry = open_workspace(ctx).registry
    v = registry.get(name, version=version, alias=alias)
    graph = registry.read_graph(v)
    target = output or Path(f"{v.name}-{v.version}.onnx")
    write_atomically(target, lambda handle: handle.write(graph))
    click.echo(f"wrote {target} ({len(graph):,} bytes, sha256:{v.artifact_digest})")


def _from(version: int | None) -> str:
    return "(new)" if version is None else f"version {version}"


COMMANDS = [models]
