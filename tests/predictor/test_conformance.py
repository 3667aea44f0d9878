"""Conformance with the reference client, ``tritonclient.http``, against a live server.

Health, metadata, readiness, inference with JSON and binary tensors (both ways), and
errors, over a real socket: the client is Triton's own, so what it accepts is the protocol.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from openlearner.demo import CONTEXT
from openlearner.predictor import DataPlane
from openlearner.predictor.rest import create_app

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEYS = ["user_id", "ad_id"]


@pytest.fixture(scope="module")
def url(served: Any, live: Any) -> Iterator[str]:
    """A predictor over the fixture workspace on a loopback port, served from a thread."""
    with live(create_app(DataPlane(served.ws.registry, served.ws.features))) as address:
        yield address


@pytest.fixture
def client(url: str) -> Iterator[Any]:
    triton = tritonclient_http.InferenceServerClient(url=url)
    yield triton
    triton.close()
    # The client sits in a reference cycle; collected later from another thread (a batching
    # worker, say), its __del__ closes its gevent pool again and fails there. Collect it here.
    del triton
    gc.collect()


def inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[Any]:
    made = []
    for name, array in arrays.items():
        datatype = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}[array.dtype]
        tensor = tritonclient_http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        made.append(tensor)
    return made


def ads_arrays(served: Any, rows: int) -> dict[str, np.ndarray]:
    table = served.requests.slice(0, rows)
    return {n: table.column(n).to_numpy().astype(np.int64) for n in [*KEYS, *CONTEXT]}


def test_health_and_server_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "openlearner"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_readiness_by_default_number_and_alias(client: Any) -> None:
    assert client.is_model_ready("ads_ctr")
    assert client.is_model_ready("raw_ctr", "2")
    assert client.is_model_ready("raw_ctr", "staging")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("raw_ctr", "7")


def test_model_metadata_is_the_serving_signature(client: Any, served: Any) -> None:
    meta = client.get_model_metadata("ads_ctr")
    assert [i["name"] for i in meta["inputs"]] == [*KEYS, *CONTEXT]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probability"}
    raw = client.get_model_metadata("raw_ctr", "2")
    assert raw["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, len(served.columns)]}]


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_infer_raw_model_every_combination_of_json_and_binary(
    client: Any, served: Any, binary_in: bool, binary_out: bool
) -> None:
    matrix = np.ascontiguousarray(served.matrix[:12])
    wanted = [
        tritonclient_http.InferRequestedOutput(n, binary_data=binary_out) for n in ("probability", "label")
    ]
    result = client.infer("raw_ctr", inputs({"input": matrix}, binary_in), model_version="2", outputs=wanted)
    probability = result.as_numpy("probability")
    assert probability.dtype == np.float32
    np.testing.assert_allclose(probability, served.raw_models[1].predict_proba(matrix)[:, 1], atol=1e-5)
    assert result.as_numpy("label").dtype == np.int64
    assert result.get_response()["model_version"] == "2"


def test_infer_without_requested_outputs_gets_every_output_in_binary(client: Any, served: Any) -> None:
    """The client then asks binary_data_output: every output comes raw after the JSON header."""
    result = client.infer("ads_ctr", inputs(ads_arrays(served, 8), binary=True), request_id="r-1")
    response = result.get_response()
    assert response["id"] == "r-1"
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    offline = served.offline_rows(served.requests.slice(0, 8))
    expected = served.model.predict_proba(offline.select(served.columns))[:, 1]
    np.testing.assert_allclose(result.as_numpy("probability"), expected, atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("label"), (expected > 0.5).astype(np.int64))


def test_json_and_binary_answers_are_identical(client: Any, served: Any) -> None:
    arrays = ads_arrays(served, 5)
    json_out = [tritonclient_http.InferRequestedOutput("probability", binary_data=False)]
    as_json = client.infer("ads_ctr", inputs(arrays, False), outputs=json_out).as_numpy("probability")
    as_binary = client.infer("ads_ctr", inputs(arrays, True)).as_numpy("probability")
    np.testing.assert_array_equal(as_json, as_binary)


def error_of(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_errors_reach_the_client_with_status_and_message(client: Any, served: Any) -> None:
    arrays = ads_arrays(served, 1)
    missing = error_of(lambda: client.infer("nope", inputs(arrays, True)))
    assert missing.status() == "404" and "no model 'nope'" in missing.message()
    wrong = {**arrays, "user_id": arrays["user_id"].astype(np.float32)}
    dtype = error_of(lambda: client.infer("ads_ctr", inputs(wrong, True)))
    assert dtype.status() == "400" and "'user_id' is FP32" in dtype.message()
    alias = error_of(lambda: client.get_model_metadata("raw_ctr", "nightly"))
    assert alias.status() == "404" and "no alias 'nightly'" in alias.message()
    shape = error_of(lambda: client.infer("raw_ctr", inputs({"input": np.zeros((1, 3), np.float32)}, True)))
    assert shape.status() == "400" and "[-1, 8]" in shape.message()
