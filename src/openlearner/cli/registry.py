"""``learner registry``: disaster-recovery groundwork (replicate to a second store, verify artifacts)."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace
from openlearner.errors import Conflict, Corrupt

__all__ = ["COMMANDS"]


@click.group("registry")
def registry() -> None:
    """The registry as a whole: replicas and integrity."""


@registry.command("replicate")
@click.option(
    "--to", "to", default=None, help="Replica folder (meta.db and artifacts/ inside, created if missing)."
)
@click.option("--database-url", default=None, help="Replica metadata database URL (instead of the folder's).")
@click.option("--artifact-uri", default=None, help="Replica artifact store: a folder or s3://bucket/prefix.")
@click.pass_context
def replicate(ctx: click.Context, to: str | None, database_url: str | None, artifact_uri: str | None) -> None:
    """Copy models, versions, aliases, runs and their artifacts to a replica; a rerun copies only what is new."""
    from openlearner.registry.replication import open_replica

    ws = open_workspace(ctx)
    target = open_replica(to, database_url, artifact_uri)
    try:
        report = ws.registry.replicate(target)
    finally:
        target.db.dispose()
    click.echo(
        f"replicated: {report.versions_copied} version(s), {report.artifacts_copied} artifact(s), "
        f"{report.alias_moves_copied} alias move(s), {report.rows_copied} other row(s)"
    )
    for problem in report.problems:
        click.echo(f"  problem: {problem}")
    if not report.ok:
        raise Conflict(f"{len(report.problems)} problem(s) kept parts from the replica; see above")


@registry.command("verify")
@click.option("--repair-from", default=None, help="Replica folder to copy intact artifacts back from.")
@click.option("--database-url", default=None, help="Replica metadata database URL (with --artifact-uri).")
@click.option("--artifact-uri", default=None, help="Replica artifact store: a folder or s3://bucket/prefix.")
@click.pass_context
def verify(
    ctx: click.Context, repair_from: str | None, database_url: str | None, artifact_uri: str | None
) -> None:
    """Re-hash every stored artifact (graphs, run values); exit non-zero if any is missing or corrupt."""
    from openlearner.registry.replication import open_replica

    ws = open_workspace(ctx)
    replica = open_replica(repair_from, database_url, artifact_uri) if (repair_from or database_url) else None
    try:
        report = ws.registry.verify(replica)
    finally:
        if replica is not None:
            replica.db.dispose()
    for p in report.repaired:
        click.echo(f"  repaired: sha256:{p.digest} (used by {', '.join(p.versions)})")
    for kind, problems in (("missing", report.missing), ("corrupt", report.corrupt)):
        for p in problems:
            click.echo(f"  {kind}: sha256:{p.digest} (used by {', '.join(p.versions)})")
    if not report.ok:
        raise Corrupt(
            f"{len(report.missing)} artifact(s) missing and {len(report.corrupt)} corrupt of {report.checked}; "
            "restore them from a replica: learner registry verify --repair-from REPLICA"
        )
    click.echo(f"verified {report.checked} artifact(s): all present and intact")


COMMANDS = [registry]
