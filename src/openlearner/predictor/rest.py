"""The Open Inference Protocol v2 REST adapter: routes → :class:`DataPlane`, errors → 4xx JSON.

Speaks JSON tensors and Triton's binary tensor extension (``Inference-Header-Content-Length``);
also serves ``/metrics`` (Prometheus) and ``/v2/openapi.json`` (this API, described).

:func:`create_app` gives an ASGI app (any ASGI server runs it); ``learner predictor serve``
runs it on uvicorn with :mod:`openlearner.predictor.http`'s protocol, which answers the
common inference request (a small body, a loaded model) from the HTTP parser's callbacks,
with the same :class:`Inference` code, and hands everything else to the ASGI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from openlearner.errors import Corrupt, Invalid, OpenLearnerError
from openlearner.predictor.auth import bearer_matches
from openlearner.predictor.batching import Handoff, Overloaded
from openlearner.predictor.dataplane import DataPlane, Pending
from openlearner.predictor.metrics import CONTENT_TYPE
from openlearner.predictor.openapi import openapi_document
from openlearner.predictor.protocol import (
    InferenceRequest,
    InferenceResponse,
    decode_request,
    encode_binary_response,
    encode_response,
)

__all__ = [
    "HEADER_LENGTH",
    "INLINE_BYTES",
    "MAX_BODY_BYTES",
    "Inference",
    "PredictorApp",
    "Reply",
    "create_app",
]

log = logging.getLogger("openlearner.predictor")
MAX_BODY_BYTES = 64 * 1024 * 1024
INLINE_BYTES = 64 * 1024
"""Requests up to this size for a loaded model are decoded on the event loop itself."""
HEADER_LENGTH = "inference-header-content-length"
_OPEN = ("/v2/health/live", "/v2/health/ready")
# \Z, not $: a path ending in a newline (%0A) is not an inference route.
_INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer\Z")
_UNAUTHORIZED = "missing or wrong bearer token; send 'Authorization: Bearer <token>'"
_NO_ROUTE = "no such route; see GET /v2 and /v2/models/{name}"
# A path with a control character is no route, though a trailing newline (%0A) would match
# Starlette's route patterns (their $ matches before it).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Reply:
    """A response as the predictor builds it, for any transport: status, content type, body, more headers."""

    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(
        self, status: int, content_type: bytes, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.extra = extra
        """Headers besides content type and length, names in lower case."""

    def response(self) -> Response:
        """This reply as a Starlette response (the ASGI app's routes)."""
        return _Answer(self)


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return Reply(status, b"application/json", orjson.dumps(payload), extra)


def _error(message: str, status: int, headers: Mapping[str, str] | None = None) -> Reply:
    return _json({"error": message}, status, headers)


_SHUTTING_DOWN = _error("the predictor is shutting down; retry on another replica", 503)


def _status(exc: OpenLearnerError) -> int:
    return 503 if isinstance(exc, Corrupt) else exc.http_status


def _failure(exc: BaseException, method: str, path: str) -> Reply:
    """The ``{"error"}`` reply for ``exc``, raised serving ``method path``."""
    if isinstance(exc, ClientDisconnect):
        return _error("the client went away before its request was read", 400)
    if isinstance(exc, Overloaded):
        return _error(str(exc), 503, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, OpenLearnerError):
        if isinstance(exc, Corrupt):
            log.error("%s", exc)
        return _error(str(exc), _status(exc))
    log.error("unexpected error serving %s %s", method, path, exc_info=exc)
    return _error("internal error in the predictor; see its log", 500)


Handler = Callable[[Request], Awaitable[Reply]]


def _authorized(given: str | bytes | None, token: bytes | None) -> bool:
    return token is None or bearer_matches(given, token)


def _guarded(handler: Handler, token: bytes | None) -> Callable[[Request], Awaitable[Response]]:
    """Map errors to ``{"error"}`` responses, and require the bearer token when one is set."""

    async def wrapped(request: Request) -> Response:
        path = request.url.path
        if path not in _OPEN and not _authorized(request.headers.get("authorization", ""), token):
            return _error(_UNAUTHORIZED, 401).response()
        try:
            reply = await handler(request)
        except Exception as exc:
            reply = _failure(exc, request.method, path)
        return reply.response()

    return wrapped


def _header_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Invalid(f"Inference-Header-Content-Length must be a whole number of bytes, not {raw!r}")
    return int(raw)


_BINARY = b"application/octet-stream"
_HEADER_LENGTH_NAME = HEADER_LENGTH.encode()


def _encode(request: InferenceRequest, response: InferenceResponse) -> Reply:
    binary = {o.name for o in response.outputs if request.binary_output(o.name)}
    if not binary:
        return Reply(200, b"application/json", encode_response(response))
    body, header = encode_binary_response(response, binary)
    return Reply(200, _BINARY, body, [(_HEADER_LENGTH_NAME, b"%d" % header)])


class Inference:
    """``POST /v2/models/{m}[/versions/{v}]/infer``: one code path for the ASGI app and the HTTP fast path.

    Errors become ``{"error"}`` replies (the data plane counts those it answers for); nothing
    here raises.
    """

    def __init__(self, dataplane: DataPlane, token: bytes | None, max_body: int) -> None:
        self.dataplane = dataplane
        self.token = token
        self.max_body = max_body

    def _failed(self, exc: BaseException, name: str, ref: str | None, path: str) -> Reply:
        if isinstance(exc, OpenLearnerError):
            self.dataplane.count_error(name, ref, 503 if isinstance(exc, Overloaded) else _status(exc))
        return _failure(exc, "POST", path)

    async def answer(
        self, name: str, ref: str | None, headers: Mapping[str, str], body: _Body | _Whole, path: str
    ) -> Reply:
        """Read ``body`` (the request announced meanwhile) and answer: the ASGI app's road."""
        if not self.authorized(headers):
            return _error(_UNAUTHORIZED, 401)
        try:
            return await self._read_and_infer(name, ref, headers, body)
        except Exception as exc:
            return self._failed(exc, name, ref, path)

    async def _read_and_infer(
        self, name: str, ref: str | None, headers: Mapping[str, str], chunks: _Body | _Whole
    ) -> Reply:
        dataplane, max_body = self.dataplane, self.max_body
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return _error(f"the request body exceeds {max_body} bytes", 413)
        header_length = _header_length(headers)
        if not dataplane.warm(name, ref):
            # Resolving or loading: off the event loop, and an unknown model is 404 whatever the body.
            await asyncio.to_thread(dataplane.model, name, ref)
        dataplane.announce()  # batches wait for this request while it is read and decoded
        handed_over = False
        try:
            body = await chunks.read(max_body)
            if body is None:
                return _error(f"the request body exceeds {max_body} bytes", 413)
            if len(body) <= INLINE_BYTES:
                decoded = decode_request(body, header_length)  # microseconds: cheaper than a thread hop
            else:
                decoded = await asyncio.to_thread(decode_request, body, header_length)
            handed_over = True
            # infer_async asks warm() again: while the body was read, the alias may have moved
            # and the version asked for been retired.
            response = await dataplane.infer_async(name, ref, decoded, announced=True)
        finally:
            if not handed_over:
                dataplane.settle()
        return _encode(decoded, response)

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether ``headers`` carry the bearer token (always true when none is required)."""
        return self.token is None or _authorized(headers.get("authorization", ""), self.token)

    def from_http(
        self,
        name: str,
        ref: str | None,
        headers: Mapping[str, str],
        body: bytes,
        path: str,
        answer: Callable[[Reply], None],
        tasks: set[asyncio.Task[Any]],
    ) -> None:
        """Answer a request read whole (at most :data:`INLINE_BYTES`): the HTTP fast path's road.

        The caller has found the request :meth:`authorized` and its model
        :meth:`~DataPlane.warm`, and announced it (:meth:`~DataPlane.announce`). ``answer`` gets the
        reply: before this returns when the request runs at once (no task, no further trip
        through the event loop), otherwise from a callback once its batch is done. Should
        the model no longer be warm (its alias moved meanwhile), the request takes the ASGI
        app's road in a task kept in ``tasks`` (the server's, which shutdown waits for).
        """
        dataplane = self.dataplane
        handed_over = False
        try:
            if not dataplane.warm(name, ref):
                handed_over = True
                dataplane.settle()  # the ASGI road announces it again once the model is there
                task = asyncio.get_running_loop().create_task(
                    self.answer(name, ref, headers, _Whole(body), path)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda done: answer(_unless_cancelled(done)))
                return
            usual = self._usual(name, ref, headers, body, path, answer)
            if usual is not None:
                handed_over = True  # (settled there, before it is queued)
                result, reply = usual()
            else:
                decoded = decode_request(body, _header_length(headers))
                handed_over = True
                pending = dataplane.begin(name, ref, decoded, announced=True, handoff=True)
        except Exception as exc:
            answer(self._failed(exc, name, ref, path))
            return
        finally:
            if not handed_over:
                dataplane.settle()
        if usual is not None:
            if result.done():
                reply(result)
            else:
                result.add_done_callback(reply)
        elif pending.result.done():
            answer(self._finished(pending, decoded, name, ref, path))
        else:
            pending.result.add_done_callback(
                lambda _: answer(self._finished(pending, decoded, name, ref, path))
            )

    def _usual(
        self,
        name: str,
        ref: str | None,
        headers: Mapping[str, str],
        body: bytes,
        path: str,
        answer: Callable[[Reply], None],
    ) -> Callable[[], tuple[Handoff, Callable[[Handoff], None]]] | None:
        """For a usual request (see :mod:`openlearner.predictor.usual`), what queues it on its own
        road: it settles the request's announcement, adds it to its batch (raising what
        :meth:`DataPlane.begin` raises) and returns the batch's handoff and what answers it
        once done. None, having done nothing, for any other request."""
        dataplane = self.dataplane
        found = dataplane.usual(name, ref)
        if found is None:
            return None
        model, road, batcher = found
        if headers.get(HEADER_LENGTH) is None:
            decoded = road.decode(body)
        else:
            try:
                length = _header_length(headers)
            except Invalid:
                return None
            if length is None or length > len(body):
                return None
            whole = memoryview(body)
            decoded = road.decode(whole[:length], whole[length:])
        if decoded is None:
            return None
        tensors, request_id, binary = decoded
        began = time.perf_counter()  # as DataPlane.begin times it: from the decoded request on

        def reply(result: Handoff) -> None:
            try:
                done = result.result()
                answered = dataplane.served(name, model, tensors, done, began, request_id)
                content, header = road.encode(name, done.outputs, answered, binary)
            except asyncio.CancelledError:
                outcome = _SHUTTING_DOWN
            except Exception as exc:
                outcome = self._failed(exc, name, ref, path)
            else:
                if header is None:
                    outcome = Reply(200, b"application/json", content)
                else:
                    outcome = Reply(200, _BINARY, content, [(_HEADER_LENGTH_NAME, b"%d" % header)])
            answer(outcome)

        def queue() -> tuple[Handoff, Callable[[Handoff], None]]:
            dataplane.settle()
            result = batcher.gather(tensors, 1, handoff=True)
            assert isinstance(result, Handoff)
            return result, reply

        return queue

    def _finished(
        self, pending: Pending, decoded: InferenceRequest, name: str, ref: str | None, path: str
    ) -> Reply:
        try:
            return _encode(decoded, self.dataplane.finish(pending))
        except asyncio.CancelledError:
            return _SHUTTING_DOWN
        except Exception as exc:
            return self._failed(exc, name, ref, path)


class PredictorApp:
    """The predictor's ASGI app (:func:`create_app`); :attr:`inference` also serves the HTTP fast path."""

    def __init__(self, inference: Inference, routes: Starlette) -> None:
        self.inference = inference
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST .../infer`` straight to :class:`Inference` (the hot path); everything else through Starlette."""
        if scope["type"] == "http" and _CONTROL.search(scope["path"]):
            await _Answer(_error(_NO_ROUTE, 404))(scope, receive, send)
            return
        match = _INFER.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self._routes(scope, receive, send)
            return
        headers = _Headers(scope["headers"])
        reply = await self.inference.answer(
            match["model"], match["version"], headers, _Body(receive), scope["path"]
        )
        await _Answer(reply)(scope, receive, send)


def create_app(
    dataplane: DataPlane,
    *,
    auth_token: str | None = None,
    max_body: int = MAX_BODY_BYTES,
    close_on_shutdown: bool = True,
) -> PredictorApp:
    """The ASGI app serving ``dataplane`` over OIP v2 REST.

    Inference requests go straight from ASGI to :class:`Inference`; every other route (and
    the lifespan) is a Starlette app.

    At startup it loads every model's ``production`` version (``/v2/health/ready`` answers
    200 once done); at shutdown it drains the queues and writes the prediction log, unless
    ``close_on_shutdown`` is false because the data plane serves another transport too.
    """
    state = {"ready": False}

    async def live(_: Request) -> Reply:
        return _json({"live": True})

    async def ready(_: Request) -> Reply:
        return _json({"ready": state["ready"]}, 200 if state["ready"] else 503)

    async def server_metadata(_: Request) -> Reply:
        return _json(dataplane.server_metadata())

    async def model_metadata(request: Request) -> Reply:
        params = request.path_params
        return _json(
            await asyncio.to_thread(dataplane.model_metadata, params["model"], params.get("version"))
        )

    async def model_ready(request: Request) -> Reply:
        params = request.path_params
        model = await asyncio.to_thread(dataplane.model, params["model"], params.get("version"))
        return _json({"name": params["model"], "version": str(model.number), "ready": True})

    async def metrics(_: Request) -> Reply:
        return Reply(200, CONTENT_TYPE.encode(), dataplane.metrics.render())

    async def openapi(_: Request) -> Reply:
        return _json(openapi_document())

    secret = auth_token.encode() if auth_token else None
    inference = Inference(dataplane, secret, max_body)

    async def infer(request: Request) -> Reply:
        params = request.path_params
        return await inference.answer(
            params["model"], params.get("version"), request.headers, _Body(request.receive), request.url.path
        )

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return _guarded(handler, secret)

    routes = [
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route("/v2/openapi.json", guarded(openapi), methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
        Route("/v2/models/{model}", guarded(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", guarded(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", guarded(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/infer", guarded(infer), methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", guarded(infer), methods=["POST"]),
    ]

    async def http_error(_: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {
            404: _NO_ROUTE,
            405: "method not allowed on this route",
        }
        headers = exc.headers if isinstance(exc, HTTPException) else None  # 405 carries Allow
        return _error(message.get(status, str(getattr(exc, "detail", "error"))), status, headers).response()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        loaded = await asyncio.to_thread(dataplane.preload)
        log.info("predictor ready; loaded %s", ", ".join(loaded) or "no production models yet")
        state["ready"] = True
        yield
        state["ready"] = False
        if close_on_shutdown:
            await asyncio.to_thread(dataplane.close)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    return PredictorApp(inference, app)


class _Headers(Mapping[str, str]):
    """An ASGI header list read as a mapping, decoding only the headers asked for."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def get(self, key: str, default: Any = None) -> Any:
        """The header's value, or ``default`` (without raising and catching a KeyError: the hot path asks)."""
        wanted = key.encode("latin-1")
        for name, value in self._raw:
            if name == wanted:
                return value.decode("latin-1")
        return default

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class _Answer(Response):
    """A :class:`Reply` sent over ASGI, its headers given ready-made (skipping Starlette's assembly)."""

    def __init__(self, reply: Reply) -> None:
        self.status_code = reply.status
        self.body = reply.body
        self.background = None
        self.raw_headers = [
            (b"content-type", reply.content_type),
            (b"content-length", str(len(reply.body)).encode()),
            *reply.extra,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


def _unless_cancelled(task: asyncio.Task[Reply]) -> Reply:
    if task.cancelled():
        return _SHUTTING_DOWN
    return task.result()  # Inference.answer never raises


class _Whole:
    """A body already read whole, read the way :class:`_Body` is."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self, limit: int) -> bytes | None:
        """The body, or None when it is over ``limit`` bytes."""
        return self._body if len(self._body) <= limit else None


class _Body:
    """A request's body as ASGI delivers it, read whole up to a limit."""

    __slots__ = ("_receive",)

    def __init__(self, receive: Receive) -> None:
        self._receive = receive

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None once it grows past ``limit`` bytes."""
        first: bytes | None = None  # the usual body comes in one message: kept without a copy
        gathered = bytearray()
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if first is None and not gathered:
                first = chunk
            else:
                if first is not None:
                    gathered += first
                    first = None
                gathered += chunk
            if len(first if first is not None else gathered) > limit:
                return None
            if not message.get("more_body", False):
                return first if first is not None else bytes(gathered)
