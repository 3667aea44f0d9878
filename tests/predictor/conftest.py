"""A small served workspace, built once per test session (tests add aliases, never move these).

``ads_ctr`` reads the Feature Store (entity keys ``user_id``, ``ad_id`` plus the request
inputs ``hour``, ``device``, ``position``); ``raw_ctr`` takes the raw ``input`` FP32
``[-1, F]`` tensor and has two versions (``production`` → 1, ``staging`` → 2).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openlearner import FeatureService, Settings, Source, Workspace
from openlearner.datasets import simulate_ads
from openlearner.demo import CONTEXT, ads_definitions
from openlearner.models.gbdt import GBDTClassifier
from openlearner.predictor.http import protocol_for
from openlearner.predictor.rest import PredictorApp
from openlearner.predictor.server import _listen

KEYS = ["user_id", "ad_id"]

# Starlette's TestClient warns, once at import, that it would rather run on `httpx2`, which
# this environment does not ship; importing it here first keeps that notice out of reports.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*", category=UserWarning)
    import starlette.testclient

TRANSPORTS = ["asgi", "http"]
"""How tests reach the REST app: in-process over ASGI (Starlette's TestClient), or over a
loopback socket to uvicorn with the predictor's HTTP protocol, as ``learner predictor serve``
runs it (inference requests answered from the parser's callbacks)."""


@pytest.fixture(scope="session")
def live() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """:func:`live_server`, for tests that need the predictor on a real socket."""
    return live_server


@pytest.fixture(scope="session")
def serve() -> Callable[[PredictorApp, str], contextlib.AbstractContextManager[httpx.Client]]:
    """:func:`serving`: a client of an app over one of :data:`TRANSPORTS`."""
    return serving


@contextlib.contextmanager
def live_server(app: PredictorApp, *, asgi: Any = None) -> Iterator[str]:
    """``app`` served as ``learner predictor serve`` serves it, from a thread; yields host:port.

    ``asgi``: what uvicorn runs for the requests that go over ASGI (default ``app``), say a
    wrapper that counts them.
    """
    import uvicorn

    sock = _listen("127.0.0.1", 0)
    config = uvicorn.Config(
        app if asgi is None else asgi, http=protocol_for(app), log_level="warning", server_header=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def serving(app: PredictorApp, transport: str) -> Iterator[httpx.Client]:
    """A client of ``app`` over ``transport`` (one of :data:`TRANSPORTS`); the lifespan runs."""
    if transport == "asgi":
        with starlette.testclient.TestClient(app, raise_server_exceptions=False) as client:
            yield client
        return
    with live_server(app) as address, httpx.Client(base_url=f"http://{address}", timeout=30) as client:
        yield client


@dataclass(frozen=True)
class Served:
    """The fixture workspace and what the tests compare the predictor against."""

    ws: Workspace
    home: Path
    service: FeatureService
    columns: list[str]
    """The model's input columns, in order (service features, then request inputs)."""
    model: GBDTClassifier
    """``ads_ctr`` version 1 (production), native."""
    raw_models: tuple[GBDTClassifier, GBDTClassifier]
    """``raw_ctr`` versions 1 and 2, native."""
    end: datetime
    """The time the online store was materialized as of."""
    requests: pa.Table
    """Rows of the last day: keys and request inputs (``user_id``, ``ad_id``, *CONTEXT)."""
    matrix: np.ndarray
    """Feature rows of the last day (float32, ``columns`` order) for the raw model."""

    def offline_rows(self, rows: pa.Table) -> pa.Table:
        """``rows`` (keys + request inputs) with each feature as of ``end``, as the online store has it."""
        spine = rows.append_column(
            "event_time", pa.array([self.end] * rows.num_rows, pa.timestamp("us", tz="UTC"))
        )
        return self.ws.features.training_set(spine, self.service)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Three days of simulated ads, ``ads_ctr`` (with features) and ``raw_ctr`` (raw tensor)."""
    home = tmp_path_factory.mktemp("predictor") / "ws"
    ws = Workspace.init(settings=Settings(home=home, auth_token=None))
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=3)
    events = simulate_ads(days=3, impressions_per_day=3000, seed=1, start=start)
    folder = ws.settings.data_dir / "ads_events"
    folder.mkdir(parents=True)
    pq.write_table(events, folder / "events.parquet")
    source = Source.parquet(folder / "*.parquet", timestamp="event_time", name="ads_events")
    user, ad, user_stats, ad_stats, service = ads_definitions(source)
    ws.features.apply([user, ad, source, user_stats, ad_stats, service])

    table = ws.features.training_set(events.select(["event_time", *KEYS, *CONTEXT, "clicked"]), service)
    columns = [*service.columns, *CONTEXT]
    labels = table.column("clicked")
    model = GBDTClassifier(num_trees=20, seed=1).fit(table.select(columns), labels)
    sample = table.slice(table.num_rows - 500).select(columns)
    ws.registry.register("ads_ctr", model, sample=sample, features=service)
    ws.registry.set_alias("ads_ctr", "production", 1)

    raw_models = (
        GBDTClassifier(num_trees=5, seed=1).fit(table.select(columns), labels),
        GBDTClassifier(num_trees=10, num_leaves=7, seed=2).fit(table.select(columns), labels),
    )
    for raw in raw_models:
        ws.registry.register("raw_ctr", raw, sample=sample)
    ws.registry.set_alias("raw_ctr", "production", 1)
    ws.registry.set_alias("raw_ctr", "staging", 2)

    end = datetime.now(UTC)
    ws.features.materialize(end=end)
    last_day = table.slice(table.num_rows - 200)
    matrix = np.column_stack(
        [last_day.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in columns]
    )
    yield Served(
        ws=ws,
        home=home,
        service=service,
        columns=columns,
        model=model,
        raw_models=raw_models,
        end=end,
        requests=last_day.select([*KEYS, *CONTEXT]),
        matrix=matrix,
    )
    ws.close()


@pytest.fixture
def tiny(workspace: Workspace) -> Workspace:
    """A workspace with one raw model, ``tiny`` version 1 (production)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(np.int64)
    table = {f"f{i}": x[:, i] for i in range(3)}
    model = GBDTClassifier(num_trees=3, min_child_samples=5).fit(table, y)
    workspace.registry.register("tiny", model, sample=table)
    workspace.registry.set_alias("tiny", "production", 1)
    return workspace


@pytest.fixture
def tiny_graph(tiny: Workspace) -> Path:
    """Where the local artifact store keeps ``tiny`` version 1's ONNX graph (to damage it)."""
    digest = tiny.registry.get("tiny", version=1).artifact_digest
    return tiny.root / "artifacts" / "sha256" / digest[:2] / digest[2:]


@pytest.fixture
def grpc_usual_taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the gRPC usual road took each request it was offered, in order (it watches
    ``grpc.usual_inputs``, which imports grpc)."""
    import openlearner.predictor.grpc as grpc_module

    taken: list[bool] = []
    decode = grpc_module.usual_inputs

    def watched(*args: Any) -> Any:
        found = decode(*args)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(grpc_module, "usual_inputs", watched)
    return taken
