"""Versions coming and going: alias moves, draining, failed loads, rollouts and metrics."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from openlearner import Workspace
from openlearner.demo import CONTEXT
from openlearner.errors import Corrupt, Unavailable
from openlearner.models.gbdt import GBDTClassifier
from openlearner.predictor import DataPlane
from openlearner.predictor import dataplane as dataplane_module
from openlearner.predictor.batching import BatchSettings
from openlearner.predictor.predictionlog import PredictionLog
from openlearner.predictor.protocol import InferenceRequest, InferInput
from openlearner.predictor.rest import create_app
from openlearner.predictor.rollouts import RolloutSettings, in_canary

X = np.random.default_rng(5).normal(size=(40, 3)).astype(np.float32)


def request(matrix: np.ndarray, request_id: str | None = None) -> InferenceRequest:
    return InferenceRequest([InferInput("input", "FP32", list(matrix.shape), matrix)], id=request_id)


def probability(response: Any) -> np.ndarray:
    return next(o.data for o in response.outputs if o.name == "probability")


@pytest.fixture
def versions(tiny: Workspace) -> Iterator[tuple[Workspace, list[GBDTClassifier]]]:
    """``tiny`` with versions 1-3, each a different model; production → 1."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    table = {f"f{i}": x[:, i] for i in range(3)}
    first = GBDTClassifier(num_trees=3, min_child_samples=5)  # a stand-in: version 1 is the conftest's
    models = [first]
    for seed, column in ((2, 1), (3, 2)):
        model = GBDTClassifier(num_trees=4, min_child_samples=5, seed=seed).fit(
            table, (x[:, column] > 0).astype(int)
        )
        tags = {"canary_percent": "30"} if seed == 3 else None
        tiny.registry.register("tiny", model, sample=table, tags=tags)
        models.append(model)
    yield tiny, models


def graph_path(ws: Workspace, version: int) -> Path:
    digest = ws.registry.get("tiny", version=version).artifact_digest
    return ws.root / "artifacts" / "sha256" / digest[:2] / digest[2:]


def metric(plane: DataPlane, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(plane.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# -- hot swap ----------------------------------------------------------------------------------
def test_an_alias_move_switches_and_the_old_version_drains_without_failing_a_request(
    versions: tuple[Workspace, list[Any]],
) -> None:
    ws, models = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, batching=BatchSettings(max_delay=1.0))
    old = plane.model("tiny")
    assert old.number == 1
    queued = old.submit({"input": X[:2]}, 2)  # waits for company in the old version's queue
    ws.registry.set_alias("tiny", "production", 2)
    new = plane.model("tiny")
    assert new.number == 2
    assert old.batcher is not None and old.batcher.closed
    assert queued.result(10).outputs["probability"].shape == (2,)  # drained, not failed
    late = old.submit({"input": X[:1]}, 1)  # a request that resolved the old version just before the move
    assert late.result(10).outputs["probability"].shape == (1,)
    answer = plane.infer("tiny", None, request(X[:5]))
    assert answer.model_version == "2"
    np.testing.assert_allclose(probability(answer), models[1].predict_proba(X[:5])[:, 1], atol=1e-5)
    assert plane.model("tiny", "1") is not old  # retired; asking by number loads it again
    plane.close()


def test_a_retired_version_is_freed(versions: tuple[Workspace, list[Any]]) -> None:
    """Nothing keeps a retired version (its runtime, its batcher) alive once it has drained."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0)
    old = plane.model("tiny")
    batcher = old.batcher
    assert batcher is not None
    ws.registry.set_alias("tiny", "production", 2)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "2"
    batcher.join(10)
    gone = weakref.ref(old)
    del old, batcher
    gc.collect()
    assert gone() is None
    plane.close()


def test_a_version_that_fails_to_load_leaves_the_old_one_serving_and_is_reported(
    versions: tuple[Workspace, list[Any]],
) -> None:
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, load_retry=3600.0)
    assert plane.model("tiny").number == 1
    path = graph_path(ws, 2)
    good = path.read_bytes()
    path.write_bytes(b"damaged")
    ws.registry.set_alias("tiny", "production", 2)
    for _ in range(3):
        assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    assert "corrupt" in plane.failures()["tiny:2"]
    assert metric(plane, "openlearner_predictor_load_failures_total", model="tiny", version="2") == 1.0
    assert plane._loading == {}  # no load gate left behind by the failed version
    path.write_bytes(good)  # repaired, but the failure is remembered: the artifact is not re-read
    assert plane.model("tiny").number == 1
    with pytest.raises(Corrupt, match="tiny version 2 cannot be served"):
        plane.model("tiny", "2")
    plane.load_retry = 0.0  # once the retry interval has passed, the repaired version is loaded
    assert plane.model("tiny").number == 2
    assert plane.failures() == {}
    plane.close()


class _GatedRegistry:
    """Records which thread asks the registry, and holds background questions at a gate."""

    def __init__(self, ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real_get, self.real_aliases = ws.registry.get, ws.registry.aliases
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.failure: Exception | None = None
        monkeypatch.setattr(ws.registry, "get", self.get)
        monkeypatch.setattr(ws.registry, "aliases", self.aliases)

    def _asked(self) -> None:
        name = threading.current_thread().name
        self.threads.append(name)
        if name.startswith("openlearner-alias"):
            assert self.gate.wait(10)
            if self.failure is not None:
                raise self.failure

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self._asked()
        return self.real_get(*args, **kwargs)

    def aliases(self, *args: Any, **kwargs: Any) -> Any:
        self._asked()
        return self.real_aliases(*args, **kwargs)


def _eventually(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the background refresh did not land"
        time.sleep(0.005)


def test_with_background_refresh_no_request_waits_on_the_registry_for_a_move(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, models = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    old = plane.model("tiny")  # an alias seen for the first time is resolved by the caller
    assert old.number == 1
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"  # and the canary, shadow
    ws.registry.set_alias("tiny", "production", 2)
    registry = _GatedRegistry(ws, monkeypatch)
    registry.gate.clear()
    for _ in range(50):  # stale, so each call wants a refresh: one is asked, the rest served as cached
        assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
        assert plane.warm("tiny")
    assert all(t.startswith("openlearner-alias") for t in registry.threads), registry.threads
    assert len(registry.threads) <= 1  # one question at a time per model, for all its aliases
    registry.gate.set()
    _eventually(lambda: plane.model("tiny").number == 2)
    assert old.batcher is not None and old.batcher.closed
    answer = plane.infer("tiny", None, request(X[:5]))
    np.testing.assert_allclose(probability(answer), models[1].predict_proba(X[:5])[:, 1], atol=1e-5)
    assert all(t.startswith("openlearner-alias") for t in registry.threads)
    plane.close()
    assert plane.model("tiny").number == 2  # after close, asked in the caller's thread again
    assert registry.threads[-1] == threading.current_thread().name


def test_with_background_refresh_an_unreachable_registry_or_a_bad_version_keeps_the_old_one(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, load_retry=3600.0, background_refresh=True)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    ws.registry.set_alias("tiny", "production", 2)
    registry = _GatedRegistry(ws, monkeypatch)
    registry.failure = Unavailable("the registry database is unreachable")
    with caplog.at_level("WARNING", logger="openlearner.predictor"):
        for _ in range(20):
            assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
        _eventually(lambda: "unreachable" in caplog.text)
    graph_path(ws, 2).write_bytes(b"damaged")
    registry.failure = None  # the registry answers again; version 2 cannot load

    def failed() -> bool:
        assert plane.infer("tiny", None, request(X[:1])).model_version == "1"  # each asks again
        return "tiny:2" in plane.failures()

    _eventually(failed)
    for _ in range(20):
        assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
        assert plane.warm("tiny")  # the failure is remembered: no request tries to load it
    assert metric(plane, "openlearner_predictor_load_failures_total", model="tiny", version="2") == 1.0
    plane.close()


def test_a_request_waiting_on_its_own_thread_never_loads_a_version_of_a_warm_model(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC's road (infer_batched, on a thread of its own) serves a warm model as the event loop
    # does: a version its alias moved to, which fails to load, is tried again by the background
    # thread alone each time its retry is due, never by a request.
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, load_retry=0.2, background_refresh=True)
    assert plane.infer_batched("tiny", None, request(X[:1])).model_version == "1"
    graph_path(ws, 2).write_bytes(b"damaged")
    ws.registry.set_alias("tiny", "production", 2)
    loads: list[str] = []
    load = dataplane_module.load_model

    def recording(*args: Any, **kwargs: Any) -> Any:
        loads.append(threading.current_thread().name)
        return load(*args, **kwargs)

    monkeypatch.setattr(dataplane_module, "load_model", recording)
    for _ in range(40):  # a second: the retry falls due several times
        assert plane.infer_batched("tiny", None, request(X[:1])).model_version == "1"
        time.sleep(0.025)
    _eventually(lambda: len(loads) >= 2)  # (tried, and tried again once its retry was due)
    assert all(t.startswith("openlearner-alias") for t in loads), loads
    plane.close()


def test_with_background_refresh_a_version_an_alias_still_names_is_not_retired(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production moves on while the shadow is set to the old version: the old one stays
    loaded, and no request loads anything on its own thread."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    old = plane.model("tiny")
    ws.registry.set_alias("tiny", "production", 2)
    ws.registry.set_alias("tiny", "shadow", 1)
    registry = _GatedRegistry(ws, monkeypatch)

    def moved() -> bool:
        route = plane.route("tiny", None, request(X[:1]), load=False)
        return route.model.number == 2 and route.shadow is not None and route.shadow.number == 1

    _eventually(moved)
    assert old.batcher is not None and not old.batcher.closed
    assert all(t.startswith("openlearner-alias") for t in registry.threads), registry.threads
    plane.close()


def test_with_background_refresh_an_alias_unasked_for_long_is_resolved_by_the_request(
    versions: tuple[Workspace, list[Any]],
) -> None:
    """After an idle spell longer than ``stale_limit`` the first request sees the move itself."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    ws.registry.set_alias("tiny", "production", 2)
    plane.stale_limit = 0.0  # every cached answer counts as too old
    assert not plane.warm("tiny")  # so the transports resolve it off the event loop first
    assert plane.infer("tiny", None, request(X[:1])).model_version == "2"
    plane.close()


def test_after_an_idle_spell_an_unreachable_registry_keeps_the_version_served(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The request resolves a long-unasked alias itself; the registry's driver error must not
    fail it (nor every request after it): the version the alias named serves meanwhile."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    plane.stale_limit = 0.0  # an idle spell: every cached answer counts as too old

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("could not connect to server")  # what a database driver raises, say

    monkeypatch.setattr(ws.registry, "aliases", unreachable)
    with caplog.at_level("WARNING", logger="openlearner.predictor"):
        for _ in range(3):
            assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    assert "could not connect" in caplog.text
    with TestClient(create_app(plane, close_on_shutdown=False)) as client:
        body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": X[:1].tolist()}]}
        assert client.post("/v2/models/tiny/infer", json=body).json()["model_version"] == "1"
    # A model this predictor never resolved: nothing to fall back on, so 503 (retry), not a 500.
    fresh = DataPlane(ws.registry, ws.features, background_refresh=True)
    with pytest.raises(Unavailable, match="registry did not answer"):
        fresh.model("tiny")
    with TestClient(create_app(fresh)) as client:
        response = client.get("/v2/models/tiny")
        assert response.status_code == 503 and "registry did not answer" in response.json()["error"]
    plane.close()


def test_a_version_asked_for_by_number_is_served_though_retired_while_its_body_was_read(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production moves off version 1 and the refresh retires it while a large request for
    ``versions/1`` is being decoded: the request loads it again rather than failing with 503."""
    from openlearner.predictor import rest

    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    plane.preload()
    real_decode = rest.decode_request
    moved: list[bool] = []

    def decode(*args: Any, **kwargs: Any) -> Any:
        if not moved:
            moved.append(True)
            ws.registry.set_alias("tiny", "production", 2)
            plane.warm("tiny")  # starts the background refresh, which switches and retires 1
            _eventually(lambda: ("tiny", 1) not in plane._loaded)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(rest, "decode_request", decode)
    rows = np.random.default_rng(0).normal(size=(3000, 3)).round(6)  # over 64 KiB: decoded off the loop
    body = {"inputs": [{"name": "input", "shape": [3000, 3], "datatype": "FP32", "data": rows.tolist()}]}
    with TestClient(create_app(plane, close_on_shutdown=False), raise_server_exceptions=False) as client:
        response = client.post("/v2/models/tiny/versions/1/infer", json=body)
    assert moved and response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"
    plane.close()


def test_the_background_refresh_switches_what_it_loads_and_retires_what_it_replaces(
    versions: tuple[Workspace, list[Any]],
) -> None:
    """A move seen by the refresh alone (no request after it) must not leave versions loaded
    that nothing serves: promoted and rolled back, or an alias asked for once and moved on."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    first = plane.model("tiny")
    ws.registry.set_alias("tiny", "production", 2)

    def serving(alias: str, number: int) -> bool:
        plane.warm("tiny", alias)  # each look starts a refresh; no request is answered
        return plane._serving[("tiny", alias)].number == number

    _eventually(lambda: serving("production", 2))
    assert first.batcher is not None and first.batcher.closed  # drained and freed
    ws.registry.set_alias("tiny", "production", 1)  # rolled back
    _eventually(lambda: serving("production", 1))
    ws.registry.set_alias("tiny", "staging", 2)
    assert plane.infer("tiny", "staging", request(X[:1])).model_version == "2"  # asked for once
    for number in (3, 1, 3):
        ws.registry.set_alias("tiny", "staging", number)
        _eventually(lambda n=number: serving("staging", n))
    _eventually(lambda: {n for _, n in plane._loaded} == {1, 3})
    plane.close()


def test_a_version_clients_name_by_number_is_not_retired_under_them(
    versions: tuple[Workspace, list[Any]],
) -> None:
    """An alias asked for once moves off version 2 while clients keep asking for version 2 by
    number: the refresh's switch leaves it loaded."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0, background_refresh=True)
    ws.registry.set_alias("tiny", "staging", 2)
    assert plane.infer("tiny", "staging", request(X[:1])).model_version == "2"
    pinned = plane.model("tiny", "2")
    assert plane.infer("tiny", "2", request(X[:1])).model_version == "2"
    ws.registry.set_alias("tiny", "staging", 3)

    def moved() -> bool:
        plane.warm("tiny", "staging")
        return plane._serving[("tiny", "staging")].number == 3

    _eventually(moved)
    assert ("tiny", 2) in plane._loaded and pinned.batcher is not None and not pinned.batcher.closed
    assert plane.warm("tiny", "2")
    plane.close()


def test_versions_only_named_by_number_are_retired_once_clients_stop_naming_them(
    versions: tuple[Workspace, list[Any]],
) -> None:
    """Clients pinned to versions 2, then 3, by number: each stays loaded while named and is
    retired (drained, then freed from the server) once nobody has named it for ``stale_limit``;
    the version production serves never is."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0)
    plane.stale_limit = 0.2
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"
    production = plane.model("tiny")
    pinned = plane.model("tiny", "2")
    assert plane.infer("tiny", "2", request(X[:1])).model_version == "2"
    assert plane.model("tiny", "2") is pinned  # named again within the limit: kept
    time.sleep(0.25)
    assert plane.infer("tiny", "3", request(X[:1])).model_version == "3"  # looks over the others
    assert ("tiny", 2) not in plane._loaded
    assert pinned.batcher is not None and pinned.batcher.closed
    assert production.batcher is not None and not production.batcher.closed
    time.sleep(0.25)
    assert plane.infer("tiny", None, request(X[:1])).model_version == "1"  # asks the registry: looks over
    assert {n for _, n in plane._loaded} == {1}
    assert plane.infer("tiny", "2", request(X[:1])).model_version == "2"  # loaded again on demand
    plane.close()


def test_a_version_swept_just_as_a_request_names_it_is_loaded_again(
    versions: tuple[Workspace, list[Any]],
) -> None:
    """The background refresh retires version 2 between a request finding it and recording
    that it named it: the request gets it loaded again, not the retired one."""
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features, alias_refresh=0.0)
    plane.stale_limit = 0.05
    first = plane.model("tiny", "2")
    real = plane._version

    def found_then_swept(name: str, number: int, *, load: bool = True) -> Any:
        found = real(name, number, load=load)
        if found is first:
            plane._sweep(time.monotonic() + 1)  # (as if a second had passed since it was named)
        return found

    plane._version = found_then_swept  # type: ignore[method-assign]
    again = plane.model("tiny", "2")
    assert first.batcher is not None and first.batcher.closed
    assert again is not first and again.batcher is not None and not again.batcher.closed
    assert plane._loaded[("tiny", 2)] is again
    plane.close()


def test_a_request_without_an_id_learns_the_one_its_prediction_is_logged_under(
    versions: tuple[Workspace, list[Any]], tmp_path: Path
) -> None:
    ws, _ = versions
    plane = DataPlane(
        ws.registry, ws.features, prediction_log=PredictionLog(tmp_path / "log", sample_rate=1.0)
    )
    answers = [plane.infer("tiny", None, request(X[:1])) for _ in range(3)]
    assert plane.infer("tiny", None, request(X[:1], "mine")).id == "mine"
    plane.close()
    logged = {
        r["request_id"] for r in pads.dataset(tmp_path / "log", format="parquet").to_table().to_pylist()
    }
    ids = {a.id for a in answers}
    assert None not in ids and len(ids) == 3 and logged == ids | {"mine"}


def test_error_bodies_do_not_reveal_server_paths(versions: tuple[Workspace, list[Any]]) -> None:
    ws, _ = versions
    graph_path(ws, 3).unlink()
    graph_path(ws, 2).write_bytes(b"damaged")
    with TestClient(create_app(DataPlane(ws.registry, ws.features))) as client:
        for version in ("2", "3"):
            response = client.get(f"/v2/models/tiny/versions/{version}/ready")
            assert response.status_code == 503
            assert str(ws.root) not in response.text and "/tmp" not in response.text
            assert f"tiny version {version} cannot be served" in response.json()["error"]


# -- rollouts ------------------------------------------------------------------------------------
def test_a_canary_takes_a_stable_share_of_requests_by_id(versions: tuple[Workspace, list[Any]]) -> None:
    ws, _ = versions
    ws.registry.set_alias("tiny", "canary", 3)  # version 3 is tagged canary_percent=30
    plane = DataPlane(ws.registry, ws.features)
    served = [plane.infer("tiny", None, request(X[:1], f"req-{i}")).model_version for i in range(300)]
    share = served.count("3") / len(served)
    assert set(served) == {"1", "3"}
    assert 0.2 < share < 0.4
    assert served == [plane.infer("tiny", None, request(X[:1], f"req-{i}")).model_version for i in range(300)]
    expected = ["3" if in_canary(f"req-{i}", 30) else "1" for i in range(300)]
    assert served == expected
    assert plane.infer("tiny", "production", request(X[:1], "req-0")).model_version == served[0]
    assert plane.infer("tiny", "1", request(X[:1], "req-0")).model_version == "1"  # explicit: no rollout
    plane.close()


def test_the_canary_share_comes_from_the_predictor_without_a_tag(
    versions: tuple[Workspace, list[Any]],
) -> None:
    ws, _ = versions
    ws.registry.set_alias("tiny", "canary", 2)
    none = DataPlane(ws.registry, ws.features, rollouts=RolloutSettings(canary_percent=0))
    every = DataPlane(ws.registry, ws.features, rollouts=RolloutSettings(canary_percent=100))
    for i in range(20):
        assert none.infer("tiny", None, request(X[:1], str(i))).model_version == "1"
        assert every.infer("tiny", None, request(X[:1], str(i))).model_version == "2"
    none.close()
    every.close()


def declare_fp64(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[np.dtype[Any]]:
    """Make ``model`` declare an FP64 input (its graph takes FP32); the dtypes it is run on."""
    from openlearner.registry.signature import TensorSpec

    monkeypatch.setattr(model, "inputs", [TensorSpec("input", "FP64", [-1, 3])])
    real, seen = model.runtime.infer, []

    def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(feeds["input"].dtype)
        return real({"input": feeds["input"].astype(np.float32)})

    monkeypatch.setattr(model.runtime, "infer", infer)
    return seen


def test_library_mode_builds_a_canary_s_request_from_the_canary_s_signature(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inputs are checked against the version that answers: a canary whose input has
    another datatype gets its share of calls, not an input error."""
    from openlearner import Predictor

    ws, _ = versions
    ws.registry.set_alias("tiny", "canary", 3)  # its tag: 30 % of the traffic
    predictor = Predictor(ws)
    seen = declare_fp64(predictor.dataplane.model("tiny", "canary"), monkeypatch)
    for i in range(40):  # routed by a random key without entity keys or an id: ~12 to the canary
        assert predictor.predict("tiny", inputs={"input": X[i : i + 1]}).shape == (1,)
    assert seen and set(seen) == {np.dtype(np.float64)}


def test_a_shadow_sees_every_request_is_logged_next_to_it_and_never_answers(
    versions: tuple[Workspace, list[Any]], tmp_path: Path
) -> None:
    ws, models = versions
    ws.registry.set_alias("tiny", "shadow", 2)
    log = PredictionLog(tmp_path / "predictions", sample_rate=0.0)
    plane = DataPlane(ws.registry, ws.features, prediction_log=log)
    answers = [plane.infer("tiny", None, request(X[i : i + 2], f"r{i}")) for i in range(5)]
    assert {a.model_version for a in answers} == {"1"}
    plane.close()  # drains the shadow's queue and writes the log
    table = pads.dataset(tmp_path / "predictions", format="parquet").to_table().to_pylist()
    assert {(r["role"], r["version"]) for r in table} == {("primary", 1), ("shadow", 2)}
    for i, answer in enumerate(answers):
        primary = [r for r in table if r["request_id"] == f"r{i}" and r["role"] == "primary"]
        shadow = [r for r in table if r["request_id"] == f"r{i}" and r["role"] == "shadow"]
        assert [r["outputs"]["probability"] for r in primary] == pytest.approx(probability(answer).tolist())
        expected = models[1].predict_proba(X[i : i + 2])[:, 1]
        assert [r["outputs"]["probability"] for r in shadow] == pytest.approx(expected.tolist(), abs=1e-5)
        np.testing.assert_allclose([r["inputs"]["input"] for r in shadow], X[i : i + 2])
    assert (
        metric(plane, "openlearner_predictor_shadow_requests_total", version="2", outcome="answered") == 5.0
    )


def test_a_shadow_whose_inputs_differ_only_in_datatype_gets_them_in_its_own(
    versions: tuple[Workspace, list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirrored request is typed for production; a shadow declaring FP64 where production
    takes FP32 is sent FP64 (and answers), not refused for the datatype."""
    ws, models = versions
    ws.registry.set_alias("tiny", "shadow", 2)
    log = PredictionLog(tmp_path / "predictions", sample_rate=0.0)
    plane = DataPlane(ws.registry, ws.features, prediction_log=log)
    seen = declare_fp64(plane.model("tiny", "shadow"), monkeypatch)
    for i in range(5):
        assert plane.infer("tiny", None, request(X[i : i + 2], f"r{i}")).model_version == "1"
    plane.close()
    assert seen and set(seen) == {np.dtype(np.float64)}
    table = pads.dataset(tmp_path / "predictions", format="parquet").to_table().to_pylist()
    for i in range(5):
        shadowed = [r for r in table if r["request_id"] == f"r{i}" and r["role"] == "shadow"]
        expected = models[1].predict_proba(X[i : i + 2])[:, 1]
        assert [r["outputs"]["probability"] for r in shadowed] == pytest.approx(expected.tolist(), abs=1e-5)
    assert metric(plane, "openlearner_predictor_shadow_requests_total", version="2", outcome="answered") == 5
    assert metric(plane, "openlearner_predictor_shadow_requests_total", version="2", outcome="refused") == 0


def test_a_shadow_is_refused_inputs_its_datatypes_cannot_take(
    versions: tuple[Workspace, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Floats are not cut to integers for a shadow that declares INT64: the mirror is refused
    (counted, and logged with why), the request is answered by production all the same."""
    from openlearner.registry.signature import TensorSpec

    ws, _ = versions
    ws.registry.set_alias("tiny", "shadow", 2)
    plane = DataPlane(ws.registry, ws.features)
    monkeypatch.setattr(plane.model("tiny", "shadow"), "inputs", [TensorSpec("input", "INT64", [-1, 3])])
    with caplog.at_level(logging.WARNING, logger="openlearner.predictor"):
        assert plane.infer("tiny", None, request(np.round(X[:1]))).model_version == "1"
    plane.close()
    assert "does not fit the shadow's INT64: floats cannot be sent as INT64" in caplog.text
    assert metric(plane, "openlearner_predictor_shadow_requests_total", version="2", outcome="refused") == 1
    assert metric(plane, "openlearner_predictor_shadow_requests_total", version="2", outcome="answered") == 0


# -- metrics --------------------------------------------------------------------------------------
def test_metrics_count_requests_errors_latency_batches_and_queues(
    versions: tuple[Workspace, list[Any]],
) -> None:
    ws, _ = versions
    plane = DataPlane(ws.registry, ws.features)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3], "data": X[:2].ravel().tolist()}]
    }
    with TestClient(create_app(plane)) as client:
        for _ in range(3):
            assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
        assert client.post("/v2/models/tiny/versions/2/infer", json=body).status_code == 200
        assert client.post("/v2/models/tiny/infer", json={"inputs": []}).status_code == 400
        assert client.post("/v2/models/nope/infer", json=body).status_code == 404
        for missing in ["100", "007", "0007", "999999999999"]:  # no series per version a client makes up
            assert client.post(f"/v2/models/tiny/versions/{missing}/infer", json=body).status_code == 404
        assert client.post("/v2/models/tiny/versions/02/infer", json={"inputs": []}).status_code == 400
        scrape = client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    assert metric(plane, "openlearner_predictor_requests_total", model="tiny", version="1") == 3.0
    assert metric(plane, "openlearner_predictor_requests_total", model="tiny", version="2") == 1.0
    assert metric(plane, "openlearner_predictor_errors_total", model="tiny", version="1", status="400") == 1.0
    assert metric(plane, "openlearner_predictor_errors_total", model="", status="404") == 1.0
    assert metric(plane, "openlearner_predictor_errors_total", model="tiny", version="", status="404") == 4.0
    assert metric(plane, "openlearner_predictor_errors_total", model="tiny", version="2", status="400") == 1.0
    errors = [
        line for line in scrape.text.splitlines() if line.startswith("openlearner_predictor_errors_total{")
    ]
    assert len(errors) == 4, errors  # tiny 1/400, tiny 2/400, tiny ""/404, "" ""/404
    assert metric(plane, "openlearner_predictor_request_seconds_count", model="tiny", version="1") == 3.0
    assert metric(plane, "openlearner_predictor_batch_rows_sum", model="tiny", version="1") == 6.0
    assert "openlearner_predictor_queue_depth" in scrape.text


def test_feature_store_models_route_a_canary_by_their_first_entity_key(served: Any) -> None:
    """The same user always meets the same version, whatever the request id."""
    from openlearner.predictor.rollouts import routing_key

    plane = DataPlane(served.ws.registry, served.ws.features)
    model = plane.model("ads_ctr")
    tensors = [
        InferInput(n, "INT64", [2], np.array([17, 99], np.int64)) for n in ["user_id", "ad_id", *CONTEXT]
    ]
    keys = {routing_key(model, InferenceRequest(tensors, id=str(i))) for i in range(5)}
    assert keys == {"user_id=17"}
    raw = plane.model("raw_ctr")
    assert routing_key(raw, request(X[:1], "req-7")) == "req-7"
    assert routing_key(raw, request(X[:1])) != routing_key(raw, request(X[:1]))  # random without an id
    plane.close()
