"""The Open Inference Protocol v2 REST adapter: routes → :class:`DataPlane`, errors → 4xx JSON.

Speaks JSON tensors and Triton's binary tensor extension (``Inference-Header-Content-Length``);
also serves ``/metrics`` (Prometheus) and ``/v2/openapi.json`` (this API, described).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from openlearner.errors import Corrupt, Invalid, OpenLearnerError
from openlearner.predictor.batching import Overloaded
from openlearner.predictor.dataplane import DataPlane
from openlearner.predictor.metrics import CONTENT_TYPE
from openlearner.predictor.openapi import openapi_document
from openlearner.predictor.protocol import (
    InferenceRequest,
    InferenceResponse,
    decode_request,
    encode_binary_response,
    encode_response,
)

__all__ = ["HEADER_LENGTH", "MAX_BODY_BYTES", "create_app"]

log = logging.getLogger("openlearner.predictor")
MAX_BODY_BYTES = 64 * 1024 * 1024
INLINE_BYTES = 64 * 1024
"""Requests up to this size for a loaded model are decoded on the event loop itself."""
HEADER_LENGTH = "inference-header-content-length"
_OPEN = ("/v2/health/live", "/v2/health/ready")
_INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def _error(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


def _status(exc: OpenLearnerError) -> int:
    return 503 if isinstance(exc, Corrupt) else exc.http_status


Handler = Callable[[Request], Awaitable[Response]]


async def _mapped(call: Callable[[], Awaitable[Response]], method: str, path: str) -> Response:
    """``call()``, with errors mapped to ``{"error"}`` responses."""
    try:
        return await call()
    except ClientDisconnect:
        return _error("the client went away before its request was read", 400)
    except Overloaded as exc:
        return _error(str(exc), 503, {"Retry-After": str(exc.retry_after)})
    except OpenLearnerError as exc:
        if isinstance(exc, Corrupt):
            log.error("%s", exc)
        return _error(str(exc), _status(exc))
    except Exception:
        log.exception("unexpected error serving %s %s", method, path)
        return _error("internal error in the predictor; see its log", 500)


def _authorized(given: str | bytes | None, token: bytes | None) -> bool:
    if token is None:
        return True
    raw = given.encode() if isinstance(given, str) else (given or b"")
    return hmac.compare_digest(raw, token)


def _guarded(handler: Handler, token: bytes | None) -> Handler:
    """Map errors to ``{"error"}`` responses, and require the bearer token when one is set."""

    async def wrapped(request: Request) -> Response:
        if request.url.path not in _OPEN and not _authorized(request.headers.get("authorization", ""), token):
            return _error("missing or wrong bearer token; send 'Authorization: Bearer <token>'", 401)
        return await _mapped(lambda: handler(request), request.method, request.url.path)

    return wrapped


def _header_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Invalid(f"Inference-Header-Content-Length must be a whole number of bytes, not {raw!r}")
    return int(raw)


def _encode(request: InferenceRequest, response: InferenceResponse) -> Response:
    binary = {o.name for o in response.outputs if request.binary_output(o.name)}
    if not binary:
        return _Answer(encode_response(response), b"application/json")
    body, header = encode_binary_response(response, binary)
    return _Answer(
        body, b"application/octet-stream", [(b"inference-header-content-length", str(header).encode())]
    )


def create_app(
    dataplane: DataPlane,
    *,
    auth_token: str | None = None,
    max_body: int = MAX_BODY_BYTES,
    close_on_shutdown: bool = True,
) -> ASGIApp:
    """The ASGI app serving ``dataplane`` over OIP v2 REST.

    Inference requests go straight from ASGI to the data plane; every other route (and the
    lifespan) is a Starlette app.

    At startup it loads every model's ``production`` version (``/v2/health/ready`` answers
    200 once done); at shutdown it drains the queues and writes the prediction log, unless
    ``close_on_shutdown`` is false because the data plane serves another transport too.
    """
    state = {"ready": False}

    async def live(_: Request) -> Response:
        return _json({"live": True})

    async def ready(_: Request) -> Response:
        return _json({"ready": state["ready"]}, 200 if state["ready"] else 503)

    async def server_metadata(_: Request) -> Response:
        return _json(dataplane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return _json(
            await asyncio.to_thread(dataplane.model_metadata, params["model"], params.get("version"))
        )

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        model = await asyncio.to_thread(dataplane.model, params["model"], params.get("version"))
        return _json({"name": params["model"], "version": str(model.number), "ready": True})

    async def metrics(_: Request) -> Response:
        return Response(dataplane.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(_: Request) -> Response:
        return _json(openapi_document())

    async def infer(request: Request) -> Response:
        params = request.path_params
        return await answer(params["model"], params.get("version"), request.headers, _Body(request.receive))

    async def answer(name: str, ref: str | None, headers: Mapping[str, str], chunks: _Body) -> Response:
        try:
            return await read_and_infer(name, ref, headers, chunks)
        except OpenLearnerError as exc:
            dataplane.count_error(name, ref, 503 if isinstance(exc, Overloaded) else _status(exc))
            raise

    async def read_and_infer(
        name: str, ref: str | None, headers: Mapping[str, str], chunks: _Body
    ) -> Response:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return _error(f"the request body exceeds {max_body} bytes", 413)
        header_length = _header_length(headers)
        warm = dataplane.warm(name, ref)
        if not warm:
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
            response = await dataplane.infer_async(name, ref, decoded, announced=True, warm=warm)
        finally:
            if not handed_over:
                dataplane.settle()
        return _encode(decoded, response)

    secret = f"Bearer {auth_token}".encode() if auth_token else None

    def guarded(handler: Handler) -> Handler:
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
            404: "no such route; see GET /v2 and /v2/models/{name}",
            405: "method not allowed on this route",
        }
        headers = exc.headers if isinstance(exc, HTTPException) else None  # 405 carries Allow
        return _error(message.get(status, str(getattr(exc, "detail", "error"))), status, headers)

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

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST .../infer`` straight to the handler (the hot path); everything else through Starlette."""
        match = _INFER.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await app(scope, receive, send)
            return
        headers = _Headers(scope["headers"])
        if secret is not None and not _authorized(headers.get("authorization", ""), secret):
            response = _error("missing or wrong bearer token; send 'Authorization: Bearer <token>'", 401)
        else:
            response = await _mapped(
                lambda: answer(match["model"], match["version"], headers, _Body(receive)),
                "POST",
                scope["path"],
            )
        await response(scope, receive, send)

    return serve


class _Headers(Mapping[str, str]):
    """An ASGI header list read as a mapping, decoding only the headers asked for."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> str:
        wanted = key.encode("latin-1")
        for name, value in self._raw:
            if name == wanted:
                return value.decode("latin-1")
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class _Answer(Response):
    """A response whose headers are given ready-made (content type and length), skipping Starlette's assembly."""

    def __init__(
        self, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if extra:
            self.raw_headers += extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


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
