"""The predictor benchmark's C load generator (``benchmarks/loadgen.c``) against a server of known speed."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DELAY = 0.003

pytestmark = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
    reason="no C compiler: the predictor benchmark falls back to its Python load generator",
)


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generator expects
    disable_nagle_algorithm = True  # headers and body go in two writes: no delayed-ACK stall

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(DELAY)
        body = b'{"ok": true}'
        self.send_response(200 if self.path == "/ok" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the generator opens 64 connections at once


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> object:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import predictor
    finally:
        sys.path.remove(str(BENCHMARKS))
    loadgen = predictor.build_loadgen(tmp_path_factory.mktemp("loadgen"))
    assert loadgen is not None and loadgen.exists()
    return predictor, loadgen


def _request(path: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 5\r\n\r\nhello".encode()


def test_open_loop_sends_on_schedule_and_times_each_response(port: int, bench: tuple) -> None:
    predictor, loadgen = bench
    began = time.perf_counter()
    answered = predictor._loadgen(loadgen, "open", port, 100, 1.0, [_request("/ok")])
    took = time.perf_counter() - began
    assert len(answered) == 100 and {status for _, status, _ in answered} == {200}
    latencies = sorted(latency for latency, _, _ in answered)
    assert latencies[0] >= DELAY  # no response faster than the server can answer
    assert latencies[50] < 5 * DELAY  # 100 req/s over 64 connections: no queue
    queued = sorted(queued for _, _, queued in answered)
    # each sent when due: none waited for a connection. The tail allows for this process being
    # descheduled a few ms on a busy 2-core machine; a connection wait would be 3 ms per wave.
    assert queued[50] < 0.002 and queued[-1] < 0.05
    assert 0.95 < took < 5  # paced over the second, not sent at once


def test_open_loop_charges_a_request_for_the_time_it_waited_for_a_connection(port: int, bench: tuple) -> None:
    predictor, loadgen = bench
    # 400 requests due within 10 ms, 64 connections, 3 ms a request: most wait for a free
    # connection. Latency counts from when each was due, so it includes that wait.
    answered = predictor._loadgen(loadgen, "open", port, 40_000, 0.01, [_request("/ok")])
    assert len(answered) == 400
    assert max(queued for _, _, queued in answered) > 4 * DELAY  # several waves waited
    assert all(latency >= queued + DELAY for latency, _, queued in answered)


def test_closed_loop_counts_every_answer_and_its_status(port: int, bench: tuple) -> None:
    predictor, loadgen = bench
    answered = predictor._loadgen(loadgen, "closed", port, 4, 0.5, [_request("/ok"), _request("/missing")])
    statuses = [status for _, status, _ in answered]
    # Four connections, each waiting DELAY per request: at most 4 / DELAY per second.
    assert 10 <= len(answered) <= 4 * 0.5 / DELAY + 4
    assert set(statuses) == {200, 404}
    assert all(latency >= DELAY and queued == 0 for latency, _, queued in answered)


def test_latency_at_gives_quantiles_from_the_due_instant_and_counts_failures(port: int, bench: tuple) -> None:
    predictor, loadgen = bench
    p50, p99, over, failed = predictor.latency_at(
        port, [_request("/ok"), _request("/missing")], 100, 0.5, loadgen
    )
    # 50 requests, one 404 in two; each answered after DELAY, none waiting for a connection.
    assert failed == 25
    assert DELAY * 1000 <= p50 <= p99 < 50
    assert over == 1.0  # every answer took DELAY, over 2 ms
    assert predictor._nan_median([float("nan"), 2.0, 1.0, 3.0]) == 2.0
    assert predictor._nan_median([float("nan")]) != predictor._nan_median([float("nan")])  # NaN
    assert predictor._ms_pair(float("nan"), float("nan")) == "–"
    assert predictor._share(float("nan")) == "–" and predictor._share(0.0125) == "1.25%"
    # The JSON written names what was not measured null: standard JSON, not a bare NaN.
    unmeasured = {
        "rounds": [{"p99_ms": float("nan"), "over_2ms": 0.5, "max": float("inf")}],
        "pair": (np.float32("nan"), np.float32(1.5), np.int64(3)),
    }
    written = json.dumps(predictor._measured(unmeasured), allow_nan=False)
    assert json.loads(written) == {
        "rounds": [{"p99_ms": None, "over_2ms": 0.5, "max": None}],
        "pair": [None, 1.5, 3],
    }


def test_tail_counts_answers_over_2_ms_and_agrees_with_the_p99() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import predictor
    finally:
        sys.path.remove(str(BENCHMARKS))
    # Exactly 2 ms is not over it; a hair more is.
    assert predictor.tail([0.001, 0.002, 0.002, 0.0021])[2] == 0.25
    assert predictor.tail([0.002] * 10)[2] == 0.0
    p50, p99, over = predictor.tail([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (p50, p99) == (51.0, 100.0) and over == 0.98
    for n in (1, 7, 99, 100, 101, 250, 1000, 12345):
        for slow in range(min(n, 30) + 1):  # p99 under 2 ms exactly when under 1 % took longer
            latencies = [0.001] * (n - slow) + [0.005] * slow
            _, p99, over = predictor.tail(latencies)
            assert (p99 < 2) == (over < 0.01), (n, slow, p99, over)


def test_stalls_counts_the_time_the_cpu_was_taken_away(bench: tuple) -> None:
    import os
    import subprocess

    predictor, loadgen = bench
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("the benchmark watches CPUs 0 and 1; this process may not run on both")
    measured = predictor.stalls(loadgen, 0.2)  # both CPUs, as the benchmark watches the machine
    assert len(measured) == 2
    for m in measured:
        assert 0 <= m["gaps_over_2ms"] <= m["gaps_over_1ms"] and 0 <= m["lost_share"] <= 1
        assert (m["longest_ms"] > 1) == (m["gaps_over_1ms"] > 0)
    # Sharing its CPU with a busy process, the loop is off the CPU for whole time slices.
    cpu = str(min(os.sched_getaffinity(0)))
    busy = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        run = subprocess.run(
            ["taskset", "-c", cpu, str(loadgen), "stalls", "1"], capture_output=True, text=True, timeout=30
        )
    finally:
        busy.kill()
        busy.wait()
    assert run.returncode == 0, run.stderr
    over1, _, longest, lost = (int(v) for v in run.stdout.split())
    assert over1 >= 5 and longest > 1_000_000 and 0.05 < lost / 1e9 < 0.95, run.stdout


def test_bad_arguments_are_refused(bench: tuple, tmp_path: Path) -> None:
    import subprocess

    _, loadgen = bench
    requests = tmp_path / "requests.bin"
    requests.write_bytes(len(_request("/ok")).to_bytes(4, "little") + _request("/ok"))
    out = str(tmp_path / "out.txt")
    for args, error in [
        (["open", "1", "0", "1", str(requests), out], b"must be positive"),  # the rest: test_grpcload.py
        (["open", "1", "10", "1", str(tmp_path / "missing.bin"), out], b"missing.bin"),
        (["sideways"], b"usage"),
        (["stalls", "0"], b"over 0"),
        (["stalls", "5abc"], b"over 0"),
        (["stalls", "1e9"], b"at most 86400"),
        (["stalls"], b"usage"),
        (["sideways", "1", "1", "1", str(requests), out], b"usage"),
    ]:
        run = subprocess.run([str(loadgen), *args], capture_output=True, timeout=30)
        assert run.returncode != 0 and error in run.stderr, (args, run.stderr)


class _Closing(_Slow):
    """Closes a keep-alive connection idle for 0.3 s, and answers /close with "Connection: close"."""

    timeout = 0.3

    def do_POST(self) -> None:
        if self.path != "/close":
            super().do_POST()
            return
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True


@pytest.fixture(scope="module")
def closing_port() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Closing)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_requests_survive_connections_the_server_closes(closing_port: int, bench: tuple) -> None:
    predictor, loadgen = bench
    # 64 connections used in turn at 213 req/s: each is reused just as the server's 0.3 s
    # keep-alive timeout closes it, so sends race the close; those are sent again.
    answered = predictor._loadgen(loadgen, "open", closing_port, 213, 1.5, [_request("/ok")])
    assert len(answered) == int(213 * 1.5) and {s for _, s, _ in answered} == {200}
    # Every answer closes its connection: each next request goes out on a new one.
    closed = predictor._loadgen(loadgen, "closed", closing_port, 2, 0.5, [_request("/close")])
    assert len(closed) > 10 and {s for _, s, _ in closed} == {200}
