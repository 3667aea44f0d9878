"""Running the predictor: the real server process, ``serve``'s refusals, and library mode."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient  # conftest imported it first, silencing its httpx notice

import openlearner
from openlearner import Settings, Workspace
from openlearner.demo import CONTEXT
from openlearner.errors import Invalid, NotFound, Unavailable
from openlearner.predictor.dataplane import DataPlane
from openlearner.predictor.rest import create_app
from openlearner.predictor.server import (
    GRACEFUL_SECONDS,
    GRPC_EXPERIMENTS,
    LISTENING,
    PredictorProcess,
    choose_grpc_engine,
    free_port,
    serve,
)

KEYS = ["user_id", "ad_id"]


def ads_body(columns: dict[str, list[int]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": [len(columns[n])], "data": columns[n]}
            for n in [*KEYS, *CONTEXT]
        ]
    }


def probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(next(o["data"] for o in response.json()["outputs"] if o["name"] == "probability"))


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes inherit the environment; these tests talk to them without a token."""
    monkeypatch.delenv("OPENLEARNER_AUTH_TOKEN", raising=False)


# -- the real process --------------------------------------------------------------------------
def test_the_server_process_serves_over_http_and_stops_cleanly(served: Any) -> None:
    rows = served.requests.slice(0, 8).to_pydict()
    server = PredictorProcess(served.home).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            assert http.get("/v2/health/ready").json() == {"ready": True}
            assert http.get("/v2/models/ads_ctr").json()["inputs"][0]["name"] == "user_id"
            served_p = probabilities(http.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))
            missing = http.post("/v2/models/nope/infer", json=ads_body(rows))
            assert missing.status_code == 404
            assert "error" in missing.json()
    finally:
        server.stop()
    assert server.process is not None
    # uvicorn re-raises SIGTERM after its graceful shutdown; the SIGKILL fallback would be -9.
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert not port_is_open(server.port)
    offline = served.offline_rows(served.requests.slice(0, 8))
    expected = served.model.predict_proba(offline.select(served.columns))[:, 1]
    np.testing.assert_allclose(served_p, expected, atol=1e-5)


def test_the_process_as_a_context_manager(served: Any) -> None:
    with PredictorProcess(served.home) as server:
        assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert server.process is not None
    assert server.process.poll() is not None


def test_a_process_that_cannot_start_reports_why(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="no OpenLearner workspace"):
        PredictorProcess(tmp_path / "nothing-here").start()


def test_a_process_that_is_not_ready_in_time_reports_and_is_stopped(served: Any) -> None:
    server = PredictorProcess(served.home, startup_timeout=0.0)
    with pytest.raises(Unavailable, match="did not become ready within 0 s"):
        server.start()
    assert server.process is not None
    assert server.process.poll() is not None


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- serve() refusals ----------------------------------------------------------------------------
@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces the uvicorn server's loop with a recorder of the app and the socket it was given."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def record(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None
        host, port = sockets[0].getsockname()[:2]
        nodelay = sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        calls.append({"app": server.config.app, "host": host, "port": port, "nodelay": nodelay})

    monkeypatch.setattr(uvicorn.Server, "run", record)
    return calls


@pytest.fixture
def open_ws(tmp_path: Path) -> Iterator[Workspace]:
    """A workspace whose settings carry no auth token (whatever the environment says)."""
    ws = Workspace.init(settings=Settings(home=tmp_path / "ws", auth_token=None))
    yield ws
    ws.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_serve_refuses_a_non_loopback_host_without_a_token(
    open_ws: Workspace, runs: list[dict[str, Any]], host: str
) -> None:
    assert open_ws.settings.auth_token is None
    with pytest.raises(Invalid, match="without a token"):
        serve(open_ws, host=host, port=free_port())
    assert runs == []  # refused before anything was bound


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_serve_binds_loopback_without_a_token(
    open_ws: Workspace, runs: list[dict[str, Any]], host: str
) -> None:
    port = free_port()
    urls: list[str] = []
    serve(open_ws, host=host, port=port, on_listen=urls.append)
    assert len(runs) == 1 and runs[0]["port"] == port
    assert runs[0]["nodelay"]  # small responses are sent at once, not held for delayed ACKs
    assert ipaddress.ip_address(runs[0]["host"]).is_loopback
    assert urls and urls[0].endswith(f":{port}")


def test_serve_binds_any_host_with_a_token_and_the_app_requires_it(
    tmp_path: Path, runs: list[dict[str, Any]]
) -> None:
    with Workspace.init(settings=Settings(home=tmp_path / "ws", auth_token="t0ken")) as ws:
        serve(ws, host="0.0.0.0", port=free_port())
    assert len(runs) == 1
    with TestClient(runs[0]["app"]) as client:
        assert client.get("/v2").status_code == 401
        assert client.get("/v2", headers={"Authorization": "Bearer t0ken"}).status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_serve_refuses_port_0_for_grpc_with_several_workers(
    open_ws: Workspace, runs: list[dict[str, Any]]
) -> None:
    with pytest.raises(Invalid, match="fixed --grpc-port"):
        serve(open_ws, port=free_port(), grpc_port=0, workers=2)
    assert runs == []


@pytest.mark.parametrize("port", [-1, 65536])
def test_serve_refuses_a_port_out_of_range(open_ws: Workspace, runs: list[dict[str, Any]], port: int) -> None:
    with pytest.raises(Invalid, match="out of range"):
        serve(open_ws, port=port)
    assert runs == []


# -- library mode ----------------------------------------------------------------------------------
def test_library_mode_equals_the_rest_answer(served: Any) -> None:
    rows = served.requests.slice(0, 16).to_pydict()
    predicted = openlearner.Predictor(served.ws).predict(
        "ads_ctr",
        entities={k: rows[k] for k in KEYS},
        inputs={k: rows[k] for k in CONTEXT},
    )
    assert predicted.dtype == np.float32
    assert predicted.shape == (16,)
    app = create_app(DataPlane(served.ws.registry, served.ws.features))
    with TestClient(app) as client:
        rest = probabilities(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))
    np.testing.assert_array_equal(predicted, rest.astype(np.float32))  # JSON carries the float32 exactly


def test_library_mode_takes_numpy_arrays_and_versions(served: Any) -> None:
    predictor = openlearner.Predictor(served.ws)
    matrix = served.matrix[:4]
    for version, native in zip([1, "staging"], served.raw_models, strict=True):
        predicted = predictor.predict("raw_ctr", inputs={"input": matrix}, version=version)
        np.testing.assert_allclose(predicted, native.predict_proba(matrix)[:, 1], atol=1e-5)
    rows = served.requests.slice(0, 3)
    columns = {n: rows.column(n).to_numpy() for n in [*KEYS, *CONTEXT]}
    from_arrays = predictor.predict("ads_ctr", entities={k: columns[k] for k in KEYS}, inputs=columns)
    from_lists = predictor.predict("ads_ctr", inputs={k: v.tolist() for k, v in columns.items()})
    np.testing.assert_array_equal(from_arrays, from_lists)


def test_library_mode_errors(served: Any) -> None:
    predictor = openlearner.Predictor(served.ws)
    rows = {n: [1] for n in [*KEYS, *CONTEXT]}
    with pytest.raises(Invalid, match="missing 'position'"):
        predictor.predict("ads_ctr", inputs={k: v for k, v in rows.items() if k != "position"})
    with pytest.raises(Invalid, match="unknown input"):
        predictor.predict("ads_ctr", inputs={**rows, "weekday": [3]})
    with pytest.raises(Invalid, match="non-integer"):  # 1.5 is not silently truncated to 1
        predictor.predict("ads_ctr", inputs={**rows, "user_id": [1.5]})
    with pytest.raises(Invalid, match="user_id"):
        predictor.predict("ads_ctr", inputs={**rows, "user_id": ["abc"]})
    with pytest.raises(Invalid, match="batch size"):
        predictor.predict("ads_ctr", inputs={**rows, "hour": [1, 2]})
    with pytest.raises(NotFound):
        predictor.predict("nope", inputs=rows)
    with pytest.raises(NotFound):
        predictor.predict("raw_ctr", inputs={"input": served.matrix[:1]}, version="canary")


# -- several workers, and gRPC next to REST -----------------------------------------------------------
def workers_of(pid: int) -> list[int]:
    """The worker processes a server process started (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def wait_for(check: Any, timeout: float = 60.0, server: PredictorProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # not up yet
            found = None
        if found:
            return found
        time.sleep(0.1)
    said = "" if server is None else f"; the server said: {server.output()[-3000:]}"
    raise AssertionError(f"timed out waiting{said}")


def test_workers_share_the_port_a_dead_one_is_replaced_and_grpc_serves_too(served: Any) -> None:
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    args = ["--workers", "2", "--grpc-port", str(grpc_port), "--log-sample-rate", "0"]
    rows = served.requests.slice(0, 2).to_pydict()
    with PredictorProcess(served.home, args=args) as server:
        assert server.process is not None
        workers = wait_for(lambda: w if len(w := workers_of(server.process.pid)) == 2 else None)
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            first = probabilities(http.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))
        grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert wait_for(grpc_client.is_server_ready)
        assert grpc_client.get_model_metadata("ads_ctr").inputs[0].name == "user_id"
        os.kill(workers[0], signal.SIGKILL)
        replaced = wait_for(
            lambda: w if len(w := workers_of(server.process.pid)) == 2 and workers[0] not in w else None,
            server=server,
        )
        assert workers[1] in replaced
        for _ in range(6):  # whichever worker takes the connection answers the same
            with httpx.Client(base_url=server.url, timeout=10.0) as http:
                again = wait_for(lambda: http.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))
            np.testing.assert_array_equal(probabilities(again), first)
        grpc_client.close()
    assert server.process.returncode == 0
    assert not port_is_open(server.port) and not port_is_open(grpc_port)
    for pid in replaced:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes()


def test_a_serving_process_chooses_grpc_s_poller_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc  # noqa: F401  # (imported already, as in this test process)

    monkeypatch.setenv("GRPC_EXPERIMENTS", "-")  # (so that teardown restores what was there)
    monkeypatch.delenv("GRPC_EXPERIMENTS")
    assert not choose_grpc_engine() and "GRPC_EXPERIMENTS" not in os.environ  # too late: grpc is loaded
    monkeypatch.delitem(sys.modules, "grpc")
    assert choose_grpc_engine() and os.environ["GRPC_EXPERIMENTS"] == GRPC_EXPERIMENTS
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")  # the user's choice, even grpc's defaults, stands
    assert not choose_grpc_engine() and os.environ["GRPC_EXPERIMENTS"] == ""
    monkeypatch.delenv("GRPC_EXPERIMENTS")
    monkeypatch.setattr("openlearner.predictor.server._grpcio_release", lambda: (1, 60))
    assert not choose_grpc_engine() and "GRPC_EXPERIMENTS" not in os.environ  # may not know them


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "2", "--grpc-port", "0"], "--grpc-port 0"),
        (["--grpc-port", "0"], "give a port number"),
        (["--grpc-port", "70000"], "gRPC port 70000 is out of range"),
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--log-sample-rate", "2"], "sample rate"),
        (["--canary-percent", "101"], "canary_percent"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(
    served: Any, runs: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from openlearner.cli.main import main

    port = free_port()
    assert main(["--home", str(served.home), "predictor", "serve", "--port", str(port), *args]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert runs == [] and not port_is_open(port)


def test_workers_that_cannot_start_stop_the_command_with_their_reason(
    served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gRPC port in use fails every worker the same way: no restart loop, one error line."""
    from openlearner.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        port = free_port()
        began = time.monotonic()
        args = ["--home", str(served.home), "predictor", "serve", "--port", str(port)]
        code = main([*args, "--workers", "2", "--grpc-port", str(grpc_port)])
    assert code != 0 and time.monotonic() - began < 60
    err = capsys.readouterr().err.strip().splitlines()
    line = next(x for x in err if x.startswith("error: "))
    assert "a predictor worker could not start" in line and f"{grpc_port} for gRPC" in line, err
    assert not port_is_open(port)


def test_a_half_sent_request_does_not_keep_a_stopping_server_up(served: Any) -> None:
    server = PredictorProcess(served.home, args=["--log-sample-rate", "0"]).start()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"POST /v2/models/ads_ctr/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        time.sleep(0.5)
        began = time.monotonic()
        server.stop()
        took = time.monotonic() - began
    # Exited after its graceful shutdown gave up on the request (uvicorn then re-raises
    # SIGTERM), not killed by stop()'s fallback (-9).
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM)
    assert took < GRACEFUL_SECONDS + 8


def _failing_startup(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Child processes whose predictor startup fails while the returned marker file exists
    (a ``sitecustomize`` on their PYTHONPATH makes preloading raise)."""
    marker = folder / "fail-startup"
    (folder / "sitecustomize.py").write_text(
        "import os\n"
        "from openlearner.predictor import dataplane\n"
        "real = dataplane.DataPlane.preload\n"
        "def preload(self, *args, **kwargs):\n"
        f"    if os.path.exists({str(marker)!r}):\n"
        "        raise RuntimeError('the registry database went away')\n"
        "    return real(self, *args, **kwargs)\n"
        "dataplane.DataPlane.preload = preload\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return marker


def test_workers_whose_startup_fails_stop_the_command_instead_of_restarting(
    served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Binding succeeded, the models' preload did not: not 'ready', so no restart loop."""
    from openlearner.cli.main import main

    _failing_startup(tmp_path, monkeypatch).touch()
    began = time.monotonic()
    code = main(
        ["--home", str(served.home), "predictor", "serve", "--port", str(free_port()), "--workers", "2"]
    )
    assert code != 0 and time.monotonic() - began < 60
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("error: "))
    assert "a predictor worker could not start: its startup failed" in line


def test_once_serving_a_replacement_that_cannot_start_is_retried_not_fatal(
    served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _failing_startup(tmp_path, monkeypatch)
    rows = served.requests.slice(0, 2).to_pydict()
    with PredictorProcess(served.home, args=["--workers", "2", "--log-sample-rate", "0"]) as server:
        assert server.process is not None
        wait_for(lambda: LISTENING in server.output())  # every worker has started
        workers = workers_of(server.process.pid)
        marker.touch()  # the registry is away for a while: a replacement cannot start
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(4)  # the replacement fails, and is tried again after 1 s, 2 s, ...
        assert server.process.poll() is None  # still serving, on the worker left
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            assert http.post("/v2/models/ads_ctr/infer", json=ads_body(rows)).status_code == 200
        marker.unlink()  # back: the next try starts a worker
        wait_for(
            lambda: (
                len(workers_of(server.process.pid)) == 2 and workers[0] not in workers_of(server.process.pid)
            )
        )
