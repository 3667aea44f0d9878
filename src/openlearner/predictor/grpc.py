"""The Open Inference Protocol v2 gRPC adapter: ``inference.GRPCInferenceService`` → :class:`DataPlane`.

grpc's threaded server runs each RPC on a thread of a pool: it decodes its message, calls
the data plane and encodes the answer. Inference goes through the same dynamic batching
queues as REST: a request waits on its thread for its batch (:meth:`DataPlane.infer_batched`),
so the RPCs in flight together share one run of the model. Each call announces itself to
the data plane while it is decoded and checked, so a batch waits for company only while
calls are on their way (a lone call runs at once), and a call that ends while its request
waits in the queue (cancelled, past its deadline) takes the request out. Errors map to
gRPC status codes with the message REST puts in ``{"error"}``: ``Invalid`` →
INVALID_ARGUMENT, ``NotFound`` → NOT_FOUND, ``Unavailable`` (and a corrupt artifact) →
UNAVAILABLE, an overloaded queue → UNAVAILABLE with ``retry-after`` trailing metadata, and
so is an inference call beyond the ones the server takes at once (as many as a model's
queue may hold, ``max_queue``): it is refused at once instead of waiting for a thread. With
a token set, every RPC but ``ServerLive`` and ``ServerReady`` needs ``authorization: Bearer
<token>`` metadata (UNAUTHENTICATED otherwise).

Threads, not grpc.aio: grpc.aio's machinery for a call (an asyncio task, and each of the
call's completion-queue events handed from grpc's poller thread to the event loop) costs
more than the threaded server's thread switches. On the benchmark's 2-core machine, with the
server on one core, a grpc.aio server that answers every call with the same bytes made
2,390-3,070 calls a second, the threaded one 4,110-5,670 (``benchmarks/BENCHMARKS.md``).

Importing this module imports ``grpc``; nothing else in the predictor does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs installed

from openlearner.errors import Corrupt, Invalid, OpenLearnerError, Unavailable
from openlearner.predictor.auth import bearer_matches
from openlearner.predictor.batching import CallEnded, Overloaded, wait_for
from openlearner.predictor.dataplane import DataPlane
from openlearner.predictor.grpc_protocol import (
    METHODS,
    SERVICE,
    decode_infer_request,
    encode_infer_response,
    message_class,
    usual_inputs,
)
from openlearner.predictor.server import check_bind
from openlearner.predictor.threads import batch_policy as _batch_policy

__all__ = ["MAX_CALLS", "MAX_MESSAGE_BYTES", "SPARE_THREADS", "GrpcServer"]

log = logging.getLogger("openlearner.predictor")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest request message accepted (as REST's largest body); larger ones get RESOURCE_EXHAUSTED."""
MAX_CALLS = 1024
"""The most inference calls a server takes at once by default, whatever ``max_queue`` says
(each holds a thread while it waits for its batch)."""
SPARE_THREADS = 8
"""Threads beside those of the inference calls, so that health and metadata calls are
answered while every inference call waits for its batch."""
MAX_STATUS_BYTES = 2000
"""An error's message is cut to this many UTF-8 bytes: a status travels percent-encoded in
trailing metadata (up to 3 characters a byte), which clients may refuse past 8 KiB and do
past 16 KiB (they would see RESOURCE_EXHAUSTED instead of the error)."""
_OPEN = {f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady"}
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""gRPC status of an error by the HTTP status REST answers for it."""

Rpc = Callable[[Any, grpc.ServicerContext], Any]


def _http_status(exc: OpenLearnerError) -> int:
    return 503 if isinstance(exc, Corrupt) else exc.http_status  # a damaged artifact: 503, as on REST


def _guarded(rpc: Rpc, name: str) -> Rpc:
    """Turn OpenLearner errors into status codes; anything unexpected is logged and INTERNAL.
    (``context.abort`` raises, ending the RPC with that status.)"""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if isinstance(request, _Malformed):
                raise Invalid(f"the request is not a valid inference.{name}Request: {request.why}")
            return rpc(request, context)
        except Overloaded as exc:
            context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except CallEnded as exc:  # (cancelled, past its deadline: nobody reads this status)
            context.abort(grpc.StatusCode.CANCELLED, str(exc))
        except OpenLearnerError as exc:
            if isinstance(exc, Corrupt):
                log.error("%s", exc)
            context.abort(_CODES.get(_http_status(exc), grpc.StatusCode.INTERNAL), _status_text(exc))
        except Exception:
            log.exception("unexpected error serving gRPC %s", name)
            context.abort(grpc.StatusCode.INTERNAL, "internal error in the predictor; see its log")

    return call


def _status_text(exc: Exception) -> str:
    encoded = str(exc).encode()
    if len(encoded) <= MAX_STATUS_BYTES:
        return str(exc)
    return f"{encoded[: MAX_STATUS_BYTES - 16].decode(errors='ignore')}… (cut)"


class _Malformed:
    """In place of a request message whose bytes do not parse (answered INVALID_ARGUMENT)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _parser(message: Any) -> Callable[[bytes], Any]:
    """A request deserializer that hands a parse failure to the RPC instead of failing inside
    grpc (which answers UNKNOWN, naming a Python exception, and logs a traceback)."""

    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return _Malformed(str(exc)[:200])

    return parse


class _Servicer:
    """The six RPCs, each a few lines over the data plane (methods are named as the spec's RPCs)."""

    def __init__(self, dataplane: DataPlane, ready: threading.Event, max_calls: int) -> None:
        self.dataplane = dataplane
        self.ready = ready
        self.max_calls = max_calls
        self.calls = threading.BoundedSemaphore(max_calls)
        """One for each inference call in flight (see :class:`GrpcServer`'s ``max_calls``)."""
        self.responses = {method: message_class(f"{method}Response") for method in METHODS}

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.responses["ServerLive"](live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.responses["ServerReady"](ready=self.ready.is_set())

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.dataplane.model(request.name, request.version or None)
        return self.responses["ModelReady"](ready=True)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        meta = self.dataplane.server_metadata()
        return self.responses["ServerMetadata"](
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        fields = ("name", "datatype", "shape")
        return self.responses["ModelMetadata"](
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[{k: t[k] for k in fields} for t in meta["inputs"]],
            outputs=[{k: t[k] for k in fields} for t in meta["outputs"]],
        )

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        name, ref = request.model_name, request.model_version or None
        if not self.calls.acquire(blocking=False):
            self.dataplane.count_error(name, ref, 503)
            raise Overloaded(
                f"the gRPC server already serves its limit of {self.max_calls} inference calls at "
                "once; retry in a second"
            )
        try:
            return self._infer(name, ref, request, context.add_callback)
        finally:
            self.calls.release()

    def _infer(
        self, name: str, ref: str | None, request: Any, call_ends: Callable[[Callable[[], object]], bool]
    ) -> Any:
        dataplane = self.dataplane
        arrival = None
        try:
            if not name:
                raise Invalid("the request names no model; set model_name")
            warm = dataplane.warm(name, ref)
            if not warm:  # resolve (and load) first: an unknown model is NOT_FOUND whatever the
                dataplane.model(name, ref)  # tensors (its rollouts are routed on the general road)
            arrival = _Arrival(dataplane)  # batches wait for it while it is decoded and checked
            if warm and (usual := self._usual(name, ref, request, call_ends, arrival)) is not None:
                return usual
            decoded = decode_infer_request(request)
            announced = arrival.hand_over()  # infer_batched settles it
            response = dataplane.infer_batched(name, ref, decoded, announced=announced, call_ends=call_ends)
        except OpenLearnerError as exc:
            dataplane.count_error(name, ref, _http_status(exc))
            raise
        finally:
            if arrival is not None:
                arrival.settle()
        return encode_infer_response(response, raw=len(request.raw_input_contents) > 0)

    def _usual(
        self,
        name: str,
        ref: str | None,
        request: Any,
        call_ends: Callable[[Callable[[], object]], bool],
        arrival: _Arrival,
    ) -> Any:
        """For a usual request to a cheap model (:func:`usual_inputs`) that is
        :meth:`~DataPlane.warm`, its answer: the general road's, without its checks and
        objects. None, having done nothing, for any other. Settles ``arrival`` as it queues
        the request."""
        dataplane = self.dataplane
        found = dataplane.usual(name, ref)
        if found is None:
            return None
        model, road, batcher = found
        decoded = usual_inputs(request, *road.inputs)
        if decoded is None:
            return None
        tensors, request_id = decoded
        began = time.perf_counter()  # as DataPlane.infer_batched times it: from the decoded request on
        arrival.settle()
        done = wait_for(batcher.submit(tensors, 1, adaptive=True), call_ends)
        answered = dataplane.served(name, model, tensors, done, began, request_id)
        return encode_infer_response(road.response(name, done.outputs, answered), raw=False)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, for ``add_generic_rpc_handlers``."""
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                _guarded(getattr(self, method), method),
                request_deserializer=_parser(message_class(f"{method}Request")),
                response_serializer=self.responses[method].SerializeToString,
            )
            for method in METHODS
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


class _Arrival:
    """An inference call on its way to a model's queue, announced to the data plane
    (:meth:`DataPlane.announce`): a batch waits for it, rather than ``max_delay`` for company
    that may never come, until it is settled, once, whatever road it takes."""

    __slots__ = ("dataplane", "on_way")

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.on_way = True
        dataplane.announce()

    def settle(self) -> None:
        """The call is queued, or will not be; a second call does nothing."""
        if self.on_way:
            self.on_way = False
            self.dataplane.settle()

    def hand_over(self) -> bool:
        """Leave settling to :meth:`DataPlane.infer_batched` (``announced=True``): True,
        unless it is settled already."""
        was, self.on_way = self.on_way, False
        return was


class _BearerToken(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC but the health checks."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token; send 'authorization: Bearer <token>' metadata",
            )

        self.deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method not in _OPEN:
            metadata = handler_call_details.invocation_metadata or ()
            given = next((value for key, value in metadata if key == "authorization"), "")
            if not bearer_matches(given, self.token):
                return self.deny
        return continuation(handler_call_details)


class GrpcServer:
    """Serves a :class:`DataPlane` over ``inference.GRPCInferenceService`` on grpc's threaded server.

    ``start()`` binds and serves at once (``ServerLive`` answers true), then loads every
    model's ``production`` version in the background; ``ServerReady`` answers true once that
    is done. ``port=0`` picks a free port (:attr:`port` holds it after ``start()``).
    ``reuse_port`` lets several processes share one port (the kernel spreads connections).
    ``max_calls``: inference calls served at once, each on its own thread (default: the data
    plane's ``max_queue``, at most :data:`MAX_CALLS`); one more is answered UNAVAILABLE with
    ``retry-after``, as a full queue is. The pool has :data:`SPARE_THREADS` more threads for
    the other RPCs; past all of them grpc answers RESOURCE_EXHAUSTED.

    ``batch_policy``: give those threads Linux's ``SCHED_BATCH`` policy (no wake-up
    preemption). A finished batch wakes the thread of each of its requests; without it,
    each woken thread preempts the one still handing out results, finds the interpreter's
    lock held and sleeps again. With it, the woken threads wait for the running one to block
    or use up its time slice. On the benchmark's 2-core machine, with the server on one core,
    that cut the server's voluntary context switches per call from 5.5-10.2 to 3.4-4.2 (and
    its involuntary ones from 2.0-4.9 to 0.1-0.3), and served 7-18 % more calls a second
    (medians of two runs of alternating 4 s windows; ``benchmarks/BENCHMARKS.md``). An idle
    core runs a woken thread at once, so a lone call waits no longer; a call arriving while
    other work keeps the core busy (REST, say) waits for that work's time slice. Threads the
    predictor keeps for itself keep the default policy (:mod:`openlearner.predictor.threads`).
    """

    def __init__(
        self,
        dataplane: DataPlane,
        host: str = "127.0.0.1",
        port: int = 8081,
        token: str | None = None,
        *,
        preload: bool = True,
        reuse_port: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_calls: int | None = None,
        batch_policy: bool = True,
    ) -> None:
        check_bind(host, token)
        if not 0 <= port <= 65535:
            raise Invalid(f"port {port} is out of range 0–65535")
        if token is not None and not token.isascii():
            raise Invalid(
                "the auth token has non-ASCII characters, which gRPC metadata cannot carry; "
                "choose an ASCII token to serve gRPC"
            )
        if max_calls is None:
            max_calls = min(MAX_CALLS, dataplane.batching.max_queue)
        elif max_calls < 1:
            raise Invalid(f"a gRPC server must take at least one inference call at once, not {max_calls}")
        self.dataplane = dataplane
        self.host = host
        self.port = port
        self.token = token
        self.preload = preload
        self.reuse_port = reuse_port
        self.max_message_bytes = max_message_bytes
        self.max_calls = max_calls
        self.batch_policy = batch_policy
        self._ready = threading.Event()
        self._server: grpc.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        """``host:port`` as a gRPC client dials it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def ready(self) -> bool:
        """Whether the production models are loaded (what ``ServerReady`` answers)."""
        return self._ready.is_set()

    def start(self) -> GrpcServer:
        """Bind and start serving; raises ``Unavailable`` if the port cannot be bound."""
        if self._server is not None:
            raise Invalid("this gRPC server is already started")
        pool = ThreadPoolExecutor(
            self.max_calls + SPARE_THREADS,
            thread_name_prefix="openlearner-grpc",
            initializer=_batch_policy if self.batch_policy else None,
        )
        server = grpc.server(
            pool,
            interceptors=[_BearerToken(self.token)] if self.token else None,
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # Without this a port another server holds would be shared silently, not refused.
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
            # A backstop (inference calls are admitted below it): every RPC has its thread, and one
            # more is refused at once, not kept waiting for one.
            maximum_concurrent_rpcs=self.max_calls + SPARE_THREADS,
        )
        servicer = _Servicer(self.dataplane, self._ready, self.max_calls)
        server.add_generic_rpc_handlers((servicer.handler(),))
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError:  # recent grpc raises where older versions returned 0
            port = 0
        if port == 0:
            server.stop(None)
            pool.shutdown(wait=False)
            raise Unavailable(f"cannot listen on {self.address} for gRPC; choose another --grpc-port")
        server.start()
        self._server, self._pool, self.port = server, pool, port
        self._stopped.clear()
        if self.preload:
            threading.Thread(target=self._preload, name="openlearner-grpc-preload", daemon=True).start()
        else:
            self._ready.set()
        return self

    def _preload(self) -> None:
        try:
            loaded = self.dataplane.preload()
        except Exception:  # the registry is unreachable: stay live but not ready, and say why
            log.exception("preloading models for gRPC failed; ServerReady stays false")
            return
        log.info("gRPC predictor ready on %s; loaded %s", self.address, ", ".join(loaded) or "no models yet")
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the production models are loaded (or ``timeout`` seconds); whether they are."""
        return self._ready.wait(timeout)

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._stopped.wait()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop taking RPCs; those running get ``grace`` seconds to finish, then are cancelled."""
        server, pool = self._server, self._pool
        if server is None or pool is None:
            return
        server.stop(grace).wait()
        pool.shutdown(wait=False)
        self._server = self._pool = None
        self._ready.clear()
        self._stopped.set()

    def __enter__(self) -> GrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
