"""Running the predictor: an HTTP server process over a workspace, and library mode."""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid, Unavailable
from openlearner.predictor.dataplane import DataPlane
from openlearner.predictor.protocol import InferenceRequest, InferInput, to_array

if TYPE_CHECKING:
    from openlearner.workspace import Workspace

__all__ = ["Predictor", "PredictorProcess", "free_port", "serve"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    workspace: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "warning",
    on_listen: Callable[[str], Any] | None = None,
) -> None:
    """Serve every model of ``workspace`` over OIP v2 REST until interrupted.

    The socket is bound before the server starts, so a port in use is a clear error;
    ``on_listen`` is called with the base URL once it is bound.
    """
    import uvicorn

    from openlearner.predictor.rest import create_app

    token = workspace.settings.auth_token
    if not _is_loopback(host) and not token:
        raise Invalid(
            f"refusing to listen on {host} without a token; set OPENLEARNER_AUTH_TOKEN or bind 127.0.0.1"
        )
    if not 0 <= port <= 65535:
        raise Invalid(f"port {port} is out of range 0–65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it small responses wait ~40 ms on delayed
    # ACKs (asyncio sets it only on sockets it creates itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    sock.listen(2048)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(DataPlane(workspace.registry, workspace.features), auth_token=token)
    bound = sock.getsockname()[1]
    if on_listen is not None:
        on_listen(f"http://{host if ':' not in host else f'[{host}]'}:{bound}")
    config = uvicorn.Config(app, log_level=log_level, access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        workspace.close()


class Predictor:
    """Library mode: the predictor's model resolution and feature join, in-process."""

    def __init__(self, workspace: Workspace) -> None:
        self.dataplane = DataPlane(workspace.registry, workspace.features)

    def predict(
        self,
        model: str,
        *,
        entities: Mapping[str, Sequence[Any]] | None = None,
        inputs: Mapping[str, Any] | None = None,
        version: str | int | None = None,
    ) -> npt.NDArray[np.float32]:
        """Positive-class probabilities for a batch given entity keys and request inputs."""
        ref = None if version is None else str(version)
        loaded = self.dataplane.model(model, ref)
        given = {**(entities or {}), **(inputs or {})}
        needs = ", ".join(t.name for t in loaded.inputs)
        unknown = sorted(set(given) - {t.name for t in loaded.inputs})
        if unknown:
            raise Invalid(f"unknown input(s) {', '.join(unknown)}; model {model} needs {needs}")
        tensors = []
        for spec in loaded.inputs:
            if spec.name not in given:
                raise Invalid(f"missing {spec.name!r}; model {model} needs {needs}")
            # The same checks as a JSON request: no silent truncation of 1.5 to 1, no wrap-around.
            try:
                data = to_array(given[spec.name], spec.datatype)
            except (ValueError, TypeError) as exc:
                raise Invalid(f"input {spec.name!r}: {exc}") from None
            tensors.append(InferInput(spec.name, spec.datatype, list(data.shape), data))
        response = self.dataplane.infer(model, ref, InferenceRequest(tensors))
        return next(o.data for o in response.outputs if o.name == "probability")


class PredictorProcess:
    """A predictor server in a child process on a free loopback port (for demos and tests)."""

    def __init__(self, home: Path, *, port: int | None = None, startup_timeout: float = 60.0) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process it captures

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PredictorProcess:
        """Start the server and wait until ``/v2/health/ready`` answers 200."""
        import httpx

        command = [
            sys.executable,
            "-m",
            "openlearner.cli.main",
            "--home",
            str(self.home),
            "predictor",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._tail()
                self.stop()
                raise Unavailable(f"the predictor exited with status {self.process.returncode}: {tail}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        tail = self._tail()  # read before stop(), which closes the log
        self.stop()
        raise Unavailable(f"the predictor did not become ready within {self.startup_timeout:.0f} s: {tail}")

    def _tail(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "no output"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> PredictorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
