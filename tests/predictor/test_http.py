"""The predictor's HTTP protocol: inference answered from the parser's callbacks, the rest over ASGI.

The protocol is driven here byte by byte over a recording transport, so the tests see what
it writes and when: before ``data_received`` returns, or once the event loop has run. That
every route answers alike over both roads is ``test_rest.py``'s business (it runs each
test in-process and over a real socket).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import httpx
import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from openlearner.predictor import DataPlane
from openlearner.predictor.http import protocol_for
from openlearner.predictor.rest import INLINE_BYTES, create_app


class Transport(asyncio.Transport):
    """Records what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)


class Answers:
    """Responses parsed from what was written, in order."""

    def __init__(self, data: bytes) -> None:
        self.items: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._parser = httptools.HttpResponseParser(self)
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() >= 200:  # not a 100 Continue
            self.items.append((self._parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = {}, bytearray()


def infer(path: str, body: bytes, *, version: str = "1.1", extra: str = "") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nhost: test\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def raw_body(served: Any, row: int, request_id: str) -> bytes:
    values = [float(v) for v in served.matrix[row]]
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, len(values)], "data": values}
    return orjson.dumps({"id": request_id, "inputs": [tensor]})


Scenario = Callable[[Any, Transport, DataPlane, list[str]], Awaitable[None]]


def connect(protocol: Any) -> tuple[Any, Transport]:
    """Another connection to the server ``protocol`` belongs to."""
    other = type(protocol)(config=protocol.config, server_state=protocol.server_state, app_state={})
    transport = Transport()
    other.connection_made(transport)
    return other, transport


def drive(
    served: Any,
    scenario: Scenario,
    *,
    preload: bool = True,
    token: str | None = None,
    keep_alive: float = 5.0,
) -> None:
    """Run ``scenario(protocol, transport, dataplane, asgi_calls)`` on a fresh event loop
    (``keep_alive``: uvicorn's ``timeout_keep_alive``, seconds)."""

    async def main() -> None:
        dataplane = DataPlane(served.ws.registry, served.ws.features)
        if preload:
            await asyncio.to_thread(dataplane.preload)
        app = create_app(dataplane, auth_token=token)
        asgi_calls: list[str] = []

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            asgi_calls.append(f"{scope['method']} {scope['path']}")
            await app(scope, receive, send)

        config = uvicorn.Config(
            counted,
            http=protocol_for(app),
            log_level="warning",
            lifespan="off",
            timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # (uvicorn takes seconds as an int or a float)
        )
        config.load()
        state = ServerState()
        state.default_headers = [
            (b"date", b"Fri, 27 Nov 2026 23:00:00 GMT")
        ]  # the server's own, once a second
        protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        try:
            await scenario(protocol, transport, dataplane, asgi_calls)
        finally:
            protocol.connection_lost(None)
            await asyncio.to_thread(dataplane.close)

    asyncio.run(main())


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def test_an_inference_request_is_answered_before_data_received_returns(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "r0")))
        [(status, headers, body)] = Answers(bytes(transport.written)).items
        assert transport.writes == 1  # status line, headers and body in one write
        assert status == 200, body
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert "date" in headers and "connection" not in headers
        answer = orjson.loads(body)
        assert answer["id"] == "r0" and answer["model_version"] == "1"
        expected = served.raw_models[0].predict_proba(served.matrix[:1])[:, 1]
        [probability] = [o for o in answer["outputs"] if o["name"] == "probability"]
        assert probability["data"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert asgi == [] and dataplane.arriving() == 0
        assert not transport.closed

    drive(served, scenario)


def test_an_answer_that_cannot_be_written_closes_its_connection(served: Any) -> None:
    """Half an answer must not be followed by another on the same connection."""

    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        def broken(data: Any) -> None:
            raise OSError("the socket went away mid-write")

        transport.write = broken  # type: ignore[method-assign]
        with pytest.raises(OSError, match="mid-write"):
            protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "r0")))
        assert transport.closed and protocol.cycle.response_complete
        assert dataplane.arriving() == 0 and asgi == []

    drive(served, scenario)


def test_pipelined_requests_are_answered_in_order_whichever_road_they_take(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        data = (
            infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "first"))
            + b"GET /v2/models/raw_ctr HTTP/1.1\r\nhost: test\r\n\r\n"
            + infer("/v2/models/raw_ctr/infer", raw_body(served, 1, "third"))
            + infer("/v2/models/raw_ctr/versions/2/infer", raw_body(served, 2, "fourth"))
        )
        protocol.data_received(data)
        await until(lambda: len(Answers(bytes(transport.written)).items) == 4)
        answers = Answers(bytes(transport.written)).items
        assert [status for status, _, _ in answers] == [200] * 4
        bodies = [orjson.loads(body) for _, _, body in answers]
        assert bodies[0]["id"] == "first"
        assert bodies[1]["name"] == "raw_ctr" and "inputs" in bodies[1]  # the metadata
        assert [bodies[2]["id"], bodies[3]["id"]] == ["third", "fourth"]
        assert bodies[3]["model_version"] == "2"
        # Those behind the metadata request waited for it, queued by uvicorn, over ASGI.
        assert asgi[0] == "GET /v2/models/raw_ctr"
        assert not transport.paused and dataplane.arriving() == 0

    drive(served, scenario)


def test_http_1_0_is_answered_and_the_connection_closed(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "old"), version="1.0"))
        [(status, headers, _)] = Answers(bytes(transport.written)).items
        assert status == 200 and headers["connection"] == "close"
        assert transport.closed and asgi == []

    drive(served, scenario)


def test_connection_close_from_the_client_closes_after_the_answer(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        body = raw_body(served, 0, "bye")
        protocol.data_received(infer("/v2/models/raw_ctr/infer", body, extra="connection: close\r\n"))
        [(status, headers, _)] = Answers(bytes(transport.written)).items
        assert status == 200 and headers["connection"] == "close" and transport.closed

    drive(served, scenario)


def test_a_body_in_pieces_is_announced_until_it_is_whole(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        request = infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "slow"))
        split = request.index(b"\r\n\r\n") + 4 + 10
        protocol.data_received(request[:split])
        assert dataplane.arriving() == 1 and not transport.written  # batches wait for it meanwhile
        protocol.data_received(request[split:-5])
        assert dataplane.arriving() == 1
        protocol.data_received(request[-5:])
        [(status, _, body)] = Answers(bytes(transport.written)).items
        assert status == 200 and orjson.loads(body)["id"] == "slow"
        assert dataplane.arriving() == 0 and asgi == []

    drive(served, scenario)


def test_a_client_gone_before_its_body_is_no_longer_waited_for(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        request = infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "gone"))
        protocol.data_received(request[: request.index(b"\r\n\r\n") + 4])
        assert dataplane.arriving() == 1
        protocol.connection_lost(None)
        assert dataplane.arriving() == 0

    drive(served, scenario)


def test_errors_on_the_fast_road_are_the_json_errors_of_the_asgi_one(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", b"{not json"))
        protocol.data_received(infer("/v2/models/raw_ctr/infer", b'{"inputs": []}'))
        bad_length = "inference-header-content-length: x\r\n"
        protocol.data_received(infer("/v2/models/raw_ctr/infer", b"{}", extra=bad_length))
        answers = Answers(bytes(transport.written)).items
        assert [status for status, _, _ in answers] == [400, 400, 400]
        for _, headers, body in answers:
            assert headers["content-type"] == "application/json"
            assert set(orjson.loads(body)) == {"error"}
        assert "Inference-Header-Content-Length" in orjson.loads(answers[2][2])["error"]
        assert asgi == [] and dataplane.arriving() == 0 and not transport.closed

    drive(served, scenario)


def test_a_model_not_loaded_yet_is_loaded_off_the_loop_and_an_unknown_one_is_404(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "cold")))
        assert not transport.written  # loading, in a thread
        await until(lambda: len(Answers(bytes(transport.written)).items) == 1)
        protocol.data_received(infer("/v2/models/no_such_model/infer", b"{not json"))
        await until(lambda: len(Answers(bytes(transport.written)).items) == 2)
        (status, _, body), (missing, _, error) = Answers(bytes(transport.written)).items
        assert status == 200 and orjson.loads(body)["id"] == "cold"
        assert missing == 404 and "no model 'no_such_model'" in orjson.loads(error)["error"]
        # Both went over ASGI, which resolves and loads off the loop before reading the body.
        assert asgi == ["POST /v2/models/raw_ctr/infer", "POST /v2/models/no_such_model/infer"]
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 1, "warm")))
        await until(lambda: len(Answers(bytes(transport.written)).items) == 3)
        assert len(asgi) == 2  # loaded now: the fast road
        assert dataplane.arriving() == 0

    drive(served, scenario, preload=False)


def test_a_request_without_the_token_is_refused_over_asgi_and_never_announced(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        request = infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "x"))
        protocol.data_received(request[: request.index(b"\r\n\r\n") + 4])
        assert dataplane.arriving() == 0  # a client without the token makes no batch wait
        protocol.data_received(request[request.index(b"\r\n\r\n") + 4 :])
        await until(lambda: len(Answers(bytes(transport.written)).items) == 1)
        authorized = "authorization: Bearer s3cret\r\n"
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "y"), extra=authorized))
        (refused, _, error), (status, _, body) = Answers(bytes(transport.written)).items
        assert refused == 401 and "Bearer" in orjson.loads(error)["error"]
        assert status == 200 and orjson.loads(body)["id"] == "y"
        assert asgi == ["POST /v2/models/raw_ctr/infer"]  # only the refused one

    drive(served, scenario, token="s3cret")


def test_a_client_that_stops_reading_holds_the_next_requests_back_in_order(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "one")))
        protocol.pause_writing()  # what the transport says once its buffer passes the high-water mark
        protocol.data_received(
            infer("/v2/models/raw_ctr/infer", raw_body(served, 1, "two"))
            + infer("/v2/models/raw_ctr/infer", raw_body(served, 2, "three"))
        )
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(Answers(bytes(transport.written)).items) == 1  # nothing more while it does not read
        protocol.resume_writing()
        await until(lambda: len(Answers(bytes(transport.written)).items) == 3)
        ids = [orjson.loads(body)["id"] for _, _, body in Answers(bytes(transport.written)).items]
        assert ids == ["one", "two", "three"]
        assert dataplane.arriving() == 0

    drive(served, scenario)


def first_waits_for_second(protocol: Any, served: Any) -> tuple[Any, Transport, bytes]:
    """Another connection's request on its way (headers read, body not), then ``protocol``'s
    request ("first") whole: its batch waits for the other. Returns the other connection, its
    transport and the rest of its request ("second")."""
    other, other_transport = connect(protocol)
    second = infer("/v2/models/raw_ctr/infer", raw_body(served, 1, "second"))
    split = second.index(b"\r\n\r\n") + 4
    other.data_received(second[:split])
    protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "first")))
    return other, other_transport, second[split:]


def test_a_client_gone_while_its_batch_waits_gets_nothing_written_and_breaks_nothing(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        other, other_transport, rest = first_waits_for_second(protocol, served)
        assert not transport.written  # waiting for company
        protocol.connection_lost(None)
        transport.closed = True
        other.data_received(rest)
        await until(lambda: len(Answers(bytes(other_transport.written)).items) == 1)
        assert not transport.written
        [(status, _, body)] = Answers(bytes(other_transport.written)).items
        assert status == 200 and orjson.loads(body)["id"] == "second"
        assert dataplane.arriving() == 0
        other.connection_lost(None)

    drive(served, scenario)


def test_a_shutdown_lets_a_waiting_request_finish_then_closes(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        other, _, rest = first_waits_for_second(protocol, served)
        protocol.shutdown()
        assert not transport.closed  # its batch has not run yet
        other.data_received(rest)
        await until(lambda: transport.closed)
        [(status, headers, body)] = Answers(bytes(transport.written)).items
        assert status == 200 and headers["connection"] == "close" and orjson.loads(body)["id"] == "first"
        other.connection_lost(None)

    drive(served, scenario)


def test_the_access_log_gets_a_line_for_each_request_answered_on_the_fast_road(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.access_log = True  # uvicorn's own choice, from whether its access logger has handlers
        access = logging.getLogger("uvicorn.access")  # uvicorn keeps it from propagating
        access.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO, logger="uvicorn.access"):
                protocol.data_received(infer("/v2/models/raw_ctr/versions/1/infer", raw_body(served, 0, "z")))
        finally:
            access.removeHandler(caplog.handler)
        assert asgi == []
        assert caplog.messages == [
            '127.0.0.1:50000 - "POST /v2/models/raw_ctr/versions/1/infer HTTP/1.1" 200'
        ]

    drive(served, scenario)


def test_over_a_real_socket_small_inference_requests_never_reach_asgi(served: Any, live: Any) -> None:
    app = create_app(DataPlane(served.ws.registry, served.ws.features))
    seen: list[str] = []

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    with live(app, asgi=counted) as address, httpx.Client(base_url=f"http://{address}") as client:
        assert client.get("/v2/health/ready").status_code == 200
        for row in range(5):
            answer = client.post("/v2/models/raw_ctr/infer", content=raw_body(served, row, f"r{row}"))
            assert answer.status_code == 200 and answer.json()["id"] == f"r{row}"
        assert client.get("/v2/models/raw_ctr").status_code == 200
    assert seen == ["GET /v2/health/ready", "GET /v2/models/raw_ctr"]


def test_requests_that_need_more_than_the_fast_road_go_over_asgi(served: Any) -> None:
    body = raw_body(served, 0, "asgi")
    padded = body[:-1] + b" " * (INLINE_BYTES + 10) + b"}"  # valid JSON, over the inline limit
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    requests = [
        infer("/v2/models/raw_ctr/infer?x=1", body),
        infer("/v2/models/raw%5Fctr/infer", body),
        infer("/v2/models/raw_ctr/infer", padded),
        infer("/v2/models/raw_ctr/infer", body, extra="expect: 100-continue\r\n"),
        b"POST /v2/models/raw_ctr/infer HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n" + chunked,
    ]

    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        for answered, request in enumerate(requests, start=1):
            protocol.data_received(request)
            await until(lambda n=answered: len(Answers(bytes(transport.written)).items) == n, 30)
        answers = Answers(bytes(transport.written)).items
        assert [status for status, _, _ in answers] == [200] * len(requests)
        assert all(orjson.loads(b)["id"] == "asgi" for _, _, b in answers)
        assert len(asgi) == len(requests)
        assert dataplane.arriving() == 0

    drive(served, scenario)


def test_shutdown_closes_an_idle_connection_and_lets_a_running_one_finish(served: Any) -> None:
    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "a")))
        protocol.shutdown()
        assert transport.closed  # its request was answered: nothing to wait for

    drive(served, scenario)

    async def cold(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "b")))
        protocol.shutdown()  # while the model loads: answered first, then closed
        assert not transport.closed
        await until(lambda: transport.closed)
        [(status, headers, _)] = Answers(bytes(transport.written)).items
        assert status == 200 and headers["connection"] == "close"

    drive(served, cold, preload=False)


def test_a_connection_idle_for_the_keep_alive_timeout_is_closed_and_no_sooner(served: Any) -> None:
    """One timer a connection, not one armed and cancelled per request: it closes the connection
    only once it has been idle the whole timeout, whatever it did before."""

    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        loop = asyncio.get_running_loop()
        request = infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "a"))
        protocol.data_received(request)
        timer = protocol.timeout_keep_alive_task
        assert timer is not None
        await asyncio.sleep(0.4)
        protocol.data_received(request)  # answered at once: idle again from now
        idle_from = loop.time()
        assert protocol.timeout_keep_alive_task is timer  # not armed again
        await until(lambda: transport.closed)
        assert loop.time() - idle_from >= 1.0 - 0.01  # (the loop's clock may round a timer down a tick)
        assert len(Answers(bytes(transport.written)).items) == 2

    drive(served, scenario, keep_alive=1.0)  # (a second: a loop held up a while must not close it early)

    async def busy(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        loop = asyncio.get_running_loop()
        request = infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "b"))
        protocol.data_received(request)
        split = request.index(b"\r\n\r\n") + 4
        protocol.data_received(request[:split])  # a request under way past the timeout: kept open
        await asyncio.sleep(0.5)
        assert not transport.closed and protocol.timeout_keep_alive_task is None
        protocol.data_received(request[split:])
        idle_from = loop.time()
        assert protocol.timeout_keep_alive_task is not None  # armed by its answer
        await until(lambda: transport.closed)
        assert loop.time() - idle_from >= 0.3 - 0.01
        assert [status for status, _, _ in Answers(bytes(transport.written)).items] == [200, 200]

    drive(served, busy, keep_alive=0.3)

    async def over_asgi(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n\r\n")
        await until(lambda: len(Answers(bytes(transport.written)).items) == 1)
        assert not transport.closed and asgi == ["GET /v2/health/live"]
        await until(lambda: transport.closed)  # the ASGI road's answers make it idle alike

    drive(served, over_asgi, keep_alive=1.0)


def test_a_uvicorn_without_what_the_fast_road_relies_on_serves_everything_over_asgi(
    served: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from openlearner.predictor import http

    monkeypatch.setattr(http, "_RELIED_ON", (*http._RELIED_ON, "an_internal_gone_in_this_version"))

    async def scenario(protocol: Any, transport: Transport, dataplane: DataPlane, asgi: list[str]) -> None:
        protocol.data_received(infer("/v2/models/raw_ctr/infer", raw_body(served, 0, "slow road")))
        await until(lambda: len(Answers(bytes(transport.written)).items) == 1)
        [(status, _, body)] = Answers(bytes(transport.written)).items
        assert status == 200 and orjson.loads(body)["id"] == "slow road"
        assert asgi == ["POST /v2/models/raw_ctr/infer"] and dataplane.arriving() == 0

    with caplog.at_level(logging.WARNING, logger="openlearner.predictor"):
        drive(served, scenario)
    assert any("an_internal_gone_in_this_version" in m and "over ASGI" in m for m in caplog.messages)
