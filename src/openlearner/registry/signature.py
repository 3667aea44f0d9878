"""Model signatures: the tensors a graph takes and gives, and what a client sends to serve it.

A signature is read from the exported ONNX graph itself (:func:`graph_signature`): its
inputs and outputs with their names, datatypes and shapes, whatever the model family
(``input``/``label``/``probability`` for a binary classifier, ``prediction`` for a
regressor, ``tokens`` or ``dense`` + ``categorical`` for torch models). An explicit
signature is checked against the graph (:func:`check_signature`).

A model trained on Feature Store columns is served from entity keys: the client sends the
keys (and any request-time inputs), the predictor reads the features online and builds
the graph's ``input`` tensor in the order recorded here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from openlearner.errors import Invalid

if TYPE_CHECKING:
    import onnx

__all__ = [
    "TOKENS",
    "ServingSpec",
    "Signature",
    "TensorSpec",
    "arrow_datatype",
    "check_signature",
    "converts",
    "duckdb_datatype",
    "graph_signature",
    "text_inputs",
]

# ONNX TensorProto element types → Open Inference Protocol datatypes.
_ONNX = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}

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


_INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOATS = ("FP16", "FP32", "FP64")


def converts(source: str, target: str) -> bool:
    """Whether values sent as OIP datatype ``source`` may be converted to ``target``, value by
    value, as the predictor converts a shadow's inputs (``protocol.cast_array``): integers to
    any number type, floats to floats; each value must still fit (its range). Never booleans
    or text, never floats to integers."""
    if source == target:
        return True
    return (source in _INTEGERS and target in _INTEGERS + _FLOATS) or (
        source in _FLOATS and target in _FLOATS
    )


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: OIP datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: list[int]

    def describe(self) -> str:
        """``name DATATYPE [shape]``, as error messages and the CLI show it."""
        return f"{self.name} {self.datatype} {self.shape}"


TOKENS = "tokens"
"""The graph input of a text model that takes the token ids (or its only INT64 input)."""


def text_inputs(inputs: list[TensorSpec], metadata: dict[str, Any]) -> tuple[TensorSpec, str] | None:
    """For a text model (its serving metadata holds a tokenizer): the graph input its token ids
    go to, and the name of the ``BYTES`` input clients send instead (``text_input``, else
    ``text``). None for any other model, and for a text model none of whose inputs can take the
    ids (the predictor refuses to serve it)."""
    if not isinstance(metadata, dict) or metadata.get("tokenizer") is None:
        return None
    ints = [t for t in inputs if t.datatype == "INT64"]
    token = next((t for t in ints if t.name == TOKENS), ints[0] if len(ints) == 1 else None)
    if token is None:
        return None
    return token, str(metadata.get("text_input") or "text")


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

    def for_clients(self, metadata: dict[str, Any]) -> Signature:
        """This signature as clients call it, given the version's serving metadata: a text
        model takes text (``BYTES [-1]``) in place of its token ids (:func:`text_inputs`)."""
        found = text_inputs(self.inputs, metadata)
        if found is None:
            return self
        token, text = found
        inputs = [TensorSpec(text, "BYTES", [-1]) if t == token else t for t in self.inputs]
        return Signature(inputs, self.outputs, self.columns, self.serving)

    def serving_inputs(self) -> list[TensorSpec]:
        """The tensors a client sends: entity keys and request inputs, or the raw graph inputs."""
        if self.serving is None:
            return list(self.inputs)
        return [*self.serving.entity_keys, *self.serving.request_inputs]

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored with the model version."""
        return asdict(self)

    def incompatibilities(self, previous: Signature) -> list[str]:
        """Why clients of ``previous`` could not call a model with this signature (empty: they can).

        Clients send the serving inputs and read the outputs: the serving inputs must be the
        same (names, datatypes, shapes), every output they read must still be there with the
        same datatype and shape, and a raw tabular ``[batch, F]`` input must keep its columns
        in the same order (the client's column ``i`` has to mean the same thing).
        """
        problems = self._input_problems(previous, datatypes=True)
        new_out = {t.name: t for t in self.outputs}
        for old in previous.outputs:
            new = new_out.get(old.name)
            if new is None:
                problems.append(f"it lacks output {old.describe()}")
            elif (new.datatype, new.shape) != (old.datatype, old.shape):
                problems.append(f"output {new.describe()} was {old.describe()}")
        return problems + self._column_problems(previous)

    def mirror_problems(self, previous: Signature) -> list[str]:
        """Why a copy of a request for ``previous`` could not be sent to a model with this
        signature (a shadow; empty: it can): the serving inputs must have the same names and
        shapes, and datatypes the predictor can convert value by value (:func:`converts`).
        Outputs are not compared (a copy's answer is never returned); a raw tabular input must
        keep its columns in the same order."""
        return self._input_problems(previous, datatypes=False) + self._column_problems(previous)

    def _column_problems(self, previous: Signature) -> list[str]:
        if self.serving is None and previous.serving is None and self.columns != previous.columns:
            return [f"its input columns are {', '.join(self.columns)}, not {', '.join(previous.columns)}"]
        return []

    def _input_problems(self, previous: Signature, *, datatypes: bool) -> list[str]:
        problems: list[str] = []
        old_in = {t.name: t for t in previous.serving_inputs()}
        new_in = {t.name: t for t in self.serving_inputs()}
        for name in sorted(new_in.keys() - old_in.keys()):
            problems.append(f"it needs input {new_in[name].describe()} that clients do not send")
        for name in sorted(old_in.keys() - new_in.keys()):
            problems.append(f"it no longer takes input {old_in[name].describe()}")
        for name in sorted(old_in.keys() & new_in.keys()):
            old_t, new_t = old_in[name], new_in[name]
            same_type = old_t.datatype == new_t.datatype
            if old_t.shape != new_t.shape or (datatypes and not same_type):
                problems.append(f"input {new_t.describe()} was {old_t.describe()}")
            elif not same_type and not converts(old_t.datatype, new_t.datatype):
                problems.append(
                    f"input {new_t.describe()} was {old_t.describe()}, and {old_t.datatype} values "
                    f"cannot be converted to {new_t.datatype}"
                )
        return problems

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


def _tensor(value: Any, where: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise Invalid(
            f"graph {where} {value.name!r} is a {kind}, not a tensor; export plain tensors "
            "(for converters: zipmap=False)"
        )
    tensor = value.type.tensor_type
    datatype = _ONNX.get(tensor.elem_type)
    if datatype is None:
        raise Invalid(
            f"graph {where} {value.name!r} has ONNX element type {tensor.elem_type}, which cannot be served"
        )
    if not tensor.HasField("shape"):
        raise Invalid(f"graph {where} {value.name!r} has no shape; export the graph with shapes declared")
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
    return TensorSpec(value.name, datatype, shape)


def graph_signature(graph: onnx.ModelProto, columns: list[str]) -> Signature:
    """The signature an ONNX graph declares: its inputs and outputs, plus the model's column order."""
    initializers = {i.name for i in graph.graph.initializer}
    inputs = [_tensor(v, "input") for v in graph.graph.input if v.name not in initializers]
    outputs = [_tensor(v, "output") for v in graph.graph.output]
    if not inputs or not outputs:
        raise Invalid("the exported graph has no inputs or no outputs; it cannot be served")
    tabular = [t for t in inputs if t.name == "input" and len(t.shape) == 2 and t.shape[1] > 0]
    if len(inputs) == 1 and tabular and columns and tabular[0].shape[1] != len(columns):
        raise Invalid(
            f"the graph takes {tabular[0].shape[1]} input columns but the model names {len(columns)} "
            f"({', '.join(columns)}); export the model again"
        )
    return Signature(inputs, outputs, list(columns))


def _fits(declared: TensorSpec, actual: TensorSpec) -> bool:
    """Whether a declared tensor describes the graph's: same datatype and rank, fixed sizes agreeing."""
    if declared.datatype != actual.datatype or len(declared.shape) != len(actual.shape):
        return False
    return all(a == -1 or d == a for d, a in zip(declared.shape, actual.shape, strict=True))


def check_signature(declared: Signature | dict[str, Any], graph: Signature) -> Signature:
    """An explicit signature, checked against the one the graph declares; ``Invalid`` if they disagree.

    Every graph input must be declared; declared outputs may be a subset of the graph's;
    a declared shape may fix a dimension the graph leaves dynamic, never change one.
    """
    if isinstance(declared, dict):
        try:
            declared = Signature.from_dict({"columns": graph.columns, **declared})
        except (KeyError, TypeError) as exc:
            raise Invalid(
                f"signature is not valid ({exc}); give inputs and outputs as lists of "
                "{name, datatype, shape}, or a Signature"
            ) from exc
    if not isinstance(declared, Signature):
        raise Invalid(f"signature must be a Signature or a dict, not {type(declared).__name__}")
    if declared.serving is not None:
        raise Invalid("a signature's serving spec comes from features=; leave it out of signature=")
    problems: list[str] = []
    for kind, mine, theirs in (
        ("input", declared.inputs, graph.inputs),
        ("output", declared.outputs, graph.outputs),
    ):
        actual = {t.name: t for t in theirs}
        for spec in mine:
            if spec.name not in actual:
                problems.append(f"the graph has no {kind} {spec.name!r}")
            elif not _fits(spec, actual[spec.name]):
                problems.append(
                    f"{kind} {spec.describe()} does not fit the graph's {actual[spec.name].describe()}"
                )
    undeclared = [t.describe() for t in graph.inputs if t.name not in {s.name for s in declared.inputs}]
    if undeclared:
        problems.append(f"graph input(s) {', '.join(undeclared)} are not declared")
    if not declared.outputs:
        problems.append("it declares no outputs")
    if graph.columns and declared.columns and declared.columns != graph.columns:
        problems.append(
            f"its columns {', '.join(declared.columns)} are not the model's {', '.join(graph.columns)}"
        )
    if problems:
        graph_text = ", ".join(t.describe() for t in [*graph.inputs, *graph.outputs])
        raise Invalid(
            f"signature does not match the exported graph: {'; '.join(problems)} (graph: {graph_text})"
        )
    return Signature(declared.inputs, declared.outputs, declared.columns or graph.columns)
