"""Running the predictor: an HTTP server process over a workspace, and library mode."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from openlearner.errors import Invalid, Unavailable
from openlearner.predictor.batching import BatchSettings
from openlearner.predictor.dataplane import DataPlane, LoadedModel
from openlearner.predictor.predictionlog import PredictionLog
from openlearner.predictor.protocol import InferenceRequest, InferInput, to_array
from openlearner.predictor.rollouts import RolloutSettings

if TYPE_CHECKING:
    from openlearner.config import Settings
    from openlearner.workspace import Workspace

__all__ = [
    "MAIN_OUTPUTS",
    "Predictor",
    "PredictorProcess",
    "ServeOptions",
    "build_dataplane",
    "free_port",
    "serve",
]

log = logging.getLogger("openlearner.predictor")
MAIN_OUTPUTS = ("probability", "probabilities", "prediction", "score")
"""The output :meth:`Predictor.predict` returns, the first a model has."""
GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"
"""What a serving process sets ``GRPC_EXPERIMENTS`` to before it imports grpc, unless it is
set already: grpc's sockets are then read by the thread that polls the server's completion
queue instead of by its EventEngine threads, one thread hop less for every event of every
call. On the benchmark's 2-core machine, with the server on one core, a threaded gRPC server
answering every call with the same bytes served 5,430-5,600 calls a second this way against
5,050-5,250 (two interleaved windows each; see ``benchmarks/BENCHMARKS.md``). Set
``GRPC_EXPERIMENTS`` (even to an empty string) to keep grpc's default."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a bearer token (REST and gRPC alike)."""
    if token or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise Invalid(
        f"refusing to listen on {host} without a token; set OPENLEARNER_AUTH_TOKEN or bind 127.0.0.1"
    )


@dataclass(frozen=True)
class ServeOptions:
    """How a predictor serves: batching, rollouts, the prediction log and strictness."""

    batching: BatchSettings = field(default_factory=BatchSettings)
    canary_percent: float = 10.0
    """Share of a model's default traffic its ``canary`` alias takes (a version tag may override)."""
    log_sample_rate: float = 0.01
    """Fraction of requests written to the prediction log (``<home>/data/predictions``)."""
    strict: bool = False
    """Refuse rows whose entities have no fresh online features, instead of serving defaults."""

    def __post_init__(self) -> None:
        if not 0 <= self.log_sample_rate <= 1:
            raise Invalid(
                f"the prediction log's sample rate is a fraction in [0, 1], not {self.log_sample_rate}"
            )
        RolloutSettings(canary_percent=self.canary_percent)  # checks the percentage


RESTART_BACKOFF_LIMIT = 30.0
"""Seconds: the longest the ``--workers`` supervisor waits before trying a replacement again."""
LISTENING = "predictor listening on"
"""How ``learner predictor serve``'s line begins once every port is bound and, with
``--workers``, every worker has started (:class:`PredictorProcess` waits for it)."""
GRACEFUL_SECONDS = 10
"""A stopping server waits this long for requests in flight, then closes their connections."""
WORKER_JOIN_SECONDS = GRACEFUL_SECONDS + 5
"""How long the ``--workers`` supervisor waits for a stopping worker before killing it."""


def build_dataplane(workspace: Workspace, options: ServeOptions | None = None) -> DataPlane:
    """A data plane over ``workspace``'s registry and Feature Store, with its prediction log."""
    options = options or ServeOptions()
    log = None
    if options.log_sample_rate > 0:
        log = PredictionLog(workspace.settings.data_dir / "predictions", sample_rate=options.log_sample_rate)
    return DataPlane(
        workspace.registry,
        workspace.features,
        batching=options.batching,
        rollouts=RolloutSettings(canary_percent=options.canary_percent),
        prediction_log=log,
        strict=options.strict,
        background_refresh=True,  # no request waits on the registry once its model is served
    )


def _listen(host: str, port: int) -> socket.socket:
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
    return sock


def choose_grpc_engine() -> bool:
    """Set ``GRPC_EXPERIMENTS`` to :data:`GRPC_EXPERIMENTS` for this process, unless it is set,
    grpc is imported already (it reads the variable once) or grpcio is older than 1.85 (whose
    experiments these are; an older one may not know them); whether it did."""
    if "grpc" in sys.modules or "GRPC_EXPERIMENTS" in os.environ or _grpcio_release() < (1, 85):
        return False
    os.environ["GRPC_EXPERIMENTS"] = GRPC_EXPERIMENTS
    return True


def _grpcio_release() -> tuple[int, int]:
    """grpcio's (major, minor), read without importing it; (0, 0) when unknown."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = version("grpcio").split(".")[:2]
        return int(major), int(minor)
    except (PackageNotFoundError, ValueError):
        return (0, 0)


def serve(
    workspace: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    grpc_port: int | None = None,
    workers: int = 1,
    options: ServeOptions | None = None,
    log_level: str = "warning",
    on_listen: Callable[[str], Any] | None = None,
) -> None:
    """Serve every model of ``workspace`` over OIP v2 REST (and gRPC on ``grpc_port``) until stopped.

    The socket is bound before the server starts, so a port in use is a clear error;
    ``on_listen`` is called with the base URL once it is bound. With ``workers`` > 1 that
    socket is shared by as many processes, each with its own models and queues (the
    kernel spreads connections over them; gRPC shares its port with SO_REUSEPORT).
    """
    token = workspace.settings.auth_token
    check_bind(host, token)
    for label, number in (("port", port), ("gRPC port", grpc_port)):
        if number is not None and not 0 <= number <= 65535:
            raise Invalid(f"{label} {number} is out of range 0–65535")
    if workers < 1:
        raise Invalid(f"--workers must be at least 1, not {workers}")
    if workers > 1 and grpc_port == 0:
        raise Invalid("with several workers give a fixed --grpc-port (0 would give each worker its own)")
    sock = _listen(host, port)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"

    def listening() -> None:  # once gRPC is bound too: a port in use is an error, not this line
        if on_listen is not None:
            on_listen(url)

    options = options or ServeOptions()
    try:
        if workers == 1:
            _serve_here(
                workspace, sock, host, grpc_port, options, log_level, reuse_port=False, on_ready=listening
            )
        else:
            _supervise(workspace, sock, host, grpc_port, options, log_level, workers, listening)
    finally:
        sock.close()
        workspace.close()


def _serve_here(
    workspace: Workspace,
    sock: socket.socket,
    host: str,
    grpc_port: int | None,
    options: ServeOptions,
    log_level: str,
    *,
    reuse_port: bool,
    on_ready: Callable[[], Any] | None = None,
    on_started: Callable[[], Any] | None = None,
) -> None:
    """Run one server process on ``sock`` (and gRPC) over one data plane. ``on_ready`` is
    called once both listen, ``on_started`` once the server has started too (its startup,
    which loads the production models, succeeded)."""
    import uvicorn

    from openlearner.predictor.http import protocol_for
    from openlearner.predictor.rest import create_app

    token = workspace.settings.auth_token
    # Batch workers and the event loop share the GIL: hand it over within 0.5 ms, not the
    # default 5 ms, or a finished batch waits that long for the loop to answer it.
    sys.setswitchinterval(0.0005)
    dataplane = build_dataplane(workspace, options)
    grpc_server = None
    if grpc_port is not None:
        choose_grpc_engine()
        from openlearner.predictor.grpc import GrpcServer

        grpc_server = GrpcServer(dataplane, host, grpc_port, token, reuse_port=reuse_port).start()
        log.info("gRPC listening on %s", grpc_server.address)
    app = create_app(dataplane, auth_token=token, close_on_shutdown=False)
    # No X-Forwarded-* rewriting (the predictor never uses client addresses) and no Server
    # header; inference requests answered from the HTTP parser's callbacks (predictor.http).
    config = uvicorn.Config(
        app,
        http=protocol_for(app),
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # A client holding a half-sent request must not keep a stopping server up (nor
        # the gRPC server and the prediction log's last write waiting behind it).
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    # What is built by now (modules, the data plane) lives as long as the server: keep it out
    # of the cyclic collector's full passes, whose pauses would otherwise land in the tail.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready()
    try:
        _uvicorn_server(config, on_started).run(sockets=[sock])
    finally:
        if grpc_server is not None:
            grpc_server.stop()
        dataplane.close()


def _uvicorn_server(config: Any, on_started: Callable[[], Any] | None) -> Any:
    """uvicorn's server for ``config``, telling ``on_started`` once its startup (the lifespan,
    which loads the production models) has succeeded. uvicorn is imported only to serve."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit and on_started is not None:
                on_started()

    return Server(config)


def _worker(
    settings: Settings,
    sock: socket.socket,
    host: str,
    grpc_port: int | None,
    options: ServeOptions,
    log_level: str,
    ready: Any,
    failures: Any,
) -> None:
    """A worker process: its own workspace connections and data plane on the shared socket.

    Sets ``ready`` (an Event) once it has started (listening, production models loaded);
    should it fail before that, puts why on ``failures`` (a queue) for the supervisor."""
    from openlearner.workspace import Workspace

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        workspace = Workspace.open(settings=settings, create=False)
        try:
            _serve_here(
                workspace, sock, host, grpc_port, options, log_level, reuse_port=True, on_started=ready.set
            )
        finally:
            workspace.close()
    except BaseException as exc:  # (uvicorn exits with SystemExit when its startup fails)
        if not ready.is_set():
            failures.put("its startup failed (see its log)" if isinstance(exc, SystemExit) else str(exc))
        raise


def _supervise(
    workspace: Workspace,
    sock: socket.socket,
    host: str,
    grpc_port: int | None,
    options: ServeOptions,
    log_level: str,
    workers: int,
    on_ready: Callable[[], Any] | None = None,
) -> None:
    """Start ``workers`` processes on ``sock``, replace any that dies, stop them all on a signal.

    Until every worker has started, a worker that exits before starting (a gRPC port in use,
    a workspace it cannot open) would fail the same way again: all stop, and
    :class:`Unavailable` says why. After that, a worker that dies is replaced at once, and a
    replacement that fails to start is tried again later, waiting twice as long each time
    (up to :data:`RESTART_BACKOFF_LIMIT`). ``on_ready`` is called once every worker has started."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    failures = context.SimpleQueue()
    stopping = threading.Event()

    def stop(signum: int, _: Any) -> None:
        stopping.set()

    def started() -> tuple[Any, Any]:
        ready = context.Event()
        args = (workspace.settings, sock, host, grpc_port, options, log_level, ready, failures)
        process = context.Process(target=_worker, args=args, daemon=False)
        process.start()
        return process, ready

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    processes = []
    announced = False
    retry: dict[int, float] = {}  # worker slot → when to try its replacement again
    backoff = 0.0
    try:
        processes = [started() for _ in range(workers)]
        while not stopping.wait(0.5):
            now = time.monotonic()
            for i, (process, ready) in enumerate(processes):
                if i in retry:
                    if now >= retry[i]:
                        del retry[i]
                        processes[i] = started()
                    continue
                if process.exitcode is None or stopping.is_set():
                    continue
                if ready.is_set():  # it served: replace it at once
                    backoff = 0.0
                    log.error(
                        "worker %s exited with status %s; starting another", process.pid, process.exitcode
                    )
                    processes[i] = started()
                    continue
                why = failures.get() if not failures.empty() else f"exit status {process.exitcode}"
                if not announced:
                    raise Unavailable(f"a predictor worker could not start: {why}")
                backoff = min(max(2 * backoff, 1.0), RESTART_BACKOFF_LIMIT)
                log.error("a replacement worker could not start (%s); trying again in %.0f s", why, backoff)
                retry[i] = now + backoff
            if not announced and all(ready.is_set() for _, ready in processes):
                announced = True
                if on_ready is not None:
                    on_ready()
    finally:
        for process, _ in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process, _ in processes:
            process.join(timeout=WORKER_JOIN_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Predictor:
    """Library mode: the predictor's model resolution and feature join, in-process."""

    def __init__(self, workspace: Workspace, *, strict: bool = False) -> None:
        self.dataplane = DataPlane(workspace.registry, workspace.features, strict=strict)

    def predict(
        self,
        model: str,
        *,
        entities: Mapping[str, Sequence[Any]] | None = None,
        inputs: Mapping[str, Any] | None = None,
        version: str | int | None = None,
    ) -> npt.NDArray[Any]:
        """The model's main output for a batch given entity keys and request inputs.

        That is the positive-class ``probability`` of a binary classifier, ``probabilities``
        of a multi-class one, ``prediction`` of a regressor, ``score`` of an anomaly
        detector; :meth:`predict_all` gives every output.
        """
        outputs = self.predict_all(model, entities=entities, inputs=inputs, version=version)
        for name in MAIN_OUTPUTS:
            if name in outputs:
                return outputs[name]
        return next(iter(outputs.values()))

    def predict_all(
        self,
        model: str,
        *,
        entities: Mapping[str, Sequence[Any]] | None = None,
        inputs: Mapping[str, Any] | None = None,
        version: str | int | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Every output of the model by name, for a batch given entity keys and request inputs."""
        ref = None if version is None else str(version)
        given = {**(entities or {}), **(inputs or {})}
        asked = self.dataplane.model(model, ref)
        request = _request_for(asked, given)
        route = self.dataplane.route(model, ref, request)
        if route.model is not asked:  # a canary, which may read other inputs or datatypes
            request = _request_for(route.model, given)
        response = self.dataplane.infer(model, ref, request, route=route)
        return {o.name: o.data for o in response.outputs}


def _request_for(loaded: LoadedModel, given: Mapping[str, Any]) -> InferenceRequest:
    """A request of ``given`` arrays for ``loaded``'s inputs, with a JSON request's checks."""
    needs = ", ".join(t.name for t in loaded.inputs)
    unknown = sorted(set(given) - {t.name for t in loaded.inputs})
    if unknown:
        raise Invalid(f"unknown input(s) {', '.join(unknown)}; model {loaded.name} needs {needs}")
    tensors = []
    for spec in loaded.inputs:
        if spec.name not in given:
            raise Invalid(f"missing {spec.name!r}; model {loaded.name} needs {needs}")
        # The same checks as a JSON request: no silent truncation of 1.5 to 1, no wrap-around.
        try:
            data = to_array(given[spec.name], spec.datatype)
        except (ValueError, TypeError) as exc:
            raise Invalid(f"input {spec.name!r}: {exc}") from None
        tensors.append(InferInput(spec.name, spec.datatype, list(data.shape), data))
    return InferenceRequest(tensors)


class PredictorProcess:
    """A predictor server in a child process on a free loopback port (for demos and tests)."""

    def __init__(
        self,
        home: Path,
        *,
        port: int | None = None,
        startup_timeout: float = 60.0,
        args: Sequence[str] = (),
    ) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.args = list(args)
        """More ``learner predictor serve`` options, e.g. ``["--workers", "2"]``."""
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process it captures

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PredictorProcess:
        """Start the server and wait until it says it listens (with ``--workers``, once every
        worker has started: one worker's readiness says nothing of the others') and
        ``/v2/health/ready`` answers 200."""
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
            *self.args,
        ]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._tail()
                self.stop()
                raise Unavailable(f"the predictor exited with status {self.process.returncode}: {tail}")
            try:
                if (
                    LISTENING in self.output()
                    and httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200
                ):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        tail = self._tail()  # read before stop(), which closes the log
        self.stop()
        raise Unavailable(f"the predictor did not become ready within {self.startup_timeout:.0f} s: {tail}")

    def output(self) -> str:
        """What the server process has printed so far (its log, and the "listening" line)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _tail(self) -> str:
        lines = self.output().strip().splitlines()
        return " | ".join(lines[-3:]) or "no output"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL once it has had longer than its workers' own
        graceful shutdown and their supervisor's wait for them)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WORKER_JOIN_SECONDS + 10)
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
