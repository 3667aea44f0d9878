"""Open Inference Protocol v2 wire types and the JSON codec (transport-free).

Follows the KServe/Triton "predict v2" REST spec: tensors carry ``name``, ``shape``,
``datatype`` and ``data`` (flat or nested, row-major). With Triton's binary tensor
extension a body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
raw little-endian tensor data: an input declares ``parameters.binary_data_size`` instead of
``data``; an output is sent raw when the request asks (``outputs[].parameters.binary_data``
or ``parameters.binary_data_output``). ``BYTES`` elements are a 4-byte little-endian length
followed by the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from openlearner.errors import Invalid

__all__ = [
    "DATATYPES",
    "InferInput",
    "InferOutput",
    "InferenceRequest",
    "InferenceResponse",
    "check_dimensions",
    "decode_request",
    "encode_binary_response",
    "encode_body",
    "encode_response",
    "to_array",
]

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
MAX_ELEMENTS = 10_000_000
"""Values one request may carry, over all its tensors."""
MAX_BATCH = 100_000
"""Rows (the first dimension) one request may carry."""
MAX_DIMS = 32  # numpy stops at 64; no model input comes near either
BINARY_EXTENSION = "binary_tensor_data"


@dataclass
class InferInput:
    """One input tensor of a request, decoded to numpy."""

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]


@dataclass
class InferOutput:
    """One output tensor of a response."""

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]


@dataclass
class InferenceRequest:
    """A decoded ``infer`` request."""

    inputs: list[InferInput]
    id: str | None = None
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Parameters of each requested output, by name (``binary_data`` among them)."""

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` is to be sent as raw binary data (the binary tensor extension)."""
        own = self.output_parameters.get(name, {}).get("binary_data")
        if isinstance(own, bool):
            return own
        return self.parameters.get("binary_data_output") is True


@dataclass
class InferenceResponse:
    """An ``infer`` response before encoding."""

    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise Invalid(f"{where}: 'shape' must be a list of non-negative integers, e.g. [1] or [2, 3]")
    check_dimensions(value, where)
    if math.prod(value) > MAX_ELEMENTS:
        raise Invalid(f"{where}: a tensor may hold at most {MAX_ELEMENTS} elements")
    return value


def check_dimensions(shape: list[int], where: str) -> None:
    """Refuse more dimensions than a tensor may have, or one larger than a request may hold
    (with a 0 beside it the product would pass, and numpy could not make the shape)."""
    if len(shape) > MAX_DIMS:
        raise Invalid(f"{where}: a tensor may have at most {MAX_DIMS} dimensions, not {len(shape)}")
    if any(d > MAX_ELEMENTS for d in shape):
        raise Invalid(
            f"{where}: shape {shape} has a dimension over {MAX_ELEMENTS}, more than a request may hold"
        )


def _kind(kind: type) -> str:
    """A Python scalar type's family: 'bool', 'int', 'float', 'str' or 'other'."""
    if issubclass(kind, bool | np.bool_):
        return "bool"
    if issubclass(kind, int | np.integer):
        return "int"
    if issubclass(kind, float | np.floating):
        return "float"
    return "str" if issubclass(kind, str) else "other"


def to_array(data: Any, datatype: str) -> npt.NDArray[Any]:
    """``data`` (a scalar, nested lists or an array) as a ``datatype`` array of the same nesting.

    JSON numbers are checked one by one, so a boolean never passes for a number (nor a
    number for a boolean), a fraction never passes for an integer, and a value that does
    not fit ``datatype`` is refused instead of wrapping around or becoming infinite. A
    numeric or boolean array is checked as a whole (:func:`cast_array`), to the same rules.
    Raises ``ValueError`` (or ``TypeError``) saying what was wrong.
    """
    if datatype not in DATATYPES:
        raise ValueError(f"datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    if isinstance(data, np.ndarray) and data.dtype.kind in "biuf":
        cast = cast_array(data, datatype)
        return cast.copy() if cast is data else cast  # the caller's array stays theirs
    target = np.dtype(DATATYPES[datatype])
    if type(data) is list and data and target.kind in "iuf":
        fast = _flat_numbers(data, datatype, target)
        if fast is not None:
            return fast
    # An object array keeps each JSON value as it came (True stays a bool, 1 an int); ragged
    # nesting leaves lists among the elements, which the type check below refuses.
    values = np.array(data, dtype=object)
    flat = values.reshape(-1).tolist()
    kinds = {_kind(k) for k in set(map(type, flat))}
    if datatype == "BYTES":
        if kinds - {"str"}:
            raise ValueError("BYTES data must be strings")
        return values
    allowed = {"BOOL": {"bool"}}.get(datatype, {"int"} if target.kind in "iu" else {"int", "float"})
    wrong = kinds - allowed
    if "other" in wrong or "str" in wrong:
        expected = "true or false" if datatype == "BOOL" else "numbers"
        ragged = any(isinstance(v, list) for v in flat)
        hint = "; nested lists must all have the same length" if ragged else ""
        raise ValueError(f"data must be {expected} for {datatype}{hint}")
    if datatype == "BOOL" and wrong:
        raise ValueError("BOOL data must be true or false, not numbers")
    if "bool" in wrong:
        raise ValueError(f"booleans given for {datatype}; send numbers")
    if wrong:
        raise ValueError(f"non-integer numbers given for {datatype}; send whole numbers within its range")
    if target.kind in "iu":
        info = np.iinfo(target)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise ValueError(f"a value is out of range for {datatype} ({info.min} to {info.max})")
        return np.array(flat, dtype=target).reshape(values.shape)
    if target.kind == "f":
        try:
            wide = np.array(flat, dtype=np.float64)
        except OverflowError:
            raise ValueError(f"a value is out of range for {datatype}") from None
        with np.errstate(over="ignore"):
            array = wide.astype(target)
        if np.any(np.isinf(array) & ~np.isinf(wide)):
            raise ValueError(f"a value is out of range for {datatype}")
        return array.reshape(values.shape)
    return np.array(flat, dtype=target).reshape(values.shape)


def cast_array(data: npt.NDArray[Any], datatype: str) -> npt.NDArray[Any]:
    """``data`` (an array) as ``datatype``, by :func:`to_array`'s rules for JSON values, but for
    the array as a whole: floats for an integer type, a value outside the type's range, a
    boolean for a number or a number for a boolean, text for a number are refused (a narrower
    float type rounds). Vectorised: a large tensor costs what ``astype`` does, and an array
    already of ``datatype`` is returned as it is. Raises ``ValueError`` saying what was wrong.
    """
    if datatype not in DATATYPES:
        raise ValueError(f"datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    target, source = np.dtype(DATATYPES[datatype]), data.dtype
    if source == target:
        return data
    takes = "iuf" if target.kind == "f" else "iu"  # integers take no floats; BOOL and BYTES nothing
    if target.kind not in "iuf" or source.kind not in takes:
        what = {"b": "booleans", "f": "floats", "O": "text", "U": "text", "S": "text"}.get(
            source.kind, "numbers"
        )
        kind = ": a non-integer type; send integers" if source.kind == "f" and target.kind in "iu" else ""
        raise ValueError(f"{what} cannot be sent as {datatype}{kind}")
    if target.kind in "iu":
        info = np.iinfo(target)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise ValueError(f"a value is out of range for {datatype} ({info.min} to {info.max})")
        return data.astype(target)
    with np.errstate(over="ignore"):
        cast = data.astype(target)
    if np.any(np.isinf(cast) & ~np.isinf(data)):
        raise ValueError(f"a value is out of range for {datatype}")
    return cast


def _binary_size(raw: dict[str, Any], index: int) -> int | None:
    where = f"inputs[{index}]"
    parameters = raw.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise Invalid(f"{where}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Invalid(f"{where}: 'binary_data_size' must be a non-negative integer")
    return size


def _from_binary(payload: bytes, datatype: str, shape: list[int], where: str) -> npt.NDArray[Any]:
    count = math.prod(shape)
    if datatype == "BYTES":
        items: list[str] = []
        offset = 0
        while offset < len(payload):
            if offset + 4 > len(payload):
                raise Invalid(f"{where}: BYTES data ends inside an element's 4-byte length")
            (length,) = struct.unpack_from("<I", payload, offset)
            offset += 4
            if offset + length > len(payload):
                raise Invalid(f"{where}: a BYTES element of {length} bytes runs past binary_data_size")
            try:
                items.append(payload[offset : offset + length].decode())
            except UnicodeDecodeError:
                raise Invalid(f"{where}: BYTES elements must be UTF-8 text") from None
            offset += length
            if len(items) > count:
                break
        if len(items) != count:
            held = f"more than {count}" if len(items) > count else str(len(items))
            raise Invalid(
                f"{where}: shape {shape} needs {count} BYTES elements but the binary data holds {held}"
            )
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(payload) != count * dtype.itemsize:
        raise Invalid(
            f"{where}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes "
            f"but binary_data_size is {len(payload)}"
        )
    array = np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
    if datatype == "BOOL" and np.any(np.frombuffer(payload, dtype=np.uint8) > 1):
        raise Invalid(f"{where}: BOOL bytes must be 0 or 1")
    return array.reshape(shape)


_INT_RANGES: dict[str, tuple[int, int]] = {
    name: (int(np.iinfo(t).min), int(np.iinfo(t).max))
    for name, t in DATATYPES.items()
    if np.dtype(t).kind in "iu"
}
_NUMERIC_DTYPES = {name: np.dtype(t) for name, t in DATATYPES.items() if np.dtype(t).kind in "iuf"}
_FLOAT_LIMITS = {name: float(np.finfo(t).max) for name, t in DATATYPES.items() if np.dtype(t).kind == "f"}


def _flat_numbers(data: list[Any], datatype: str, target: np.dtype[Any]) -> npt.NDArray[Any] | None:
    """The common case quickly: a flat list of plain ints (or numbers, for a float type); else None."""
    kinds = {type(data[0])} if len(data) == 1 else set(map(type, data))
    if kinds == {int} and target.kind in "iu":
        low, high = _INT_RANGES[datatype]
        if (data[0] < low or data[0] > high) if len(data) == 1 else (min(data) < low or max(data) > high):
            raise ValueError(f"a value is out of range for {datatype} ({low} to {high})")
        return np.array(data, dtype=target)
    if kinds <= {int, float} and target.kind == "f":
        limit = _FLOAT_LIMITS[datatype]
        if -limit <= min(data) and max(data) <= limit:  # every value fits: convert in one step
            return np.array(data, dtype=target)
        try:
            wide = np.array(data, dtype=np.float64)
        except OverflowError:
            raise ValueError(f"a value is out of range for {datatype}") from None
        if target == np.float64:
            return wide
        with np.errstate(over="ignore"):
            array = wide.astype(target)
        if np.any(np.isinf(array) & ~np.isinf(wide)):
            raise ValueError(f"a value is out of range for {datatype}")
        return array
    return None


def _usual_head(
    raw: dict[str, Any], dtypes: Mapping[str, np.dtype[Any]]
) -> tuple[str, str, list[Any], np.dtype[Any]] | None:
    """Name, datatype, shape and numpy dtype of an input that names itself plainly (a
    non-empty name, a datatype in ``dtypes``, a list shape of at most MAX_DIMS); else None.
    Parameters are the caller's to judge (binary inputs always carry some)."""
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if type(datatype) is not str or type(name) is not str or not name or type(shape) is not list:
        return None
    dtype = dtypes.get(datatype)
    if dtype is None or len(shape) > MAX_DIMS:
        return None
    return name, datatype, shape, dtype


def _plain(raw: dict[str, Any]) -> InferInput | None:
    """The usual JSON input quickly (a flat list of numbers matching a plain shape), or None to decode it fully."""
    head = _usual_head(raw, _NUMERIC_DTYPES)
    data = raw.get("data")
    if head is None or type(data) is not list or not data or "parameters" in raw:
        return None
    name, datatype, shape, target = head
    if len(shape) == 1:  # the usual shape, [rows]: the data is already that shape
        if type(shape[0]) is not int or shape[0] != len(data):
            return None
    else:
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                return None
            count *= dim
        if count != len(data):
            return None
    try:
        array = _flat_numbers(data, datatype, target)
    except ValueError:
        return None  # the full decoder names the problem
    if array is None:
        return None
    return InferInput(name, datatype, shape, array if len(shape) == 1 else array.reshape(shape))


_LITTLE_ENDIAN = {name: np.dtype(t).newbyteorder("<") for name, t in _NUMERIC_DTYPES.items()}
"""Byte order of the binary tensor extension, for the numeric datatypes (not BOOL, not BYTES)."""


def _plain_binary(raw: dict[str, Any], binary: memoryview) -> InferInput | None:
    """The usual binary input quickly (numbers, shape [rows], the right byte count), or None to decode it fully."""
    head = _usual_head(raw, _LITTLE_ENDIAN)
    if head is None:
        return None
    name, datatype, shape, dtype = head
    if len(shape) != 1 or type(shape[0]) is not int or len(binary) != shape[0] * dtype.itemsize:
        return None
    return InferInput(
        name, datatype, shape, np.frombuffer(binary, dtype=dtype).astype(dtype.newbyteorder("="))
    )


def _decode_input(raw: Any, index: int, binary: memoryview | None = None) -> InferInput:
    if type(raw) is dict:
        plain = _plain(raw) if binary is None else _plain_binary(raw, binary)
        if plain is not None:
            return plain
    if not isinstance(raw, dict):
        raise Invalid(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(f"inputs[{index}] needs a 'name' (string)")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise Invalid(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = _shape(raw.get("shape"), where)
    if binary is not None:
        return InferInput(name, datatype, shape, _from_binary(bytes(binary), datatype, shape, where))
    if "data" not in raw:
        raise Invalid(f"{where} has no 'data'")
    data = raw["data"]
    if not isinstance(data, list):
        data = [data]
    try:
        array = to_array(data, datatype).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise Invalid(f"{where}: {exc}") from None
    if array.size != math.prod(shape):
        raise Invalid(f"{where}: shape {shape} needs {math.prod(shape)} values but data holds {array.size}")
    return InferInput(name, datatype, shape, array.reshape(shape))


def _check_declared_size(raw_inputs: list[Any]) -> None:
    """Refuse an oversized request from its declared shapes, before decoding any data.

    ``raw_inputs`` is parsed JSON (``orjson``): its objects are plain dicts.
    """
    total = 0
    for raw in raw_inputs:
        shape = raw.get("shape") if type(raw) is dict else None
        if type(shape) is list and len(shape) == 1 and type(shape[0]) is int and 0 <= shape[0] <= MAX_BATCH:
            total += shape[0]  # the usual shape, [rows], within bounds
            continue
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            continue  # _decode_input names the problem
        check_dimensions(shape, f"input {raw.get('name')!r}")  # before multiplying them out
        if shape and shape[0] > MAX_BATCH:
            raise Invalid(
                f"input {raw.get('name')!r} has {shape[0]} rows; a request may carry at most {MAX_BATCH}"
            )
        total += math.prod(shape)
    if total > MAX_ELEMENTS:
        raise Invalid(f"the request declares {total} values; at most {MAX_ELEMENTS} fit in one request")


def _decode_inputs(raw_inputs: list[Any], header_length: int | None, tail: memoryview) -> list[InferInput]:
    """Every input of a request, decoded in full (binary tensor data read from ``tail``)."""
    _check_declared_size(raw_inputs)
    inputs = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        size = _binary_size(raw, i) if isinstance(raw, dict) and "parameters" in raw else None
        if size is not None and "data" in raw:
            raise Invalid(f"inputs[{i}] has both 'data' and 'binary_data_size'; send one of them")
        if size is not None and header_length is None:
            raise Invalid(
                f"inputs[{i}] declares binary_data_size but the request has no "
                "Inference-Header-Content-Length header saying where its JSON ends"
            )
        chunk = None
        if size is not None:
            if offset + size > len(tail):
                raise Invalid(
                    f"inputs[{i}] declares {size} bytes of binary data but only {len(tail) - offset} follow the header"
                )
            chunk = tail[offset : offset + size]
            offset += size
        inputs.append(_decode_input(raw, i, chunk))
    if offset != len(tail):
        raise Invalid(
            f"{len(tail) - offset} bytes follow the header that no input's binary_data_size accounts for"
        )
    return inputs


def _single_values(raw_inputs: list[Any], tail: memoryview | None) -> list[InferInput] | None:
    """The usual one-row request quickly: each input one number of shape ``[1]``, all of one
    numeric datatype (entity keys and request inputs, say), converted in one step; else None
    to decode each input in full (which also names any problem).

    ``tail``: the binary tensor data after the JSON header of a request in the binary
    extension (None for JSON data), where each input then declares just its
    ``binary_data_size`` (one value's bytes) and the values follow one another.
    """
    first = raw_inputs[0]
    datatype = first.get("datatype") if type(first) is dict else None
    if type(datatype) is not str or datatype not in _NUMERIC_DTYPES:
        return None
    dtype = _NUMERIC_DTYPES[datatype]
    names: list[str] = []
    values: list[Any] = []
    for raw in raw_inputs:
        if type(raw) is not dict or raw.get("datatype") != datatype:
            return None
        name, shape = raw.get("name"), raw.get("shape")
        if type(name) is not str or not name or type(shape) is not list or len(shape) != 1:
            return None
        if type(shape[0]) is not int or shape[0] != 1:
            return None
        names.append(name)
        if tail is not None:
            parameters = raw.get("parameters")
            if "data" in raw or type(parameters) is not dict or len(parameters) != 1:
                return None
            size = parameters.get("binary_data_size")
            if type(size) is not int or size != dtype.itemsize:
                return None
            continue
        data = raw.get("data")
        if "parameters" in raw or type(data) is not list or len(data) != 1:
            return None
        values.append(data[0])
    if tail is not None:
        if len(tail) != len(names) * dtype.itemsize:
            return None
        array = np.frombuffer(tail, dtype=_LITTLE_ENDIAN[datatype]).astype(dtype.newbyteorder("="))
    else:
        try:  # the values as one input's data: checked and converted as the full decoder does
            converted = _flat_numbers(values, datatype, dtype)
        except ValueError:
            return None  # the full decoder names the problem
        if converted is None:
            return None
        array = converted
    return [InferInput(name, datatype, [1], array[i : i + 1]) for i, name in enumerate(names)]


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """Parse an ``infer`` body; raises ``Invalid`` naming the first problem.

    ``header_length`` is the ``Inference-Header-Content-Length`` of a body in the binary
    tensor extension: the JSON header is that many bytes, tensor data follows.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise Invalid(
            f"Inference-Header-Content-Length is {header_length} but the body holds {len(body)} bytes"
        )
    header = body if header_length is None else body[:header_length]
    tail = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    try:
        payload = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Invalid("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise Invalid("the request needs a non-empty 'inputs' list")
    inputs = _single_values(raw_inputs, tail if header_length is not None else None)
    if inputs is None:
        inputs = _decode_inputs(raw_inputs, header_length, tail)
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise Invalid("an input name appears twice in 'inputs'")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise Invalid("'id' must be a string")
    outputs = None
    output_parameters: dict[str, dict[str, Any]] = {}
    if payload.get("outputs") is not None:
        raw_outputs = payload["outputs"]
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise Invalid("'outputs' must be a list of objects with a 'name'")
        outputs = [o["name"] for o in raw_outputs]
        if len(set(outputs)) != len(outputs):
            raise Invalid("an output name appears twice in 'outputs'")
        for o in raw_outputs:
            params = o.get("parameters")
            if params is None:
                continue
            if not isinstance(params, dict):
                raise Invalid(f"output {o['name']!r}: 'parameters' must be an object")
            if not isinstance(params.get("binary_data", False), bool):
                raise Invalid(f"output {o['name']!r}: 'binary_data' must be true or false")
            output_parameters[o["name"]] = params
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise Invalid("'parameters' must be an object")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise Invalid("'binary_data_output' must be true or false")
    return InferenceRequest(inputs, request_id, outputs, parameters, output_parameters)


def _to_binary(data: npt.NDArray[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in data.reshape(-1).tolist():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    dtype = _LITTLE_ENDIAN.get(datatype)
    if dtype is None:  # BOOL
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    return np.ascontiguousarray(data, dtype=dtype).tobytes()


def encode_body(
    model_name: str,
    model_version: str,
    outputs: Iterable[tuple[str, str, list[int], npt.NDArray[Any]]],
    request_id: str | None,
    binary: Container[str] = (),
) -> tuple[bytes, int]:
    """The body of an ``infer`` response and its JSON header's length (all of it when no output
    is raw): each output ``(name, datatype, shape, data)`` as JSON ``data``, or, when its name
    is in ``binary``, as raw bytes after the header (the binary tensor extension)."""
    chunks: list[bytes] = []
    described: list[dict[str, Any]] = []
    for name, datatype, shape, data in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in binary:
            raw = _to_binary(data, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(data, datatype)
        described.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if request_id is not None:
        body["id"] = request_id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return header + b"".join(chunks), len(header)


def _json_data(data: npt.NDArray[Any], datatype: str) -> Any:
    flat = data.reshape(-1)
    if datatype == "BYTES":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    return flat


def _described(response: InferenceResponse) -> Iterator[tuple[str, str, list[int], npt.NDArray[Any]]]:
    return ((o.name, o.datatype, o.shape, o.data) for o in response.outputs)


def encode_binary_response(response: InferenceResponse, binary: set[str]) -> tuple[bytes, int]:
    """The body of a response whose outputs named in ``binary`` are raw, and its JSON header length."""
    return encode_body(response.model_name, response.model_version, _described(response), response.id, binary)


def encode_response(response: InferenceResponse) -> bytes:
    """The JSON body of an ``infer`` response."""
    return encode_body(response.model_name, response.model_version, _described(response), response.id)[0]
