"""The OIP v2 REST adapter over the fixture workspace.

Each test that takes ``client`` (or ``secured``) runs twice: in-process over ASGI (Starlette's
TestClient), and over a loopback socket to uvicorn with the predictor's own HTTP protocol, as
``learner predictor serve`` runs it, where inference requests are answered from the HTTP
parser's callbacks. Both must answer alike.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest
from starlette.testclient import TestClient  # conftest imported it first, silencing its httpx notice

from openlearner import Workspace
from openlearner.demo import CONTEXT
from openlearner.models import GBDTClassifier
from openlearner.predictor import DataPlane
from openlearner.predictor.protocol import InferenceRequest
from openlearner.predictor.rest import create_app

KEYS = ["user_id", "ad_id"]
NEVER_SEEN_USER = 10**12


TRANSPORTS = ["asgi", "http"]


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(served: Any, serve: Any, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client over the fixture workspace; the lifespan (preload, then ready) runs."""
    with serve(create_app(DataPlane(served.ws.registry, served.ws.features)), request.param) as client:
        yield client


def ads_body(rows: pa.Table | dict[str, list[Any]], **extra: Any) -> dict[str, Any]:
    """An infer body for ads_ctr: keys and request inputs, INT64, shape [n]."""
    columns = rows.to_pydict() if isinstance(rows, pa.Table) else rows
    inputs = [
        {"name": n, "datatype": "INT64", "shape": [len(columns[n])], "data": columns[n]}
        for n in [*KEYS, *CONTEXT]
    ]
    return {"inputs": inputs, **extra}


def raw_body(matrix: np.ndarray, **extra: Any) -> dict[str, Any]:
    """An infer body for raw_ctr: the ``input`` matrix, nested."""
    data = [[None if np.isnan(v) else float(v) for v in row] for row in matrix]
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(matrix.shape), "data": data}],
        **extra,
    }


def outputs(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"}
    for fragment in fragments:
        assert fragment in payload["error"], payload["error"]
    return str(payload["error"])


# -- health and metadata -----------------------------------------------------------------------
def test_health_live_and_ready(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}


def test_not_ready_before_the_lifespan_has_loaded_the_models(served: Any) -> None:
    app = create_app(DataPlane(served.ws.registry, served.ws.features))
    client = TestClient(app)  # no `with`: the lifespan has not run
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert response.json() == {"ready": False}
    assert client.get("/v2/health/live").status_code == 200


def test_server_metadata(client: httpx.Client) -> None:
    import openlearner

    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {
        "name": "openlearner",
        "version": openlearner.__version__,
        "extensions": ["binary_tensor_data"],
    }


def test_feature_model_metadata_shows_the_serving_signature_not_the_graph_s(client: httpx.Client) -> None:
    meta = client.get("/v2/models/ads_ctr").json()
    assert meta["name"] == "ads_ctr"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": n, "datatype": "INT64", "shape": [-1]} for n in [*KEYS, *CONTEXT]]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probability", "datatype": "FP32", "shape": [-1]},
    ]


def test_raw_model_metadata_shows_its_input_tensor(client: httpx.Client, served: Any) -> None:
    meta = client.get("/v2/models/raw_ctr").json()
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, len(served.columns)]}]


@pytest.mark.parametrize("ref", ["1", "production", "2", "staging"])
def test_model_metadata_by_version_number_and_alias(client: httpx.Client, ref: str) -> None:
    response = client.get(f"/v2/models/raw_ctr/versions/{ref}")
    assert response.status_code == 200
    assert response.json()["name"] == "raw_ctr"


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/v2/models/ads_ctr/ready", "1"),
        ("/v2/models/raw_ctr/ready", "1"),
        ("/v2/models/raw_ctr/versions/production/ready", "1"),
        ("/v2/models/raw_ctr/versions/staging/ready", "2"),
        ("/v2/models/raw_ctr/versions/2/ready", "2"),
    ],
)
def test_model_ready_names_the_resolved_version(client: httpx.Client, path: str, version: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"name": path.split("/")[3], "version": version, "ready": True}


# -- inference ---------------------------------------------------------------------------------
def test_infer_one_row_gives_label_and_probability(client: httpx.Client, served: Any) -> None:
    response = client.post("/v2/models/ads_ctr/infer", json=ads_body(served.requests.slice(0, 1)))
    payload = response.json()
    assert payload["model_name"] == "ads_ctr"
    assert payload["model_version"] == "1"
    assert "id" not in payload
    out = outputs(response)
    assert list(out) == ["label", "probability"]
    assert out["label"]["datatype"] == "INT64"
    assert out["label"]["shape"] == [1]
    assert out["label"]["data"][0] in (0, 1)
    assert out["probability"]["datatype"] == "FP32"
    assert out["probability"]["shape"] == [1]
    assert 0.0 < out["probability"]["data"][0] < 1.0
    assert out["label"]["data"][0] == int(out["probability"]["data"][0] > 0.5)


def test_served_probabilities_equal_the_native_model_on_the_same_features(
    client: httpx.Client, served: Any
) -> None:
    rows = served.requests.slice(0, 64)
    probability = np.asarray(
        outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))["probability"]["data"]
    )
    offline = served.offline_rows(rows)
    # A mix of known and NaN features makes the comparison meaningful on both branches of the trees.
    assert not np.isnan(offline.column("user_stats__ctr_7d").to_numpy(zero_copy_only=False)).all()
    expected = served.model.predict_proba(offline.select(served.columns))[:, 1]
    assert probability.shape == (64,)
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    assert len(set(np.round(probability, 6))) > 5  # rows differ, so the features were really joined


def test_a_batch_answers_row_by_row_like_single_requests(client: httpx.Client, served: Any) -> None:
    rows = served.requests.slice(10, 5)
    batch = outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))["probability"]
    assert batch["shape"] == [5]
    singles = [
        outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows.slice(i, 1))))["probability"][
            "data"
        ][0]
        for i in range(5)
    ]
    np.testing.assert_allclose(batch["data"], singles, atol=1e-7)


def test_nested_data_and_column_shaped_keys_give_the_same_answer(client: httpx.Client, served: Any) -> None:
    rows = served.requests.slice(0, 3)
    flat = outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))
    nested = ads_body(rows)
    for tensor in nested["inputs"]:
        tensor["shape"] = [3, 1]
        tensor["data"] = [[v] for v in tensor["data"]]
    assert outputs(client.post("/v2/models/ads_ctr/infer", json=nested)) == flat


@pytest.mark.parametrize("unknown", [["user_id"], ["ad_id"], ["user_id", "ad_id"]])
def test_a_never_seen_entity_is_served_the_features_training_gives_it(
    client: httpx.Client, served: Any, unknown: list[str]
) -> None:
    """Means become NaN (missing) and counts 0, exactly as the offline training set has them."""
    rows = served.requests.slice(0, 2).to_pydict()
    for key in unknown:
        rows[key] = [NEVER_SEEN_USER, NEVER_SEEN_USER + 1]
    out = outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))
    offline = served.offline_rows(pa.table(rows))
    views = {"user_id": "user_stats", "ad_id": "ad_stats"}
    for key in unknown:
        assert offline.column(f"{views[key]}__ctr_7d").to_pylist() == [None, None]
        assert offline.column(f"{views[key]}__impressions_7d").to_pylist() == [0, 0]
    expected = served.model.predict_proba(offline.select(served.columns))[:, 1]
    np.testing.assert_allclose(out["probability"]["data"], expected, atol=1e-5)


def test_never_seen_entities_in_a_batch_leave_the_known_rows_alone(client: httpx.Client, served: Any) -> None:
    rows = served.requests.slice(0, 4).to_pydict()
    alone = outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))["probability"]["data"]
    rows["user_id"][1] = NEVER_SEEN_USER
    mixed = outputs(client.post("/v2/models/ads_ctr/infer", json=ads_body(rows)))["probability"]["data"]
    np.testing.assert_array_equal([mixed[0], *mixed[2:]], [alone[0], *alone[2:]])


def test_the_request_id_is_echoed(client: httpx.Client, served: Any) -> None:
    response = client.post(
        "/v2/models/ads_ctr/infer", json=ads_body(served.requests.slice(0, 1), id="req-42")
    )
    assert response.json()["id"] == "req-42"


@pytest.mark.parametrize("wanted", [["probability"], ["label"], ["probability", "label"]])
def test_the_outputs_filter_returns_what_was_asked_in_that_order(
    client: httpx.Client, served: Any, wanted: list[str]
) -> None:
    body = ads_body(served.requests.slice(0, 2), outputs=[{"name": n} for n in wanted])
    assert list(outputs(client.post("/v2/models/ads_ctr/infer", json=body))) == wanted


def test_raw_model_versions_by_number_and_alias_run_their_own_graphs(
    client: httpx.Client, served: Any
) -> None:
    matrix = served.matrix[:20]
    body = raw_body(matrix)
    answers = {}
    for ref in ["1", "production", "2", "staging"]:
        response = client.post(f"/v2/models/raw_ctr/versions/{ref}/infer", json=body)
        answers[ref] = np.asarray(outputs(response)["probability"]["data"])
        assert response.json()["model_version"] == {"1": "1", "production": "1"}.get(ref, "2")
    default = np.asarray(outputs(client.post("/v2/models/raw_ctr/infer", json=body))["probability"]["data"])
    for version, native in enumerate(served.raw_models, start=1):
        np.testing.assert_allclose(answers[str(version)], native.predict_proba(matrix)[:, 1], atol=1e-5)
    np.testing.assert_array_equal(answers["production"], answers["1"])
    np.testing.assert_array_equal(answers["staging"], answers["2"])
    np.testing.assert_array_equal(default, answers["1"])
    assert not np.allclose(answers["1"], answers["2"])


def test_raw_model_takes_flat_data_too(client: httpx.Client, served: Any) -> None:
    matrix = served.matrix[:2]
    nested = outputs(client.post("/v2/models/raw_ctr/infer", json=raw_body(matrix)))
    flat = raw_body(matrix)
    flat["inputs"][0]["data"] = [v for row in flat["inputs"][0]["data"] for v in row]
    assert outputs(client.post("/v2/models/raw_ctr/infer", json=flat)) == nested


# -- errors --------------------------------------------------------------------------------------
def test_unknown_model(client: httpx.Client, served: Any) -> None:
    error(client.get("/v2/models/nope"), 404, "nope", "ads_ctr")
    error(client.get("/v2/models/nope/ready"), 404)
    error(client.post("/v2/models/nope/infer", json=ads_body(served.requests.slice(0, 1))), 404, "nope")


@pytest.mark.parametrize(
    "ref", ["7", "0", "9223372036854775807", "9223372036854775808", "1" * 40, "9" * 4301, "0" * 30 + "7"]
)
def test_unknown_version_number(client: httpx.Client, ref: str) -> None:
    # 4,301 digits: more than Python reads as an int; the answer is still a 404, not a 500.
    error(client.get(f"/v2/models/raw_ctr/versions/{ref}"), 404, "no version", "1, 2")
    error(client.get(f"/v2/models/raw_ctr/versions/{ref}/ready"), 404, "no version")
    error(client.post(f"/v2/models/raw_ctr/versions/{ref}/infer", json=raw_body(np.zeros((1, 8)))), 404)


def test_a_version_number_with_leading_zeros_is_that_version(client: httpx.Client) -> None:
    for ref in ["02", "0" * 30 + "2"]:
        assert client.get(f"/v2/models/raw_ctr/versions/{ref}").json()["name"] == "raw_ctr"
        assert client.get(f"/v2/models/raw_ctr/versions/{ref}/ready").json()["ready"] is True


def test_a_path_ending_in_a_newline_is_no_route(client: httpx.Client) -> None:
    error(client.post("/v2/models/raw_ctr/infer%0A", json=raw_body(np.zeros((1, 8)))), 404, "no such route")
    error(client.get("/v2/health/live%0A"), 404, "no such route")
    error(client.get("/v2/models/raw_ctr%0D/ready"), 404, "no such route")


@pytest.mark.parametrize("ref", ["canary", "-1", "²", "١", "1.0", "PRODUCTION"])
def test_unknown_alias(client: httpx.Client, ref: str) -> None:
    error(client.get(f"/v2/models/raw_ctr/versions/{ref}"), 404, "no alias", "production, staging")
    error(client.get(f"/v2/models/raw_ctr/versions/{ref}/ready"), 404)


def test_malformed_json(client: httpx.Client) -> None:
    for content in [b"{", b"", b"not json", b"\xff"]:
        error(client.post("/v2/models/ads_ctr/infer", content=content), 400, "not valid JSON")
    error(client.post("/v2/models/ads_ctr/infer", json=[1, 2]), 400, "JSON object")


def test_a_missing_input_is_named_with_the_expected_signature(client: httpx.Client, served: Any) -> None:
    body = ads_body(served.requests.slice(0, 1))
    body["inputs"] = [t for t in body["inputs"] if t["name"] != "ad_id"]
    message = error(client.post("/v2/models/ads_ctr/infer", json=body), 400, "missing input(s) ad_id")
    for spec in ["user_id INT64 [-1]", "ad_id INT64 [-1]", "hour INT64 [-1]", "position INT64 [-1]"]:
        assert spec in message


def test_a_wrongly_named_input_is_named_with_the_expected_signature(
    client: httpx.Client, served: Any
) -> None:
    body = ads_body(served.requests.slice(0, 1))
    body["inputs"][2]["name"] = "hour_of_day"
    error(
        client.post("/v2/models/ads_ctr/infer", json=body),
        400,
        "missing input(s) hour",
        "unknown input(s) hour_of_day",
    )
    error(
        client.post("/v2/models/raw_ctr/infer", json=ads_body(served.requests.slice(0, 1))),
        400,
        "missing input(s) input",
        "input FP32 [-1, 8]",
    )


def test_a_raw_model_is_not_served_from_entity_keys_nor_a_feature_model_from_the_matrix(
    client: httpx.Client, served: Any
) -> None:
    error(client.post("/v2/models/ads_ctr/infer", json=raw_body(served.matrix[:1])), 400, "user_id INT64")


@pytest.mark.parametrize("datatype", ["INT32", "FP32", "FP64", "UINT64"])
def test_wrong_datatype(client: httpx.Client, served: Any, datatype: str) -> None:
    body = ads_body(served.requests.slice(0, 1))
    body["inputs"][0]["datatype"] = datatype
    error(client.post("/v2/models/ads_ctr/infer", json=body), 400, f"'user_id' is {datatype}", "INT64")


def test_wrong_datatype_for_the_raw_matrix(client: httpx.Client, served: Any) -> None:
    body = raw_body(served.matrix[:1])
    body["inputs"][0]["datatype"] = "FP64"
    error(client.post("/v2/models/raw_ctr/infer", json=body), 400, "FP64", "FP32")


def test_a_float_for_an_int64_key_is_refused_not_truncated(client: httpx.Client, served: Any) -> None:
    body = ads_body(served.requests.slice(0, 1))
    body["inputs"][0]["data"] = [1.5]
    error(client.post("/v2/models/ads_ctr/infer", json=body), 400, "user_id", "non-integer")


@pytest.mark.parametrize(("shape", "data"), [([1, 2], [1, 2]), ([1, 1, 1], [1]), ([], 1)])
def test_wrong_shape_for_a_key(client: httpx.Client, served: Any, shape: list[int], data: Any) -> None:
    body = ads_body(served.requests.slice(0, 1))
    body["inputs"][0].update(shape=shape, data=data)
    error(client.post("/v2/models/ads_ctr/infer", json=body), 400, "'user_id' has shape", "[batch]")


@pytest.mark.parametrize(("shape", "size"), [([1, 7], 7), ([1, 9], 9), ([8], 8), ([1, 2, 4], 8)])
def test_wrong_shape_for_the_raw_matrix(client: httpx.Client, shape: list[int], size: int) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [0.0] * size}]}
    error(client.post("/v2/models/raw_ctr/infer", json=body), 400, "'input' has shape", "[-1, 8]")


def test_shape_disagreeing_with_data(client: httpx.Client, served: Any) -> None:
    body = ads_body(served.requests.slice(0, 2))
    body["inputs"][1]["shape"] = [3]
    error(client.post("/v2/models/ads_ctr/infer", json=body), 400, "'ad_id'", "shape [3]")


def test_inputs_disagreeing_on_the_batch_size(client: httpx.Client, served: Any) -> None:
    body = ads_body(served.requests.slice(0, 3))
    body["inputs"][3] = {"name": "device", "datatype": "INT64", "shape": [2], "data": [0, 1]}
    error(client.post("/v2/models/ads_ctr/infer", json=body), 400, "batch size", "3 vs 2")


def test_an_empty_batch(client: httpx.Client) -> None:
    empty: dict[str, list[Any]] = {n: [] for n in [*KEYS, *CONTEXT]}
    error(client.post("/v2/models/ads_ctr/infer", json=ads_body(empty)), 400, "batch is empty")
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 8], "data": []}]}
    error(client.post("/v2/models/raw_ctr/infer", json=body), 400, "batch is empty")


def test_an_unknown_output(client: httpx.Client, served: Any) -> None:
    body = ads_body(served.requests.slice(0, 1), outputs=[{"name": "logit"}])
    error(
        client.post("/v2/models/ads_ctr/infer", json=body),
        400,
        "unknown output(s) logit",
        "label, probability",
    )


def test_unknown_route_answers_json_404(client: httpx.Client) -> None:
    for path in ["/", "/v1/models/ads_ctr", "/v2/models", "/v2/models/ads_ctr/versions/1/explain"]:
        error(client.get(path), 404, "no such route")


def test_wrong_method_answers_json_405_with_allow(client: httpx.Client) -> None:
    response = client.get("/v2/models/ads_ctr/infer")
    error(response, 405, "method not allowed")
    assert "POST" in response.headers["allow"]
    error(client.post("/v2/health/live"), 405)
    error(client.delete("/v2/models/ads_ctr"), 405)
    error(client.put("/v2"), 405)


# -- limits and auth -----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_oversized_body_is_refused_with_413(served: Any, serve: Any, transport: str) -> None:
    app = create_app(DataPlane(served.ws.registry, served.ws.features), max_body=1000)
    big = ads_body(served.requests.slice(0, 100))
    small = ads_body(served.requests.slice(0, 1))
    with serve(app, transport) as client:
        error(client.post("/v2/models/ads_ctr/infer", json=big), 413, "exceeds 1000 bytes")
        # Chunked, without a Content-Length to check first: refused while reading.
        chunks = (b"x" * 100 for _ in range(20))
        error(client.post("/v2/models/ads_ctr/infer", content=chunks), 413, "exceeds 1000 bytes")
        whole = client.post("/v2/models/ads_ctr/infer", json=small)
        assert whole.status_code == 200
        # A body under the limit that arrives in pieces is put back together.
        raw = orjson.dumps(small)
        pieces = (raw[i : i + 7] for i in range(0, len(raw), 7))
        chunked = client.post("/v2/models/ads_ctr/infer", content=pieces)
        assert chunked.status_code == 200 and chunked.json()["outputs"] == whole.json()["outputs"]


@pytest.fixture(scope="module", params=TRANSPORTS)
def secured(served: Any, serve: Any, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    app = create_app(DataPlane(served.ws.registry, served.ws.features), auth_token="s3cret-token")
    with serve(app, request.param) as client:
        yield client


PROTECTED = [
    ("GET", "/v2"),
    ("GET", "/v2/models/ads_ctr"),
    ("GET", "/v2/models/raw_ctr/versions/2"),
    ("GET", "/v2/models/ads_ctr/ready"),
    ("GET", "/v2/models/nope"),  # no hint of which models exist either
    ("POST", "/v2/models/ads_ctr/infer"),
    ("POST", "/v2/models/raw_ctr/versions/staging/infer"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "s3cret-token",
        "Bearer",
        "Bearer ",
        "Bearer s3cret",
        "Bearer s3cret-token2",
        "bearer s3cret-tokeN",
    ],
)
def test_without_the_right_token_every_route_but_health_answers_401(
    secured: httpx.Client, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    if (
        authorization is not None
        and authorization != authorization.strip()
        and not isinstance(secured, TestClient)
    ):
        # httpx will not send a value with surrounding whitespace; a raw client can.
        response = raw_exchange(secured, method, path, headers, b'{"inputs": []}')
    else:
        response = secured.request(method, path, headers=headers, json={"inputs": []})
    error(response, 401, "Authorization: Bearer")


def raw_exchange(
    client: httpx.Client, method: str, path: str, headers: dict[str, str], body: bytes
) -> httpx.Response:
    """One request written byte for byte to the server ``client`` talks to, and its response."""
    url = client.base_url
    lines = [
        f"{method} {path} HTTP/1.1",
        f"host: {url.host}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((url.host, url.port), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, content = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = [(name, value) for name, _, value in (line.partition(": ") for line in header_lines)]
    return httpx.Response(int(status_line.split()[1]), headers=fields, content=content)


def test_a_non_ascii_token_is_refused_not_crashed_on(secured: httpx.Client) -> None:
    error(secured.get("/v2", headers={"Authorization": "Bearer sécret".encode("latin-1")}), 401)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_scheme_s_name_matches_in_any_case(secured: httpx.Client, scheme: str, served: Any) -> None:
    headers = {"Authorization": f"{scheme} s3cret-token"}
    assert secured.get("/v2", headers=headers).status_code == 200
    response = secured.post(
        "/v2/models/ads_ctr/infer", json=ads_body(served.requests.slice(0, 1)), headers=headers
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_non_ascii_token_is_matched_by_its_utf8_bytes(served: Any, serve: Any, transport: str) -> None:
    app = create_app(DataPlane(served.ws.registry, served.ws.features), auth_token="sécret-ü")
    with serve(app, transport) as client:
        right = {"Authorization": "Bearer sécret-ü".encode()}
        assert client.get("/v2", headers=right).status_code == 200
        response = client.post(
            "/v2/models/ads_ctr/infer", json=ads_body(served.requests.slice(0, 1)), headers=right
        )
        assert response.status_code == 200, response.text
        error(client.get("/v2", headers={"Authorization": "Bearer sécret-u".encode()}), 401)
        if not isinstance(client, TestClient):  # (the test client re-encodes header values as UTF-8)
            # The same text in latin-1 is other bytes: refused.
            error(client.get("/v2", headers={"Authorization": "Bearer sécret-ü".encode("latin-1")}), 401)


def test_with_the_token_every_route_answers(secured: httpx.Client, served: Any) -> None:
    headers = {"Authorization": "Bearer s3cret-token"}
    assert secured.get("/v2", headers=headers).status_code == 200
    assert secured.get("/v2/models/ads_ctr", headers=headers).status_code == 200
    assert secured.get("/v2/models/raw_ctr/versions/staging/ready", headers=headers).status_code == 200
    response = secured.post(
        "/v2/models/ads_ctr/infer", json=ads_body(served.requests.slice(0, 2)), headers=headers
    )
    assert outputs(response)["probability"]["shape"] == [2]
    error(secured.get("/v2/models/nope", headers=headers), 404)


def test_health_is_open_without_the_token(secured: httpx.Client) -> None:
    assert secured.get("/v2/health/live").status_code == 200
    assert secured.get("/v2/health/ready").json() == {"ready": True}


# -- a predictor without a Feature Store --------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_without_a_feature_store_raw_models_serve_and_feature_models_answer_503(
    served: Any, serve: Any, transport: str
) -> None:
    with serve(create_app(DataPlane(served.ws.registry)), transport) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert outputs(client.post("/v2/models/raw_ctr/infer", json=raw_body(served.matrix[:1])))
        error(
            client.post("/v2/models/ads_ctr/infer", json=ads_body(served.requests.slice(0, 1))),
            503,
            "Feature Store",
        )


# -- never a 500 ---------------------------------------------------------------------------------
BAD_BODIES: list[Any] = [
    b"",
    b"null",
    b"[]",
    b'{"inputs": null}',
    b'{"inputs": [null]}',
    b'{"inputs": [{"name": "user_id"}]}',
    b'{"inputs": [{"name": "user_id", "datatype": ["INT64"], "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": {"a": 1}, "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1e30], "data": [1]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [99999999999999999999], "data": [1]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [99999999999999999999]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [' + b"1," * 99 + b'1], "data": [1]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1e400]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": ["1"]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [[[[1]]]]}]}',
    b'{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["1"]}]}',
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [1,2,3,4,5,6,7,{}]}]}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": "label"}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "id": {}}',
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "parameters": 1}',
    "é".encode("latin-1"),
    b"\x00" * 50,
    b'{"inputs": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
]


@pytest.mark.parametrize("payload", BAD_BODIES, ids=range(len(BAD_BODIES)))
@pytest.mark.parametrize("path", ["/v2/models/ads_ctr/infer", "/v2/models/raw_ctr/versions/2/infer"])
def test_no_bad_body_gets_a_500(client: httpx.Client, path: str, payload: bytes) -> None:
    response = client.post(path, content=payload)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/%00",
        "/v2/models/" + "a" * 300,
        "/v2/models/a%20b/ready",
        "/v2/models/raw_ctr/versions/%C2%B2",
        "/v2/models/raw_ctr/versions/" + "9" * 100 + "/ready",
        "/v2/models/raw_ctr/versions/%F0%9F%92%A5",
        "/v2/models/..%2F..%2Fetc/ready",
    ],
)
def test_no_bad_path_gets_a_500(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_corrupt_graph_answers_503_and_the_server_still_starts(
    tiny: Workspace, tiny_graph: Path, serve: Any, transport: str
) -> None:
    tiny_graph.write_bytes(b"not an onnx graph")
    with serve(create_app(DataPlane(tiny.registry, tiny.features)), transport) as client:
        assert client.get("/v2/health/ready").status_code == 200
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [0.0, 0.0, 0.0]}]}
        error(client.post("/v2/models/tiny/infer", json=body), 503, "corrupt")
        error(client.get("/v2/models/tiny"), 503, "corrupt")


def test_an_unknown_model_is_404_whatever_the_body(client: httpx.Client) -> None:
    for body in (b"{not json", b"{}", b'{"inputs": []}'):
        response = client.post("/v2/models/no_such_model/infer", content=body)
        assert response.status_code == 404, body
        assert "no model 'no_such_model'" in response.json()["error"]


def test_an_oversized_batch_is_refused_from_its_declared_shape(client: httpx.Client) -> None:
    # The data is tiny: the refusal comes from the declared shape, before any value is decoded.
    body = {"inputs": [{"name": "input", "shape": [200_000, 5], "datatype": "FP32", "data": [0.0]}]}
    error(client.post("/v2/models/raw_ctr/infer", json=body), 400, "at most 100000")
    many = {
        "inputs": [
            {"name": f"t{i}", "shape": [90_000, 40], "datatype": "FP32", "data": [0.0]} for i in range(3)
        ]
    }
    error(client.post("/v2/models/raw_ctr/infer", json=many), 400, "declares 10800000 values")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_archived_version_is_no_longer_served(tiny: Workspace, serve: Any, transport: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    table = {f"f{i}": x[:, i] for i in range(3)}
    second = GBDTClassifier(num_trees=3, min_child_samples=5).fit(table, (x[:, 1] > 0).astype(int))
    tiny.registry.register("tiny", second, sample=table)
    tiny.registry.set_alias("tiny", "production", 2)
    tiny.registry.archive("tiny", 1)
    with serve(create_app(DataPlane(tiny.registry, tiny.features)), transport) as client:
        body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}]}
        error(client.post("/v2/models/tiny/versions/1/infer", json=body), 404, "archived")
        assert client.post("/v2/models/tiny/infer", json=body).status_code == 200


def test_warm_says_when_a_request_needs_no_registry_or_loading(served: Any) -> None:
    dataplane = DataPlane(served.ws.registry, served.ws.features)
    assert not dataplane.warm("ads_ctr")
    dataplane.model("ads_ctr")
    assert dataplane.warm("ads_ctr", "1")
    assert not dataplane.warm("ads_ctr")  # the default alias also looks for a canary and a shadow
    dataplane.route("ads_ctr", None, InferenceRequest([]))
    assert dataplane.warm("ads_ctr") and dataplane.warm("ads_ctr", "production")
    assert not dataplane.warm("ads_ctr", "2") and not dataplane.warm("nope")


# -- the binary tensor extension over HTTP -----------------------------------------------------------
def binary_request(matrix: np.ndarray, **parameters: Any) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(matrix, "<f4").tobytes()
    tensor = {"name": "input", "datatype": "FP32", "shape": list(matrix.shape)}
    header = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}], "parameters": parameters}
    encoded = orjson.dumps(header)
    return encoded + raw, {"Inference-Header-Content-Length": str(len(encoded))}


def test_binary_in_binary_out_without_a_content_type(client: httpx.Client, served: Any) -> None:
    matrix = served.matrix[:3]
    body, headers = binary_request(matrix, binary_data_output=True)
    response = client.post("/v2/models/raw_ctr/versions/2/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in header["outputs"]}
    assert sizes == {"label": 24, "probability": 12}
    offset = length + (24 if header["outputs"][0]["name"] == "label" else 0)
    probability = np.frombuffer(response.content[offset : offset + 12], "<f4")
    np.testing.assert_allclose(probability, served.raw_models[1].predict_proba(matrix)[:, 1], atol=1e-5)


def test_binary_in_json_out(client: httpx.Client, served: Any) -> None:
    body, headers = binary_request(served.matrix[:2])
    response = client.post("/v2/models/raw_ctr/infer", content=body, headers=headers)
    assert response.headers["content-type"] == "application/json"
    assert outputs(response)["probability"]["shape"] == [2]


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "", "9" * 30])
def test_a_malformed_header_length_is_400(client: httpx.Client, served: Any, value: str) -> None:
    body, _ = binary_request(served.matrix[:1])
    response = client.post(
        "/v2/models/raw_ctr/infer", content=body, headers={"Inference-Header-Content-Length": value}
    )
    error(response, 400, "Inference-Header-Content-Length")


def test_a_header_length_inconsistent_with_the_body_is_400(client: httpx.Client, served: Any) -> None:
    body, headers = binary_request(served.matrix[:1])
    too_long = {"Inference-Header-Content-Length": str(len(body) + 1)}
    error(client.post("/v2/models/raw_ctr/infer", content=body, headers=too_long), 400, "the body holds")
    short = {"Inference-Header-Content-Length": str(int(headers["Inference-Header-Content-Length"]) + 4)}
    error(client.post("/v2/models/raw_ctr/infer", content=body, headers=short), 400)
    error(client.post("/v2/models/raw_ctr/infer", content=body), 400)  # no header: the body is not JSON
