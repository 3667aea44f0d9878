"""``learner predictor serve``: the OIP v2 server over this workspace's registry."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace

__all__ = ["COMMANDS"]


@click.group("predictor")
def predictor() -> None:
    """Real-time inference."""


@predictor.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (non-loopback needs a token)."
)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, log_level: str) -> None:
    """Serve every registered model (production alias by default) over OIP v2 REST."""
    from openlearner.predictor.server import serve as run_server

    run_server(
        open_workspace(ctx),
        host=host,
        port=port,
        log_level=log_level,
        on_listen=lambda url: click.echo(f"predictor listening on {url} (Ctrl-C to stop)"),
    )


COMMANDS = [predictor]
