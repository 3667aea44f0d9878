"""The REST surface fuzzed by schemathesis from the OpenAPI description the predictor serves.

Valid and malformed requests (bodies, paths, versions, aliases) on every operation; none
may answer a 5xx or break the server. Kept small (a few examples per operation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.testclient import TestClient

from openlearner.predictor import DataPlane
from openlearner.predictor.openapi import openapi_document
from openlearner.predictor.rest import create_app

OPERATIONS = [
    ("GET", "/v2"),
    ("GET", "/v2/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/ready"),
    ("POST", "/v2/models/{model}/infer"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
]


@pytest.fixture(scope="module")
def api(served: Any) -> Iterator[Any]:
    """The OpenAPI schema read from the running app (its lifespan has loaded the models)."""
    app = create_app(DataPlane(served.ws.registry, served.ws.features))
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/v2/openapi.json", app)


# Any string is a valid path parameter: only bodies can be made malformed (negative mode).
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: getattr(v, "value", v))
def test_no_request_gets_a_server_error(api: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api[path][method]

    # Generated names are almost never a model's: half the cases address the real ones, so
    # malformed bodies reach the decoder and the signature checks, not just the 404.
    @given(
        case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(["ads_ctr", "raw_ctr", None])
    )
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def fuzz(case: Any, model: str | None) -> None:
        if model is not None:
            case.path_parameters["model"] = model
            if "version" in case.path_parameters:
                case.path_parameters["version"] = "production"
        response = case.call()
        assert response.status_code < 500, (case.path, case.body, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()

    fuzz()


def test_the_description_lists_every_route(served: Any) -> None:
    with TestClient(create_app(DataPlane(served.ws.registry, served.ws.features))) as client:
        document = client.get("/v2/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/openapi.json",
        "/metrics",
        "/v2/models/{model}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/versions/{version}/infer",
    }


def test_the_description_is_valid_openapi_and_says_where_the_token_is_needed() -> None:
    from openapi_spec_validator import validate

    document = openapi_document()
    validate(document)
    assert document["security"] == [{"bearer": []}]  # every operation, unless it says otherwise
    open_routes = {
        path
        for path, item in document["paths"].items()
        if all(op.get("security") == [] for op in item.values())
    }
    assert open_routes == {"/v2/health/live", "/v2/health/ready"}
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert "Inference-Header-Content-Length" in {p["name"] for p in infer["parameters"]}
