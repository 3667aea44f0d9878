"""Open Inference Protocol v2 gRPC wire types and their codec (protobuf only, no gRPC).

The messages of the published ``grpc_predict_v2.proto`` (package ``inference``) are built
at import time from a ``FileDescriptorProto`` written out below, in a private descriptor
pool, so no generated code and no protoc are needed, and a client's own generated classes
(say, Triton's, which share the package name) can live in the same process. Field names,
numbers and types follow the spec exactly; ``tests/predictor/test_grpc_protocol.py``
compares them with the reference client's.

Tensors travel either as typed ``contents`` (``fp32_contents``, ``int64_contents``, ...)
or as ``raw_input_contents``: one little-endian, row-major buffer per input, BYTES
elements each prefixed with their 4-byte little-endian length. A response answers in
the form the request used (raw when the request was raw, or when an output is FP16,
which has no typed field).
"""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import (  # type: ignore[import-untyped]  # no stubs installed
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

from openlearner.errors import Invalid
from openlearner.predictor.protocol import (
    DATATYPES,
    MAX_BATCH,
    MAX_ELEMENTS,
    InferenceRequest,
    InferenceResponse,
    InferInput,
    check_dimensions,
)

__all__ = [
    "METHODS",
    "PACKAGE",
    "SERVICE",
    "decode_infer_request",
    "encode_infer_response",
    "message_class",
    "usual_inputs",
]

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL,
    "bytes": _F.TYPE_BYTES,
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "string": _F.TYPE_STRING,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
}
_PARAMETERS = "map InferParameter"
# message -> [(field, number, type)]; a type is "[repeated ]<scalar or message>" or a map.
# Nested messages are named Parent.Child and listed after their parent.
_SCHEMA: dict[str, list[tuple[str, int, str]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, "string"),
        ("version", 2, "string"),
        ("extensions", 3, "repeated string"),
    ],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse": [
        ("name", 1, "string"),
        ("versions", 2, "repeated string"),
        ("platform", 3, "string"),
        ("inputs", 4, "repeated ModelMetadataResponse.TensorMetadata"),
        ("outputs", 5, "repeated ModelMetadataResponse.TensorMetadata"),
    ],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, "string"),
        ("datatype", 2, "string"),
        ("shape", 3, "repeated int64"),
    ],
    "ModelInferRequest": [
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("id", 3, "string"),
        ("parameters", 4, _PARAMETERS),
        ("inputs", 5, "repeated ModelInferRequest.InferInputTensor"),
        ("outputs", 6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, "repeated bytes"),
    ],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, "string"),
        ("datatype", 2, "string"),
        ("shape", 3, "repeated int64"),
        ("parameters", 4, _PARAMETERS),
        ("contents", 5, "InferTensorContents"),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string"), ("parameters", 2, _PARAMETERS)],
    "ModelInferResponse": [
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("id", 3, "string"),
        ("parameters", 4, _PARAMETERS),
        ("outputs", 5, "repeated ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, "repeated bytes"),
    ],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, "string"),
        ("datatype", 2, "string"),
        ("shape", 3, "repeated int64"),
        ("parameters", 4, _PARAMETERS),
        ("contents", 5, "InferTensorContents"),
    ],
    "InferParameter": [  # all in the oneof parameter_choice
        ("bool_param", 1, "bool"),
        ("int64_param", 2, "int64"),
        ("string_param", 3, "string"),
        ("double_param", 4, "double"),
        ("uint64_param", 5, "uint64"),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, "repeated bool"),
        ("int_contents", 2, "repeated int32"),
        ("int64_contents", 3, "repeated int64"),
        ("uint_contents", 4, "repeated uint32"),
        ("uint64_contents", 5, "repeated uint64"),
        ("fp32_contents", 6, "repeated float"),
        ("fp64_contents", 7, "repeated double"),
        ("bytes_contents", 8, "repeated bytes"),
    ],
}
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
"""The RPCs of ``inference.GRPCInferenceService``; each takes ``<name>Request`` and gives ``<name>Response``."""


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``grpc_predict_v2.proto`` as a descriptor."""
    proto = descriptor_pb2.FileDescriptorProto(name="grpc_predict_v2.proto", package=PACKAGE, syntax="proto3")
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in _SCHEMA.items():
        parent, _, short = full_name.rpartition(".")
        message = built[parent].nested_type.add() if parent else proto.message_type.add()
        message.name = short
        built[full_name] = message
        if full_name == "InferParameter":
            message.oneof_decl.add(name="parameter_choice")
        for name, number, kind in fields:
            field = message.field.add(name=name, number=number)
            if full_name == "InferParameter":
                field.oneof_index = 0
            field.label = _F.LABEL_REPEATED if kind.startswith(("repeated ", "map ")) else _F.LABEL_OPTIONAL
            if kind.startswith("map "):
                entry = message.nested_type.add(name=f"{_camel(name)}Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
                value = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
                value.type, value.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{kind.split()[1]}"
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{full_name}.{entry.name}"
                continue
            type_name = kind.split()[-1]
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{type_name}"
    service = proto.service.add(name=SERVICE.rpartition(".")[2])
    for method in METHODS:
        service.method.add(
            name=method, input_type=f".{PACKAGE}.{method}Request", output_type=f".{PACKAGE}.{method}Response"
        )
    return proto


def _camel(name: str) -> str:
    """A map field's entry message name, as protoc derives it: ``parameters`` → ``Parameters``."""
    return "".join(part.capitalize() for part in name.split("_"))


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def message_class(name: str) -> Any:
    """The message class ``inference.<name>`` (nested ones as ``Parent.Child``)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ModelInferRequest = message_class("ModelInferRequest")
ModelInferResponse = message_class("ModelInferResponse")

# -- tensors ---------------------------------------------------------------------------------
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The typed ``contents`` field of each datatype; FP16 has none and travels raw only."""
_LENGTH = struct.Struct("<I")


def _where(index: int, name: str) -> str:
    return f"input {name!r}" if name else f"inputs[{index}]"


def _shape(tensor: Any, where: str) -> list[int]:
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise Invalid(f"{where}: shape {shape} has a negative dimension; send the actual sizes, e.g. [1, 3]")
    check_dimensions(shape, where)
    return shape


def _check_declared_size(message: Any) -> None:
    """Refuse an oversized request from its declared shapes, before decoding any data."""
    total = 0
    for index, tensor in enumerate(message.inputs):
        shape = [max(int(d), 0) for d in tensor.shape]
        check_dimensions(shape, _where(index, tensor.name))  # before multiplying them out
        if shape and shape[0] > MAX_BATCH:
            raise Invalid(
                f"{_where(index, tensor.name)} has {shape[0]} rows; a request may carry at most {MAX_BATCH}"
            )
        total += math.prod(shape)
        if total > MAX_ELEMENTS:
            raise Invalid(
                f"the request declares over {MAX_ELEMENTS} values; that many do not fit in one request"
            )


def _strings(elements: list[bytes], where: str) -> npt.NDArray[Any]:
    """BYTES elements as an object array of ``str``, as the JSON codec gives them."""
    try:
        return np.array([e.decode() for e in elements] or [], dtype=object)
    except UnicodeDecodeError:
        raise Invalid(f"{where}: a BYTES element is not UTF-8 text; send strings encoded as UTF-8") from None


def _from_contents(contents: Any, datatype: str, count: int, where: str) -> npt.NDArray[Any]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise Invalid(
            f"{where}: {datatype} values have no typed contents field; send them in raw_input_contents"
        )
    stray = [f.name for f, _ in contents.ListFields() if f.name != field]
    if stray:
        raise Invalid(
            f"{where} is {datatype}, so its values belong in contents.{field}, not {', '.join(stray)}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise Invalid(f"{where}: its shape needs {count} values but contents.{field} holds {len(values)}")
    if datatype == "BYTES":
        return _strings(list(values), where)
    target = np.dtype(DATATYPES[datatype])
    if target.kind in "iu" and target.itemsize < 4:  # carried in a 32-bit field: check it fits
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(target)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise Invalid(f"{where}: a value is out of range for {datatype} ({info.min} to {info.max})")
        return wide.astype(target)
    return np.array(values, dtype=target)


def _from_raw(raw: bytes, datatype: str, count: int, where: str) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        elements, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise Invalid(f"{where}: raw BYTES contents end inside an element's 4-byte length prefix")
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise Invalid(f"{where}: a raw BYTES element claims {length} bytes, more than remain")
            elements.append(raw[offset : offset + length])
            offset += length
        if len(elements) != count:
            raise Invalid(
                f"{where}: its shape needs {count} values but the raw contents hold {len(elements)}"
            )
        return _strings(elements, where)
    target = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(raw) != count * target.itemsize:
        raise Invalid(
            f"{where}: its shape needs {count} {datatype} values ({count * target.itemsize} bytes) "
            f"but the raw contents hold {len(raw)} bytes"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if np.any(octets > 1):
            raise Invalid(f"{where}: raw BOOL values must be bytes 0 or 1")
        return octets.astype(np.bool_)
    return np.frombuffer(raw, dtype=target).astype(target.newbyteorder("="), copy=False)


_ONE_FIELD = {"INT32", "INT64", "UINT32", "UINT64", "FP32", "FP64"}
"""Datatypes whose typed contents field holds exactly their values (no range to check)."""


def _typed_row(
    tensors: Any, datatype: str, shape: list[int], names: tuple[str, ...] | None = None
) -> tuple[list[str], npt.NDArray[Any]] | None:
    """One row's values, read in one pass: every tensor named (as ``names`` says, when given),
    of ``datatype`` (one of :data:`_ONE_FIELD`) and ``shape`` (``[1]`` or ``[1, F]``), with
    no parameters, its values in the datatype's own typed field and nowhere else. The names
    and every value in one array; None for anything else (decoded in full, which also names
    any problem)."""
    if datatype not in _ONE_FIELD:
        return None
    field, last = _CONTENTS[datatype], shape[-1]
    found, values = [], []
    expected_names = itertools.repeat(None) if names is None else names  # (callers match the counts)
    for tensor, expected in zip(tensors, expected_names, strict=False):
        name = tensor.name
        if not name or (expected is not None and name != expected):
            return None
        if tensor.datatype != datatype or tensor.parameters or tensor.shape != shape:
            return None
        contents = tensor.contents
        given = getattr(contents, field)
        if len(given) != last or len(contents.ListFields()) != 1:
            return None
        found.append(name)
        if last == 1:
            values.append(given[0])
        else:
            values.extend(given)
    return found, np.array(values, dtype=DATATYPES[datatype])


def _single_values(message: Any) -> list[InferInput] | None:
    """The usual one-row request of any model quickly: every input of shape ``[1]`` and one
    datatype (:func:`_typed_row`); else None."""
    tensors = message.inputs
    if message.raw_input_contents or len(tensors) > MAX_ELEMENTS:  # (the full road refuses that many)
        return None
    datatype = tensors[0].datatype
    row = _typed_row(tensors, datatype, [1])
    if row is None:
        return None
    names, array = row
    return [InferInput(name, datatype, [1], array[i : i + 1]) for i, name in enumerate(names)]


def usual_inputs(
    message: Any, names: tuple[str, ...], datatype: str, columns: int | None
) -> tuple[dict[str, npt.NDArray[Any]], str | None] | None:
    """The tensors (one row) and id of a usual ``ModelInferRequest`` (see
    :mod:`openlearner.predictor.usual`; ``names``, ``datatype`` and ``columns`` are its
    :attr:`~openlearner.predictor.usual.UsualRoad.inputs`): every input in that order, as
    :func:`_typed_row` reads it, of shape ``[1]`` (``[1, F]``); no raw contents, parameters
    or requested outputs. The tensors are those :func:`decode_infer_request` gives. None for
    any other request (the full decode takes it and names any problem)."""
    if message.raw_input_contents or message.parameters or message.outputs:
        return None
    tensors = message.inputs
    shape = [1] if columns is None else [1, columns]
    if len(tensors) != len(names) or len(names) * shape[-1] > MAX_ELEMENTS:
        return None
    row = _typed_row(tensors, datatype, shape, names)
    if row is None:
        return None
    array = row[1]
    if columns is not None:
        return {names[0]: array.reshape(shape)}, message.id or None
    return {name: array[i : i + 1] for i, name in enumerate(names)}, message.id or None


def _decoded_inputs(message: Any, raw: Any) -> list[InferInput]:
    """Every input of ``message``, decoded in full."""
    _check_declared_size(message)
    inputs = []
    for index, tensor in enumerate(message.inputs):
        where = _where(index, tensor.name)
        if not tensor.name:
            raise Invalid(f"{where} needs a 'name'")
        if tensor.datatype not in DATATYPES:
            raise Invalid(f"{where}: datatype {tensor.datatype!r} is not one of {', '.join(DATATYPES)}")
        shape = _shape(tensor, where)
        count = math.prod(shape)
        if raw:
            if tensor.HasField("contents"):
                raise Invalid(
                    f"{where} carries contents although the request uses raw_input_contents; use one"
                )
            array = _from_raw(raw[index], tensor.datatype, count, where)
        else:
            array = _from_contents(tensor.contents, tensor.datatype, count, where)
        inputs.append(InferInput(tensor.name, tensor.datatype, shape, array.reshape(shape)))
    return inputs


def decode_infer_request(message: Any) -> InferenceRequest:
    """A ``ModelInferRequest`` as the transport-free request; raises ``Invalid`` naming the first problem."""
    if not message.inputs:
        raise Invalid("the request needs at least one tensor in 'inputs'")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise Invalid(
            f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs; "
            "send one buffer per input, in the order of 'inputs'"
        )
    inputs = _single_values(message)
    if inputs is None:
        inputs = _decoded_inputs(message, raw)
    if len({i.name for i in inputs}) != len(inputs):
        raise Invalid("an input name appears twice in 'inputs'")
    outputs = [o.name for o in message.outputs] or None
    if outputs is not None and len(set(outputs)) != len(outputs):
        raise Invalid("an output name appears twice in 'outputs'")
    parameters = {}
    for key, value in message.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            parameters[key] = getattr(value, choice)
    return InferenceRequest(inputs, message.id or None, outputs, parameters)


def _raw(data: npt.NDArray[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in data.reshape(-1).tolist():
            element = value if isinstance(value, bytes) else str(value).encode()
            parts += (_LENGTH.pack(len(element)), element)
        return b"".join(parts)
    return np.ascontiguousarray(data, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<")).tobytes()


def encode_infer_response(response: InferenceResponse, *, raw: bool) -> Any:
    """The ``ModelInferResponse`` of ``response``: raw buffers if ``raw`` (or an output needs them), else typed."""
    message = ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    raw = raw or any(o.datatype not in _CONTENTS for o in response.outputs)
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw:
            message.raw_output_contents.append(_raw(output.data, output.datatype))
            continue
        values = output.data.reshape(-1)
        if output.datatype == "BYTES":
            elements = [v if isinstance(v, bytes) else str(v).encode() for v in values.tolist()]
            tensor.contents.bytes_contents.extend(elements)
        else:
            typed = values.astype(DATATYPES[output.datatype], copy=False).tolist()
            getattr(tensor.contents, _CONTENTS[output.datatype]).extend(typed)
    return message
