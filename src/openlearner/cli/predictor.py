"""``learner predictor serve``: the OIP v2 server over this workspace's registry."""

from __future__ import annotations

import click

from openlearner.cli.context import open_workspace
from openlearner.errors import Invalid

__all__ = ["COMMANDS"]


@click.group("predictor")
def predictor() -> None:
    """Real-time inference."""


@predictor.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (non-loopback needs a token)."
)
@click.option("--port", default=8080, show_default=True, type=int, help="REST (HTTP) port.")
@click.option("--grpc-port", type=int, default=None, help="Also serve OIP v2 gRPC on this port.")
@click.option(
    "--workers", default=1, show_default=True, type=int, help="Server processes sharing the port(s)."
)
@click.option(
    "--max-batch-size", default=64, show_default=True, type=int, help="Rows one batched model run may take."
)
@click.option(
    "--max-delay-ms",
    default=1.0,
    show_default=True,
    type=float,
    help="How long the oldest queued request waits for others to batch with.",
)
@click.option(
    "--max-queue",
    default=256,
    show_default=True,
    type=int,
    help="Requests that may wait per model version; beyond that, 503 with Retry-After.",
)
@click.option(
    "--canary-percent",
    default=10.0,
    show_default=True,
    type=float,
    help="Share of default-alias traffic a model's 'canary' alias takes.",
)
@click.option(
    "--log-sample-rate",
    default=0.01,
    show_default=True,
    type=float,
    help="Fraction of requests written to the prediction log (0 turns it off).",
)
@click.option(
    "--strict", is_flag=True, help="Refuse rows without fresh online features instead of serving defaults."
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    grpc_port: int | None,
    workers: int,
    max_batch_size: int,
    max_delay_ms: float,
    max_queue: int,
    canary_percent: float,
    log_sample_rate: float,
    strict: bool,
    log_level: str,
) -> None:
    """Serve every registered model (production alias by default) over OIP v2."""
    from openlearner.predictor.batching import BatchSettings
    from openlearner.predictor.server import LISTENING, ServeOptions
    from openlearner.predictor.server import serve as run_server

    options = ServeOptions(
        batching=BatchSettings(max_batch_size, max_delay_ms / 1000, max_queue),
        canary_percent=canary_percent,
        log_sample_rate=log_sample_rate,
        strict=strict,
    )
    if grpc_port == 0:
        raise Invalid("--grpc-port 0 would listen on a port this command cannot tell you; give a port number")
    grpc = f", gRPC on port {grpc_port}" if grpc_port is not None else ""
    run_server(
        open_workspace(ctx),
        host=host,
        port=port,
        grpc_port=grpc_port,
        workers=workers,
        options=options,
        log_level=log_level,
        on_listen=lambda url: click.echo(f"{LISTENING} {url}{grpc} (Ctrl-C to stop)"),
    )


COMMANDS = [predictor]
