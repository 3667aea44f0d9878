"""The predictor benchmark's C gRPC load generator (``benchmarks/grpcload.c``) against a gRPC
server of known speed: grpc's own threaded server, whose handler sleeps, echoes what it was
sent, or fails the call."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DELAY = 0.003
METHOD = "/inference.GRPCInferenceService/ModelInfer"

pytestmark = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
    reason="no C compiler: the predictor benchmark falls back to its Python gRPC client",
)


def _infer(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(DELAY)
    if request.startswith(b"fail"):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "asked to fail")
    return request[:16] or b"ok"


def _serve(options: list[tuple[str, Any]]) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(64), options=options)
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(_infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server, port = _serve([])
    yield port
    server.stop(None)


@pytest.fixture(scope="module")
def narrow_port() -> Iterator[int]:
    """A server that takes two streams at once on a connection (HTTP/2's setting)."""
    server, port = _serve([("grpc.max_concurrent_streams", 2)])
    yield port
    server.stop(None)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import predictor
    finally:
        sys.path.remove(str(BENCHMARKS))
    grpcload = predictor.build_loadgen(tmp_path_factory.mktemp("grpcload"), "grpcload.c")
    assert grpcload is not None and grpcload.exists()
    return predictor, grpcload


@pytest.fixture(scope="module")
def loadgen(bench: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTTP generator, built from the same header (its own tests are in test_loadgen.py)."""
    predictor, _ = bench
    built = predictor.build_loadgen(tmp_path_factory.mktemp("loadgen"))
    assert built is not None and built.exists()
    return Path(built)


def test_open_loop_sends_on_schedule_and_times_each_call(port: int, bench: tuple) -> None:
    predictor, grpcload = bench
    began = time.perf_counter()
    # 16 KB calls (one frame each), 1.6 MB in all: far past HTTP/2's first 64 KB window, so
    # the server's window updates must be counted for the calls to go on.
    answered = predictor._loadgen(grpcload, "open", port, 100, 1.0, [b"x" * 16_000])
    took = time.perf_counter() - began
    assert len(answered) == 100 and {status for _, status, _ in answered} == {200}
    latencies = sorted(latency for latency, _, _ in answered)
    assert latencies[0] >= DELAY  # no answer faster than the server gives it
    assert latencies[50] < 5 * DELAY  # 100 calls a second, each its own stream: no queue
    queued = sorted(queued for _, _, queued in answered)
    assert queued[50] < 0.002 and queued[-1] < 0.5  # each sent when due (allowing for preemption)
    assert 0.95 < took < 5  # paced over the second, not sent at once


def test_closed_loop_counts_every_call_and_tells_failures(port: int, bench: tuple) -> None:
    predictor, grpcload = bench
    answered = predictor._loadgen(grpcload, "closed", port, 4, 0.5, [b"ok", b"fail please"])
    statuses = [status for _, status, _ in answered]
    # Four streams, each waiting DELAY per call: at most 4 / DELAY a second.
    assert 10 <= len(answered) <= 4 * 0.5 / DELAY + 4
    assert set(statuses) == {200, 0}  # a failed call is answered with trailers alone
    assert abs(statuses.count(200) - statuses.count(0)) <= 4  # the two requests in turn
    assert all(latency >= DELAY and queued == 0 for latency, _, queued in answered)


def test_the_servers_stream_limit_holds_calls_back_and_charges_their_wait(
    narrow_port: int, bench: tuple
) -> None:
    predictor, grpcload = bench
    # 100 calls due within 10 ms, two streams at once, 3 ms a call: most wait to be sent. grpc
    # refuses some streams just past its limit (RST_STREAM REFUSED_STREAM): those are sent again.
    answered = predictor._loadgen(grpcload, "open", narrow_port, 10_000, 0.01, [b"ok"])
    assert len(answered) == 100 and {status for _, status, _ in answered} == {200}
    assert max(queued for _, _, queued in answered) > 20 * DELAY  # waves of two waited
    assert all(latency >= queued + DELAY for latency, _, queued in answered)
    # At most two out at once: the last answer comes no sooner than 50 waves of DELAY.
    assert max(latency for latency, _, _ in answered) >= 50 * DELAY


def test_latency_at_counts_failed_calls(port: int, bench: tuple) -> None:
    predictor, grpcload = bench
    p50, p99, over, failed = predictor.latency_at(port, [b"ok", b"fail"], 100, 0.5, grpcload)
    assert failed == 25  # 50 calls, every other one failed
    assert DELAY * 1000 <= p50 <= p99 < 500 and over == 1.0


def _unused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_arguments_and_a_missing_server_are_refused(bench: tuple, tmp_path: Path) -> None:
    _, grpcload = bench
    requests = tmp_path / "requests.bin"
    requests.write_bytes((2).to_bytes(4, "little") + b"ok")
    too_big = tmp_path / "big.bin"
    too_big.write_bytes((20_000).to_bytes(4, "little") + b"x" * 20_000)
    out = str(tmp_path / "out.txt")
    free = _unused_port()
    for args, error in [
        (["open", "1", "10", "1", str(tmp_path / "missing.bin"), out], b"missing.bin"),
        (["open", str(free), "10", "1", str(too_big), out], b"over one HTTP/2 frame"),
        (["open", str(free), "10", "1", str(requests), out], b"connect"),
        (["sideways", "1", "1", "1", str(requests), out], b"usage"),
        (["open"], b"usage"),
    ]:
        run = subprocess.run([str(grpcload), *args], capture_output=True, timeout=30)
        assert run.returncode != 0 and error in run.stderr, (args, run.stderr)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["open", "1", "0", "1"], b"must be positive"),
        (["open", "70000", "10", "1"], b"PORT must be"),
        (["open", "9001x", "10", "1"], b"PORT must be"),
        (["open", "0x50", "10", "1"], b"PORT must be"),
        (["open", "1", "nan", "1"], b"must be positive"),
        (["open", "1", "inf", "1"], b"must be positive"),
        (["closed", "1", "0.5", "1"], b"whole number"),
        (["closed", "1", "100001", "1"], b"whole number up to"),
        (["open", "1", "10", "5s"], b"SECONDS must be"),
        (["open", "1", "10", "0"], b"SECONDS must be"),
        (["open", "1", "0.5", "1"], b"at least one request"),
    ],
)
def test_both_generators_refuse_bad_load_arguments(
    bench: tuple, loadgen: Path, tmp_path: Path, args: list[str], error: bytes
) -> None:
    """loadgen.c and grpcload.c check PORT, CONNECTIONS|STREAMS|RATE and SECONDS alike (loadgen.h)."""
    _, grpcload = bench
    requests = tmp_path / "requests.bin"
    requests.write_bytes((2).to_bytes(4, "little") + b"ok")
    for program in (loadgen, grpcload):
        run = subprocess.run(
            [str(program), *args, str(requests), str(tmp_path / "out.txt")], capture_output=True, timeout=30
        )
        assert run.returncode == 2 and error in run.stderr, (program.name, args, run.stderr)
