"""HTTP/1.1 for the predictor: uvicorn's httptools protocol, with inference answered from its callbacks.

Under uvicorn every request becomes an ASGI exchange: a scope dict, a request-response
cycle, a task, a ``receive`` and two ``send`` messages whose headers are checked and
written one write each. For a small inference request that machinery costs about as much
as the predictor's own work. :func:`protocol_for` gives uvicorn a protocol that answers
the common inference request itself, once the parser has the whole body: it hands the
bytes to :meth:`Inference.from_http <openlearner.predictor.rest.Inference.from_http>`
(the very code the ASGI app runs, so replies and errors are the same) and writes status
line, headers and body in one write, often before the parser's callback returns.

Only a request that needs nothing more goes that way: ``POST`` to an ``.../infer`` path of
plain characters with no query, for a model that is loaded (:meth:`DataPlane.warm
<openlearner.predictor.dataplane.DataPlane.warm>`), with the bearer token when one is
required, a ``Content-Length`` of at most :data:`~openlearner.predictor.rest.INLINE_BYTES`
(and the app's body limit), no ``Transfer-Encoding``, no ``Expect: 100-continue``, no
upgrade, nothing else in flight on the connection and a client that reads its answers
(writing not paused). Everything else (other routes, a model to load first, a refusal,
large or chunked bodies, pipelined requests behind one still running, a server with a
concurrency limit) goes through uvicorn's ASGI path unchanged, which keeps keep-alive,
pipelining order, flow control and graceful shutdown uvicorn's business: the fast exchange
takes the place of uvicorn's request-response cycle on the connection while it runs, so
uvicorn's own bookkeeping (a pipelined request waits for it; a shutdown closes the
connection once it is answered) applies to it as well, and its answer is access-logged as
uvicorn logs its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from openlearner.predictor.rest import INLINE_BYTES, Inference, PredictorApp, Reply, _Headers

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

__all__ = ["protocol_for"]

log = logging.getLogger("openlearner.predictor")

# Model names and version references of plain characters only: anything percent-encoded
# (or with a query) goes through the ASGI path, which decodes it.
_INFER = re.compile(rb"/v2/models/([A-Za-z0-9._~-]+)(?:/versions/([A-Za-z0-9._~-]+))?/infer")


_RELIED_ON = (
    "cycle",
    "pipeline",
    "flow",
    "headers",
    "expect_100_continue",
    "limit_concurrency",
    "tasks",
    "server_state",
    "access_log",
    "access_logger",
    "parser",
    "transport",
    "client",
    "on_response_complete",
    "_unset_keepalive_if_required",
    "_start_asgi_task",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "timeout_keep_alive_handler",
    "scope",
)
"""What the fast road uses of uvicorn's protocol beyond its parser callbacks: internals, so a
uvicorn that lacks one of them gets every request served over ASGI instead (and a warning)."""


def protocol_for(app: PredictorApp) -> type[asyncio.Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for ``app``."""
    return type("PredictorHTTP", (PredictorProtocol,), {"inference": app.inference, "fast": None})


class _Unwaited:
    """In place of the cycle's ``message_event``: nothing waits on a fast exchange's body."""

    __slots__ = ()

    def set(self) -> None:
        pass


class _Exchange:
    """One inference request answered from the parser's callbacks.

    While it runs it is the connection's ``cycle``, so it carries the attributes uvicorn's
    protocol reads there (``response_complete``, ``disconnected``, ``keep_alive``,
    ``message_event``).
    """

    __slots__ = (
        "body",
        "disconnected",
        "headers",
        "keep_alive",
        "name",
        "path",
        "ref",
        "response_complete",
        "started",
        "version",
    )

    message_event: ClassVar[_Unwaited] = _Unwaited()

    def __init__(
        self, name: str, ref: str | None, path: str, headers: _Headers, version: str, keep_alive: bool
    ) -> None:
        self.name, self.ref, self.path, self.headers = name, ref, path, headers
        self.version = version
        self.keep_alive = keep_alive
        self.body: bytes | bytearray = b""
        self.started = False
        """Handed to :meth:`Inference.from_http` (which settles the announcement from then on)."""
        self.response_complete = False
        self.disconnected = False


class PredictorProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering small inference requests for a loaded model itself."""

    inference: ClassVar[Inference]
    fast: ClassVar[bool | None] = None
    """Whether this uvicorn has what the fast road relies on (found out at the first connection)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._body_limit = min(INLINE_BYTES, self.inference.max_body)
        self._idle_since: float | None = None
        """When the connection fell idle (its last answer written, nothing read since); None while busy."""
        if type(self).fast is None:
            missing = [name for name in _RELIED_ON if not hasattr(self, name)]
            if missing:
                log.warning(
                    "uvicorn %s's HTTP protocol lacks %s: every request goes over ASGI (slower); "
                    "install the uvicorn version in constraints.txt",
                    uvicorn.__version__,
                    ", ".join(missing),
                )
            type(self).fast = not missing

    def on_message_begin(self) -> None:
        if not self.fast:
            super().on_message_begin()
            return
        # uvicorn's, less the ASGI scope: only a request that takes the ASGI road needs one,
        # and it is made for it in on_headers_complete.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._idle_since = None  # busy (answered inside the parser's callbacks, the last one made it idle)

    def on_headers_complete(self) -> None:
        exchange = self._exchange()
        if exchange is None:
            if self.fast:
                self._make_scope()
            super().on_headers_complete()
            return
        self.cycle = exchange  # type: ignore[assignment]  # uvicorn reads only what _Exchange carries
        self.inference.dataplane.announce()  # batches wait for it while its body arrives

    def _make_scope(self) -> None:
        """The ASGI scope uvicorn's on_message_begin makes, for the request parsed so far."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    # -- keep-alive, without a timer armed and cancelled for every request --------------------
    def _unset_keepalive_if_required(self) -> None:
        if not self.fast:
            super()._unset_keepalive_if_required()
            return
        self._idle_since = None  # an armed timer finds the connection busy and lets it be

    def on_response_complete(self) -> None:
        """uvicorn's, but the keep-alive timer is armed only when none is, and it closes the
        connection only once it has been idle ``timeout_keep_alive`` seconds (see
        :meth:`_keep_alive_due`)."""
        if not self.fast:
            super().on_response_complete()
            return
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = monotonic()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        """Close the connection if it has been idle ``timeout_keep_alive`` seconds; if it fell
        idle later, look again then; if it is busy, the next answer arms the timer again."""
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None:
            return
        left = since + self.timeout_keep_alive - monotonic()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def _exchange(self) -> _Exchange | None:
        """A fast exchange for the request whose headers were just parsed, or None for the ASGI path."""
        if not self.fast:
            return None
        parser = self.parser
        if parser.get_method() != b"POST" or self.expect_100_continue or parser.should_upgrade():
            return None
        if self.flow.write_paused:
            return None  # the client is not reading: the ASGI road waits for it before answering
        match = _INFER.fullmatch(self.url)
        if match is None or self.limit_concurrency is not None or self.pipeline:
            return None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return None  # a request before it is still running: uvicorn queues this one behind it
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 9:
                    return None
                length = int(value)
            elif name == b"transfer-encoding":
                return None
        if length is None or length > self._body_limit:
            return None
        model = match.group(1).decode("ascii")
        ref = None if match.group(2) is None else match.group(2).decode("ascii")
        headers = _Headers(self.headers)
        inference = self.inference
        if not inference.authorized(headers) or not inference.dataplane.warm(model, ref):
            return None  # refused, or resolved and loaded off the loop first: the ASGI road
        version = parser.get_http_version()
        keep_alive = version != "1.0" and parser.should_keep_alive()
        return _Exchange(model, ref, self.url.decode("ascii"), headers, version, keep_alive)

    def on_body(self, body: bytes) -> None:
        exchange = self.cycle
        if type(exchange) is not _Exchange:
            super().on_body(body)
        elif not exchange.body:
            exchange.body = body  # the usual body comes in one piece: kept without a copy
        else:
            if type(exchange.body) is bytes:
                exchange.body = bytearray(exchange.body)
            exchange.body += body

    def on_message_complete(self) -> None:
        exchange = self.cycle
        if type(exchange) is not _Exchange:
            super().on_message_complete()
            return
        exchange.started = True
        self.inference.from_http(
            exchange.name,
            exchange.ref,
            exchange.headers,
            bytes(exchange.body),
            exchange.path,
            lambda reply: self._reply(exchange, reply),
            self.tasks,
        )

    def _reply(self, exchange: _Exchange, reply: Reply) -> None:
        """Write ``reply`` in one write, then let uvicorn go on with the connection, as its cycle does."""
        exchange.response_complete = True
        transport = self.transport
        try:
            if not exchange.disconnected and not transport.is_closing():
                self._write(exchange, reply)
        except BaseException:
            transport.close()  # half an answer: nothing more may follow it on this connection
            raise
        finally:
            # Should the write have filled the transport's buffer, uvicorn's flow control has
            # paused writing: the next request then takes the ASGI road, which waits for it.
            self.on_response_complete()

    def _write(self, exchange: _Exchange, reply: Reply) -> None:
        transport = self.transport
        head = [STATUS_LINE[reply.status]]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        head += (b"content-type: ", reply.content_type, b"\r\ncontent-length: ", b"%d" % len(reply.body))
        for name, value in reply.extra:
            head += (b"\r\n", name, b": ", value)
        if not exchange.keep_alive:
            head.append(b"\r\nconnection: close")
        head += (b"\r\n\r\n", reply.body)
        transport.write(b"".join(head))
        if self.access_log:
            self.access_logger.info(
                '%s - "POST %s HTTP/%s" %d',
                f"{self.client[0]}:{self.client[1]}" if self.client else "",  # as uvicorn logs it
                exchange.path,
                exchange.version,
                reply.status,
            )
        if not exchange.keep_alive:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        exchange = self.cycle
        if type(exchange) is _Exchange and not exchange.response_complete:
            exchange.disconnected = True
            if not exchange.started:
                self.inference.dataplane.settle()  # its body never came: nobody is on the way
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:  # (ours is not cancelled by uvicorn's unset)
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
