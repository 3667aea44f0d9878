"""``learner models``: registered models, their versions and aliases."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace

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
    click.echo(
        "  inputs     " + ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in v.signature.serving_inputs())
    )
    click.echo("  outputs    " + ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in v.signature.outputs))
    if v.feature_service:
        click.echo(f"  features   {v.feature_service.name}: {', '.join(v.feature_service.features)}")
    click.echo(
        f"  parity     max |Δp| {v.parity['max_abs_diff']:.2e} over {v.parity['rows']} rows "
        f"({'passed' if v.parity['passed'] else 'FAILED'})"
    )
    click.echo("  metrics    " + (" ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items())) or "-"))
    click.echo(f"  run        {v.run_id or '-'}; training set sha256:{v.training_set_digest or '-'}")
    click.echo(f"  created    {v.created_at:%Y-%m-%d %H:%M:%S %Z} by {v.created_by}")


COMMANDS = [models]
