"""The OpenAPI 3 description of the predictor's REST API (served at ``/v2/openapi.json``).

It follows the KServe/Triton OIP v2 REST spec; clients and fuzzers (schemathesis) read it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from openlearner.predictor.protocol import DATATYPES

__all__ = ["openapi_document"]

_ERROR = {
    "description": "an error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }
    },
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_METADATA_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "a version number or an alias",
    "schema": {"type": "string"},
}
_ERRORS = {str(s): _ERROR for s in (400, 401, 404, 405, 413, 503)}


def _ok(schema: dict[str, Any], description: str = "success") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": (
        "binary tensor extension: the body starts with this many bytes of JSON header, "
        "followed by the tensors' bytes"
    ),
    "schema": {"type": "integer", "minimum": 0},
}
_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
_BINARY = (
    "JSON, or with the binary tensor extension the JSON header (Inference-Header-Content-Length "
    "bytes) followed by each tensor's bytes, as its binary_data_size parameter says"
)


def _model_routes(prefix: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    metadata = {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _METADATA_TENSOR},
            "outputs": {"type": "array", "items": _METADATA_TENSOR},
        },
    }
    ready = {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}}
    return {
        prefix: {"get": {"parameters": parameters, "responses": {"200": _ok(metadata), **_ERRORS}}},
        f"{prefix}/ready": {"get": {"parameters": parameters, "responses": {"200": _ok(ready), **_ERRORS}}},
        f"{prefix}/infer": {
            "post": {
                "parameters": [*parameters, _HEADER_LENGTH],
                "requestBody": {
                    "required": True,
                    "description": _BINARY,
                    "content": {
                        "application/json": {"schema": _INFER_REQUEST},
                        "application/octet-stream": _BINARY_BODY,
                    },
                },
                "responses": {
                    "200": {
                        "description": f"success: {_BINARY}",
                        "headers": {
                            "Inference-Header-Content-Length": {
                                "description": "with binary outputs: the bytes of JSON header",
                                "schema": {"type": "integer", "minimum": 0},
                            }
                        },
                        "content": {
                            "application/json": {"schema": _INFER_RESPONSE},
                            "application/octet-stream": _BINARY_BODY,
                        },
                    },
                    **_ERRORS,
                },
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document."""
    from openlearner import __version__

    health = {"type": "object"}
    text = {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    # Every route needs the bearer token when the server has one (OPENLEARNER_AUTH_TOKEN),
    # except the two health checks.
    return {
        "openapi": "3.0.3",
        "info": {"title": "OpenLearner Predictor (Open Inference Protocol v2)", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v2": {"get": {"responses": {"200": _ok({"type": "object"}), **_ERRORS}}},
            "/v2/health/live": {"get": {"security": [], "responses": {"200": _ok(health)}}},
            "/v2/health/ready": {
                "get": {
                    "security": [],
                    "responses": {"200": _ok(health), "503": _ok(health, "not ready")},
                }
            },
            "/v2/openapi.json": {"get": {"responses": {"200": _ok({"type": "object"}), **_ERRORS}}},
            "/metrics": {"get": {"responses": {"200": text, **_ERRORS}}},
            **_model_routes("/v2/models/{model}", [_MODEL]),
            **_model_routes("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION]),
        },
    }
