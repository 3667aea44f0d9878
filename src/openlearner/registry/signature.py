"""Model signatures: the tensors a graph takes and gives, and what a client sends to serve it.

A model trained on Feature Store columns is served from entity keys: the client sends the
keys (and any request-time inputs), the predictor reads the features online and builds
the graph's ``input`` tensor in the order recorded here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from openlearner.errors import Invalid

__all__ = ["ServingSpec", "Signature", "TensorSpec", "arrow_datatype", "duckdb_datatype"]

_ARROW = {
    pa.bool_(): "BOOL",
    pa.int8(): "INT8",
    pa.int16(): "INT16",
    pa.int32(): "INT32",
    pa.int64(): "INT64",
    pa.uint8(): "UINT8",
    pa.uint16(): "UINT16",
    pa.uint32(): "UINT32",
    pa.uint64(): "UINT64",
    pa.float16(): "FP16",
    pa.float32(): "FP32",
    pa.float64(): "FP64",
    pa.string(): "BYTES",
    pa.large_string(): "BYTES",
}
_DUCKDB = {
    "BOOLEAN": "BOOL",
    "TINYINT": "INT8",
    "SMALLINT": "INT16",
    "INTEGER": "INT32",
    "BIGINT": "INT64",
    "UTINYINT": "UINT8",
    "USMALLINT": "UINT16",
    "UINTEGER": "UINT32",
    "UBIGINT": "UINT64",
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "VARCHAR": "BYTES",
}


def arrow_datatype(arrow_type: pa.DataType) -> str:
    """The Open Inference Protocol datatype of an Arrow type."""
    try:
        return _ARROW[arrow_type]
    except KeyError:
        raise Invalid(
            f"type {arrow_type} cannot be a model input; use numbers, booleans or strings"
        ) from None


def duckdb_datatype(type_name: str) -> str:
    """The Open Inference Protocol datatype of a DuckDB type name."""
    try:
        return _DUCKDB[type_name.split("(")[0].upper()]
    except KeyError:
        raise Invalid(f"type {type_name} cannot be an entity key; use integers or strings") from None


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: OIP datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ServingSpec:
    """What a client sends for a model that reads the Feature Store."""

    feature_service: str
    entity_keys: list[TensorSpec]
    features: list[str]
    request_inputs: list[TensorSpec]


@dataclass(frozen=True)
class Signature:
    """The graph's tensors, the order of its input columns, and (optionally) the serving spec."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    columns: list[str]
    serving: ServingSpec | None = field(default=None)

    def serving_inputs(self) -> list[TensorSpec]:
        """The tensors a client sends: entity keys and request inputs, or the raw graph inputs."""
        if self.serving is None:
            return list(self.inputs)
        return [*self.serving.entity_keys, *self.serving.request_inputs]

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored with the model version."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        """Rebuild from :meth:`to_dict`."""
        serving = data.get("serving")
        return cls(
            inputs=[TensorSpec(**t) for t in data["inputs"]],
            outputs=[TensorSpec(**t) for t in data["outputs"]],
            columns=list(data["columns"]),
            serving=ServingSpec(
                feature_service=serving["feature_service"],
                entity_keys=[TensorSpec(**t) for t in serving["entity_keys"]],
                features=list(serving["features"]),
                request_inputs=[TensorSpec(**t) for t in serving["request_inputs"]],
            )
            if serving
            else None,
        )
