"""The transport-free data plane: resolving versions and aliases, loading, and failing cleanly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openlearner import Workspace
from openlearner.errors import Corrupt, Invalid, NotFound, Unavailable
from openlearner.predictor import DataPlane
from openlearner.predictor.protocol import InferenceRequest, InferInput


def raw_request(matrix: np.ndarray) -> InferenceRequest:
    return InferenceRequest([InferInput("input", "FP32", list(matrix.shape), matrix)])


def test_preload_loads_each_model_s_production_version(served: Any) -> None:
    assert DataPlane(served.ws.registry, served.ws.features).preload() == ["ads_ctr:1", "raw_ctr:1"]


def test_preload_of_another_alias_skips_models_without_it(served: Any) -> None:
    assert DataPlane(served.ws.registry, served.ws.features).preload("staging") == ["raw_ctr:2"]


def test_a_version_is_loaded_once_whatever_names_it(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    assert plane.model("raw_ctr", "1") is plane.model("raw_ctr", "production") is plane.model("raw_ctr")
    assert plane.model("raw_ctr", "2") is plane.model("raw_ctr", "staging")
    assert plane.model("raw_ctr", "01").version.version == 1


def test_infer_runs_the_resolved_version(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    matrix = served.matrix[:5]
    response = plane.infer("raw_ctr", "staging", raw_request(matrix))
    assert response.model_name == "raw_ctr"
    assert response.model_version == "2"
    probability = next(o for o in response.outputs if o.name == "probability")
    np.testing.assert_allclose(probability.data, served.raw_models[1].predict_proba(matrix)[:, 1], atol=1e-5)


def test_an_alias_move_is_seen_once_the_refresh_interval_has_passed(served: Any) -> None:
    registry = served.ws.registry
    registry.set_alias("raw_ctr", "moving", 1)
    fresh = DataPlane(registry, served.ws.features, alias_refresh=0.0)
    cached = DataPlane(registry, served.ws.features, alias_refresh=3600.0)
    assert fresh.model("raw_ctr", "moving").version.version == 1
    assert cached.model("raw_ctr", "moving").version.version == 1
    registry.set_alias("raw_ctr", "moving", 2)
    assert fresh.model("raw_ctr", "moving").version.version == 2
    assert cached.model("raw_ctr", "moving").version.version == 1  # the hot path does not ask the database


@pytest.mark.parametrize("ref", ["3", "9223372036854775807", "9223372036854775808", "9" * 50])
def test_an_unknown_version_number_is_not_found(served: Any, ref: str) -> None:
    with pytest.raises(NotFound, match="no version"):
        DataPlane(served.ws.registry).model("raw_ctr", ref)


@pytest.mark.parametrize("ref", ["²", "٣", "canary", "1e3", " 1"])
def test_anything_else_is_an_alias(served: Any, ref: str) -> None:
    with pytest.raises(NotFound, match="no alias"):
        DataPlane(served.ws.registry).model("raw_ctr", ref)


def test_an_unknown_model_is_not_found(served: Any) -> None:
    with pytest.raises(NotFound, match="ads_ctr, raw_ctr"):
        DataPlane(served.ws.registry).model("nope")
    with pytest.raises(NotFound):
        DataPlane(served.ws.registry).model("nope", "99999999999999999999999")


def test_unknown_outputs_are_refused(served: Any) -> None:
    request = raw_request(served.matrix[:1])
    request.outputs = ["probability", "logit"]
    with pytest.raises(Invalid, match="unknown output"):
        DataPlane(served.ws.registry).infer("raw_ctr", None, request)


def test_without_a_feature_store_only_feature_models_are_unavailable(served: Any) -> None:
    plane = DataPlane(served.ws.registry)
    assert plane.preload() == ["raw_ctr:1"]
    with pytest.raises(Unavailable, match="Feature Store"):
        plane.model("ads_ctr")


def test_a_corrupt_graph_is_reported_not_served_and_does_not_stop_preload(
    tiny: Workspace, tiny_graph: Path
) -> None:
    tiny_graph.write_bytes(tiny_graph.read_bytes()[:-10] + b"0123456789")
    plane = DataPlane(tiny.registry, tiny.features)
    assert plane.preload() == []
    with pytest.raises(Corrupt, match="sha256"):
        plane.model("tiny")


def test_a_missing_graph_is_the_server_s_fault_not_a_missing_model(tiny: Workspace, tiny_graph: Path) -> None:
    tiny_graph.unlink()
    plane = DataPlane(tiny.registry, tiny.features)
    assert plane.preload() == []
    with pytest.raises(Corrupt, match="tiny version 1 cannot be served"):
        plane.model("tiny")
