"""The OIP v2 JSON codec: every datatype, flat and nested data, and every way a body can be wrong."""

from __future__ import annotations

import struct
import time
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openlearner.errors import Invalid
from openlearner.predictor.protocol import (
    DATATYPES,
    MAX_DIMS,
    MAX_ELEMENTS,
    InferenceResponse,
    InferOutput,
    cast_array,
    decode_request,
    encode_binary_response,
    encode_response,
    to_array,
)


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(data: Any, datatype: str = "FP32", shape: Any = None, name: str = "x") -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": [len(data)] if shape is None else shape,
        "data": data,
    }


def decode_one(raw: dict[str, Any]) -> np.ndarray:
    request = decode_request(body(raw))
    assert len(request.inputs) == 1
    return request.inputs[0].data


def invalid(payload: bytes, *fragments: str) -> str:
    with pytest.raises(Invalid) as caught:
        decode_request(payload)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- decoding: values ------------------------------------------------------------------------
NUMERIC = {
    "UINT8": ([0, 255], np.uint8),
    "UINT16": ([0, 65535], np.uint16),
    "UINT32": ([0, 2**32 - 1], np.uint32),
    "UINT64": ([0, 2**64 - 1], np.uint64),
    "INT8": ([-128, 127], np.int8),
    "INT16": ([-(2**15), 2**15 - 1], np.int16),
    "INT32": ([-(2**31), 2**31 - 1], np.int32),
    "INT64": ([-(2**63), 2**63 - 1], np.int64),
    "FP16": ([-1.5, 2.0], np.float16),
    "FP32": ([-1.5, 0.25], np.float32),
    "FP64": ([-1.5, 1e300], np.float64),
}


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_every_numeric_datatype_decodes_to_its_numpy_type_including_its_extremes(datatype: str) -> None:
    values, dtype = NUMERIC[datatype]
    data = decode_one(tensor(values, datatype))
    assert data.dtype == np.dtype(dtype)
    assert data.tolist() == values


def test_bool_and_bytes_decode() -> None:
    assert decode_one(tensor([True, False], "BOOL")).tolist() == [True, False]
    assert decode_one(tensor([True, False], "BOOL")).dtype == np.bool_
    text = decode_one(tensor(["ab", "ü€"], "BYTES"))
    assert text.dtype == object
    assert text.tolist() == ["ab", "ü€"]


def test_the_table_of_datatypes_is_the_spec_s() -> None:
    assert set(DATATYPES) == {*NUMERIC, "BOOL", "BYTES"}


def test_integers_are_accepted_for_float_datatypes() -> None:
    data = decode_one(tensor([1, 2.5], "FP64"))
    assert data.tolist() == [1.0, 2.5]


def test_nested_data_is_read_row_major_and_equals_flat_data() -> None:
    nested = decode_one(tensor([[1, 2, 3], [4, 5, 6]], "INT32", shape=[2, 3]))
    flat = decode_one(tensor([1, 2, 3, 4, 5, 6], "INT32", shape=[2, 3]))
    assert nested.shape == flat.shape == (2, 3)
    np.testing.assert_array_equal(nested, flat)
    assert nested[1].tolist() == [4, 5, 6]


def test_nested_data_is_reshaped_to_the_declared_shape() -> None:
    data = decode_one(tensor([[1, 2], [3, 4], [5, 6]], "FP32", shape=[2, 3]))
    assert data.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_nested_bytes() -> None:
    data = decode_one(tensor([["a"], ["b"]], "BYTES", shape=[2, 1]))
    assert data.shape == (2, 1)
    assert data[:, 0].tolist() == ["a", "b"]


def test_a_scalar_data_value_fills_a_one_element_tensor() -> None:
    assert decode_one({"name": "x", "datatype": "INT64", "shape": [1], "data": 7}).tolist() == [7]


@pytest.mark.parametrize("datatype", ["INT64", "FP32", "BOOL", "BYTES"])
def test_an_empty_tensor_decodes_for_any_datatype(datatype: str) -> None:
    data = decode_one(tensor([], datatype, shape=[0]))
    assert data.shape == (0,)
    assert data.dtype == np.dtype(DATATYPES[datatype])


def test_an_empty_matrix_keeps_its_shape() -> None:
    assert decode_one(tensor([], "FP32", shape=[0, 8])).shape == (0, 8)


def test_request_id_outputs_and_parameters() -> None:
    request = decode_request(
        body(
            tensor([1.0]),
            tensor([2], "INT64", name="y"),
            id="abc",
            outputs=[{"name": "probability"}, {"name": "label", "parameters": {}}],
            parameters={"trace": True},
        )
    )
    assert [i.name for i in request.inputs] == ["x", "y"]
    assert request.id == "abc"
    assert request.outputs == ["probability", "label"]
    assert request.parameters == {"trace": True}


def test_without_outputs_every_output_is_wanted() -> None:
    request = decode_request(body(tensor([1.0])))
    assert request.outputs is None
    assert request.id is None
    assert request.parameters == {}


# -- decoding: errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "data"),
    [([3], [1, 2]), ([1], [1, 2]), ([2, 2], [1, 2, 3]), ([2, 3], [[1, 2], [3, 4]]), ([0], [1])],
)
def test_shape_and_data_size_must_agree(shape: list[int], data: list[Any]) -> None:
    invalid(body(tensor(data, "FP32", shape=shape)), "input 'x'", f"shape {shape}")


def test_ragged_nested_data_is_refused() -> None:
    invalid(body(tensor([[1, 2], [3]], "INT64", shape=[3])), "same length")
    invalid(body(tensor([[1, 2], 3], "INT64", shape=[3])), "input 'x'")


@pytest.mark.parametrize("datatype", ["FLOAT32", "fp32", "", None, 7, ["FP32"], {"FP32": 1}])
def test_a_datatype_outside_the_spec_is_refused_naming_the_valid_ones(datatype: Any) -> None:
    invalid(body(tensor([1.0], datatype)), "datatype", "FP32", "BYTES")


def test_missing_datatype_is_refused() -> None:
    invalid(body({"name": "x", "shape": [1], "data": [1]}), "datatype")


@pytest.mark.parametrize("datatype", ["INT64", "INT8", "UINT8", "FP32", "FP64"])
def test_booleans_are_not_numbers(datatype: str) -> None:
    invalid(body(tensor([True, False], datatype)), "booleans given for " + datatype)
    invalid(body(tensor([1, True], datatype)), "booleans")  # one bool among numbers is caught too


def test_numbers_are_not_booleans() -> None:
    invalid(body(tensor([0, 1], "BOOL")), "BOOL data must be true or false")
    invalid(body(tensor([True, 5], "BOOL")), "BOOL")
    invalid(body(tensor([1.0], "BOOL")), "BOOL")


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("INT8", 128),
        ("INT8", -129),
        ("UINT8", 256),
        ("UINT8", -1),
        ("INT16", 2**15),
        ("UINT16", 2**16),
        ("INT32", 2**31),
        ("INT32", -(2**31) - 1),
        ("UINT32", 2**32),
        ("INT64", 2**63),
        ("UINT64", -1),
    ],
)
def test_out_of_range_integers_are_refused_not_wrapped(datatype: str, value: int) -> None:
    invalid(body(tensor([0, value], datatype)), "out of range", datatype)


@pytest.mark.parametrize(("datatype", "value"), [("FP16", 70000.0), ("FP32", 1e39), ("FP32", -1e39)])
def test_floats_too_large_for_the_datatype_are_refused_not_made_infinite(datatype: str, value: float) -> None:
    invalid(body(tensor([1.0, value], datatype)), "out of range", datatype)


@pytest.mark.parametrize("datatype", ["INT64", "INT32", "UINT8"])
def test_floats_are_not_integers(datatype: str) -> None:
    invalid(body(tensor([1.5], datatype)), "non-integer", datatype)
    invalid(body(tensor([1, 2.0], datatype)), "non-integer")  # 2.0 is a float on the wire


def test_integers_beyond_64_bits_are_refused() -> None:
    # orjson reads an integer beyond 64 bits as a float.
    invalid(
        b'{"inputs":[{"name":"x","datatype":"INT64","shape":[1],"data":[18446744073709551616]}]}', "INT64"
    )


@pytest.mark.parametrize(
    "data", [["1"], [None], [{"a": 1}], [[1], "a"], [1, "2"]], ids=["str", "null", "obj", "mix", "mix2"]
)
def test_non_numbers_are_refused_for_numeric_datatypes(data: list[Any]) -> None:
    invalid(body(tensor(data, "FP32", shape=[len(data)])), "input 'x'")


def test_bytes_must_be_strings() -> None:
    invalid(body(tensor([1, 2], "BYTES")), "BYTES data must be strings")
    invalid(body(tensor([["a"], ["b", "c"]], "BYTES", shape=[3])), "BYTES")


@pytest.mark.parametrize(
    "shape", [2, "2", None, [-1], [1.0], [True], [[1]], {"0": 1}], ids=lambda s: f"shape={s!r}"
)
def test_shape_must_be_a_list_of_non_negative_integers(shape: Any) -> None:
    invalid(body({"name": "x", "datatype": "FP32", "shape": shape, "data": [1.0]}), "'shape' must be a list")


@pytest.mark.parametrize("dims", [MAX_DIMS + 1, 65, 1000])
def test_too_many_dimensions_are_refused(dims: int) -> None:
    invalid(body(tensor([1.0], "FP32", shape=[1] * dims)), "at most", "dimensions")


def test_as_many_dimensions_as_allowed_decode() -> None:
    assert decode_one(tensor([1.0], "FP32", shape=[1] * MAX_DIMS)).ndim == MAX_DIMS


def test_shape_is_required() -> None:
    invalid(body({"name": "x", "datatype": "FP32", "data": [1.0]}), "'shape'")


def test_a_huge_shape_is_refused_before_anything_is_allocated() -> None:
    invalid(body(tensor([1.0], "FP32", shape=[MAX_ELEMENTS, 2])), "at most")


def test_thousands_of_huge_dimensions_are_refused_at_once() -> None:
    # Multiplied out first, they took seconds, and the product was too long to print (a 500).
    shape = [1] + [2**62] * 40_000
    began = time.perf_counter()
    invalid(body(tensor([], "FP32", shape=shape)), f"at most {MAX_DIMS} dimensions")
    assert time.perf_counter() - began < 1


@pytest.mark.parametrize("shape", [[0, 3, 2**63 - 1], [0, 2**64 - 1], [1, 0, 2**40]])
def test_a_huge_dimension_beside_a_zero_is_refused(shape: list[int]) -> None:
    # The product is 0, so only a check per dimension stops it (numpy cannot make the shape).
    invalid(body(tensor([], "FP32", shape=shape)), "has a dimension over", str(MAX_ELEMENTS))
    header = {"inputs": [raw_tensor("x", "FP32", shape, 0)]}
    invalid_binary(*binary_body(header), "has a dimension over")
    header = {"inputs": [raw_tensor("t", "BYTES", shape, 0)]}
    invalid_binary(*binary_body(header), "has a dimension over")


@pytest.mark.parametrize("name", [None, "", 5, ["x"]])
def test_every_input_needs_a_string_name(name: Any) -> None:
    raw = {"datatype": "FP32", "shape": [1], "data": [1.0]}
    if name is not None:
        raw["name"] = name
    invalid(body(raw), "inputs[0] needs a 'name'")


def test_every_input_needs_data() -> None:
    invalid(body({"name": "x", "datatype": "FP32", "shape": [1]}), "input 'x' has no 'data'")


def test_input_names_must_be_unique() -> None:
    invalid(body(tensor([1.0]), tensor([2.0])), "appears twice")


def test_each_input_must_be_an_object() -> None:
    invalid(body(tensor([1.0]), [1, 2]), "inputs[1] must be an object")


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"inputs"', b"null", b"true"])
def test_the_body_must_be_an_object(payload: bytes) -> None:
    invalid(payload, "must be a JSON object")


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"{'inputs': []}", b"\xff\xfe", b'{"inputs": [NaN]}', b"{} x"]
)
def test_invalid_json_is_refused(payload: bytes) -> None:
    invalid(payload, "not valid JSON")


@pytest.mark.parametrize("inputs", [None, [], {}, "x"])
def test_inputs_must_be_a_non_empty_list(inputs: Any) -> None:
    payload = orjson.dumps({} if inputs is None else {"inputs": inputs})
    invalid(payload, "non-empty 'inputs' list")


@pytest.mark.parametrize("request_id", [1, ["a"], {"a": 1}, True])
def test_id_must_be_a_string(request_id: Any) -> None:
    invalid(body(tensor([1.0]), id=request_id), "'id' must be a string")


@pytest.mark.parametrize(
    "outputs", ["probability", [{"name": 1}], ["probability"], [{}], {"name": "label"}], ids=repr
)
def test_outputs_must_be_a_list_of_named_objects(outputs: Any) -> None:
    invalid(body(tensor([1.0]), outputs=outputs), "'outputs' must be a list")


def test_output_names_must_be_unique() -> None:
    invalid(body(tensor([1.0]), outputs=[{"name": "label"}, {"name": "label"}]), "appears twice")


@pytest.mark.parametrize("parameters", [[1], "x", 3])
def test_parameters_must_be_an_object(parameters: Any) -> None:
    invalid(body(tensor([1.0]), parameters=parameters), "'parameters' must be an object")


# -- to_array (library mode shares it) ------------------------------------------------------------
def test_to_array_takes_numpy_arrays_with_the_same_checks() -> None:
    assert to_array(np.array([1, 2], dtype=np.int32), "INT64").dtype == np.int64
    assert to_array(np.array([[1.5, 2.0]], dtype=np.float32), "FP32").shape == (1, 2)
    nan = to_array(np.array([np.nan], dtype=np.float64), "FP32")  # NaN is a value, not an overflow
    assert np.isnan(nan[0])
    with pytest.raises(ValueError, match="non-integer"):
        to_array(np.array([1.5]), "INT64")
    with pytest.raises(ValueError, match="booleans"):
        to_array(np.array([True]), "INT64")
    with pytest.raises(ValueError, match="out of range"):
        to_array(np.array([300], dtype=np.int64), "UINT8")


def test_to_array_checks_a_numeric_array_whole_and_gives_back_its_own() -> None:
    given = np.array([[1.0, 2.5]], dtype=np.float32)
    same = to_array(given, "FP32")
    assert same is not given and np.array_equal(same, given)  # a copy: the caller's stays theirs
    with pytest.raises(ValueError, match="floats cannot be sent as INT64: a non-integer type"):
        to_array(np.array([[1.0, 2.0]]), "INT64")  # whole values too: the type decides, as on the wire
    with pytest.raises(ValueError, match=r"floats cannot be sent as BYTES$"):
        to_array(np.array([1.0]), "BYTES")


def test_cast_array_converts_what_fits_and_refuses_what_to_array_refuses() -> None:
    values = np.array([[0.1, 2.5, -3.0]], dtype=np.float32)
    wide = cast_array(values, "FP64")
    assert wide.dtype == np.float64 and np.array_equal(wide, values.astype(np.float64))  # exact
    assert cast_array(values, "FP32") is values
    keys = cast_array(np.array([7, -(2**31)], dtype=np.int64), "INT32")
    assert keys.dtype == np.int32 and keys.tolist() == [7, -(2**31)]
    assert cast_array(np.array([2**63 - 1], dtype=np.uint64), "INT64").tolist() == [2**63 - 1]
    assert cast_array(np.array([], dtype=np.int64), "UINT8").dtype == np.uint8
    for data, datatype, message in [
        (np.array([2**31], dtype=np.int64), "INT32", "out of range for INT32"),
        (np.array([-1], dtype=np.int64), "UINT64", "out of range for UINT64"),
        (np.array([2**63], dtype=np.uint64), "INT64", "out of range for INT64"),
        (np.array([2.0]), "INT64", "floats cannot be sent as INT64"),
        (np.array([1e300]), "FP32", "out of range for FP32"),
        (np.array([70_000], dtype=np.int64), "FP16", "out of range for FP16"),
        (np.array([True]), "INT64", "booleans cannot be sent as INT64"),
        (np.array([1], dtype=np.int64), "BOOL", "numbers cannot be sent as BOOL"),
        (np.array(["a"], dtype=object), "INT64", "text cannot be sent as INT64"),
        (np.array([1.0]), "BYTES", "floats cannot be sent as BYTES"),
        (np.array([1.0]), "FP8", "is not one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            cast_array(data, datatype)
    infinite = cast_array(np.array([np.inf, np.nan]), "FP32")  # an infinity sent stays one
    assert np.isinf(infinite[0]) and np.isnan(infinite[1])


# -- encoding ----------------------------------------------------------------------------------------
def test_encode_response_writes_flat_data_and_the_declared_shape() -> None:
    response = InferenceResponse(
        model_name="m",
        model_version="3",
        id="req-1",
        outputs=[
            InferOutput("label", "INT64", [2], np.array([0, 1], dtype=np.int64)),
            InferOutput("probability", "FP32", [2], np.array([0.25, 0.75], dtype=np.float32)),
            InferOutput("grid", "FP64", [2, 2], np.array([[1.0, 2.0], [3.0, 4.0]])),
        ],
    )
    decoded = orjson.loads(encode_response(response))
    assert decoded == {
        "model_name": "m",
        "model_version": "3",
        "id": "req-1",
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]},
            {"name": "probability", "datatype": "FP32", "shape": [2], "data": [0.25, 0.75]},
            {"name": "grid", "datatype": "FP64", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]},
        ],
    }


def test_encode_response_leaves_out_a_missing_id() -> None:
    response = InferenceResponse("m", "1", [InferOutput("p", "FP32", [1], np.array([0.5], np.float32))])
    assert "id" not in orjson.loads(encode_response(response))


def test_an_encoded_response_decodes_back_as_a_request_of_the_same_tensors() -> None:
    outputs = [InferOutput("x", "FP32", [2, 2], np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))]
    encoded = orjson.loads(encode_response(InferenceResponse("m", "1", outputs)))
    request = decode_request(orjson.dumps({"inputs": encoded["outputs"]}))
    np.testing.assert_array_equal(request.inputs[0].data, outputs[0].data)


# -- the binary tensor extension ---------------------------------------------------------------------
def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, int]:
    encoded = orjson.dumps(header)
    return encoded + b"".join(chunks), len(encoded)


def raw_tensor(name: str, datatype: str, shape: list[int], size: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
        **extra,
    }


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_binary_inputs_of_every_fixed_size_datatype_decode_little_endian(datatype: str) -> None:
    dtype = np.dtype(DATATYPES[datatype])
    values = np.array([[0, 1, 1], [1, 0, 1]]).astype(dtype)
    payload = values.astype(dtype.newbyteorder("<")).tobytes()
    body, length = binary_body({"inputs": [raw_tensor("x", datatype, [2, 3], len(payload))]}, payload)
    decoded = decode_request(body, length).inputs[0].data
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, values)


def test_binary_and_json_inputs_mix_and_binary_chunks_follow_in_input_order() -> None:
    a = np.arange(3, dtype=np.float32)
    b = np.array([7, 8], dtype=np.int64)
    header = {
        "inputs": [
            raw_tensor("a", "FP32", [3], 12),
            {"name": "j", "datatype": "INT32", "shape": [1], "data": [5]},
            raw_tensor("b", "INT64", [2], 16),
        ]
    }
    request = decode_request(*binary_body(header, a.tobytes(), b.tobytes()))
    assert [i.data.tolist() for i in request.inputs] == [[0.0, 1.0, 2.0], [5], [7, 8]]


def test_binary_bytes_elements_are_length_prefixed_utf8() -> None:
    payload = bytes_elements(b"ab", "ü€".encode(), b"")
    body, length = binary_body({"inputs": [raw_tensor("t", "BYTES", [3], len(payload))]}, payload)
    assert decode_request(body, length).inputs[0].data.tolist() == ["ab", "ü€", ""]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (bytes_elements(b"a"), "needs 2 BYTES elements"),
        (bytes_elements(b"a", b"b", b"c"), "needs 2 BYTES elements but the binary data holds more than 2"),
        (bytes_elements(b"a", b"b", b"c", b"d", b"e"), "holds more than 2"),
        (struct.pack("<I", 10) + b"abc", "runs past"),
        (b"\x01\x00", "4-byte length"),
        (bytes_elements(b"\xff", b"a"), "UTF-8"),
    ],
)
def test_malformed_binary_bytes_are_refused(payload: bytes, message: str) -> None:
    body, length = binary_body({"inputs": [raw_tensor("t", "BYTES", [2], len(payload))]}, payload)
    invalid_binary(body, length, message)


def invalid_binary(body: bytes, length: int | None, *fragments: str) -> None:
    with pytest.raises(Invalid) as caught:
        decode_request(body, length)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_binary_size_must_match_the_shape() -> None:
    body, length = binary_body({"inputs": [raw_tensor("x", "FP32", [3], 8)]}, b"\x00" * 8)
    invalid_binary(body, length, "needs 12 bytes", "binary_data_size is 8")


def test_binary_data_must_be_all_there_and_nothing_more() -> None:
    header = {"inputs": [raw_tensor("x", "FP32", [2], 8)]}
    invalid_binary(*binary_body(header, b"\x00" * 4), "declares 8 bytes", "only 4 follow")
    invalid_binary(*binary_body(header, b"\x00" * 12), "4 bytes follow the header")


def test_binary_data_needs_the_header_length() -> None:
    body, _ = binary_body({"inputs": [raw_tensor("x", "FP32", [1], 4)]})
    invalid_binary(body, None, "Inference-Header-Content-Length")


@pytest.mark.parametrize("length", [-1, 10_000])
def test_a_header_length_beyond_the_body_is_refused(length: int) -> None:
    body, _ = binary_body({"inputs": [raw_tensor("x", "FP32", [1], 4)]}, b"\x00" * 4)
    invalid_binary(body, length, "Inference-Header-Content-Length is")


def test_a_header_length_that_cuts_the_json_is_invalid_json() -> None:
    body, length = binary_body({"inputs": [raw_tensor("x", "FP32", [1], 4)]}, b"\x00" * 4)
    invalid_binary(body, length - 3, "not valid JSON")


@pytest.mark.parametrize("size", [-1, 1.5, "4", True])
def test_binary_data_size_must_be_a_non_negative_integer(size: Any) -> None:
    header = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": size}}]
    }
    invalid_binary(*binary_body(header, b"\x00" * 4), "binary_data_size")


def test_data_and_binary_data_size_together_are_refused() -> None:
    header = {"inputs": [raw_tensor("x", "FP32", [1], 4, data=[1.0])]}
    invalid_binary(*binary_body(header, b"\x00" * 4), "both 'data' and 'binary_data_size'")


def test_bool_bytes_must_be_zero_or_one() -> None:
    invalid_binary(*binary_body({"inputs": [raw_tensor("x", "BOOL", [2], 2)]}, b"\x01\x02"), "0 or 1")


def test_which_outputs_are_binary() -> None:
    base = {"inputs": [tensor([1.0])]}
    plain = decode_request(orjson.dumps(base))
    assert not plain.binary_output("p")
    every = decode_request(orjson.dumps({**base, "parameters": {"binary_data_output": True}}))
    assert every.binary_output("p")
    outputs = [
        {"name": "p", "parameters": {"binary_data": True}},
        {"name": "q", "parameters": {"binary_data": False}},
    ]
    mixed = decode_request(
        orjson.dumps({**base, "outputs": outputs, "parameters": {"binary_data_output": True}})
    )
    assert mixed.binary_output("p") and not mixed.binary_output("q")
    invalid(orjson.dumps({**base, "parameters": {"binary_data_output": "yes"}}), "binary_data_output")
    invalid(
        orjson.dumps({**base, "outputs": [{"name": "p", "parameters": {"binary_data": 1}}]}), "binary_data"
    )


def test_a_binary_response_is_a_json_header_then_raw_outputs() -> None:
    response = InferenceResponse(
        "m",
        "2",
        [
            InferOutput("label", "INT64", [2], np.array([0, 1], np.int64)),
            InferOutput("probability", "FP32", [2], np.array([0.25, 0.75], np.float32)),
            InferOutput("name", "BYTES", [2], np.array(["a", "bc"], dtype=object)),
        ],
        id="r",
    )
    body, length = encode_binary_response(response, {"probability", "name"})
    header = orjson.loads(body[:length])
    assert header["id"] == "r"
    assert header["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]}
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert "data" not in header["outputs"][1]
    assert header["outputs"][2]["parameters"] == {"binary_data_size": 11}
    assert body[length:] == np.array([0.25, 0.75], "<f4").tobytes() + bytes_elements(b"a", b"bc")


# -- the one-row short road ------------------------------------------------------------------
def _decoded_in_full(payload: bytes) -> tuple[str, Any]:
    """What the full decoder makes of ``payload``: ("ok", inputs) or ("invalid", message)."""
    from openlearner.predictor import protocol

    with mock.patch.object(protocol, "_single_values", return_value=None):
        try:
            inputs = decode_request(payload).inputs
        except Invalid as exc:
            return "invalid", str(exc)
    return "ok", [(i.name, i.datatype, i.shape, i.data.dtype, i.data.tolist()) for i in inputs]


_PLAIN = st.integers(min_value=0, max_value=100)  # fits every numeric datatype
_SCALARS = st.one_of(
    *[_PLAIN] * 12,
    st.integers(min_value=-300, max_value=300),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what JSON encoders write
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)


@st.composite
def _one_value_inputs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Inputs that mostly take the short road (one datatype, shape [1], one number), sometimes not."""
    datatype = draw(st.sampled_from(["INT64", "INT8", "UINT8", "UINT64", "FP32", "FP16", "BOOL", "BYTES"]))
    inputs = []
    for _ in range(draw(st.integers(1, 4))):
        inputs.append(
            {
                "name": draw(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "i", ""])),
                "datatype": draw(st.sampled_from([datatype] * 20 + ["INT32", "FP64"])),
                "shape": draw(st.sampled_from([[1]] * 20 + [[2], [True], [1.0], []])),
                "data": draw(
                    st.sampled_from([1] * 20 + [0, 2]).flatmap(
                        lambda n: st.lists(_SCALARS, min_size=n, max_size=n)
                    )
                ),
            }
        )
    return inputs


@settings(max_examples=400, deadline=None)
@given(_one_value_inputs())
def test_one_value_inputs_decode_as_the_full_decoder_decodes_them(inputs: list[dict[str, Any]]) -> None:
    payload = orjson.dumps({"inputs": inputs})
    outcome, expected = _decoded_in_full(payload)
    if outcome == "invalid":
        with pytest.raises(Invalid):
            decode_request(payload)
        return
    request = decode_request(payload)
    got = [(i.name, i.datatype, i.shape, i.data.dtype, i.data.tolist()) for i in request.inputs]
    assert got == expected


def test_one_row_of_keys_takes_one_array_and_each_input_its_own_row() -> None:
    request = decode_request(
        body(*(tensor([v], "INT64", name=n) for n, v in [("u", 7), ("a", -3), ("h", 23)]))
    )
    assert [(i.name, i.shape, i.data.tolist()) for i in request.inputs] == [
        ("u", [1], [7]),
        ("a", [1], [-3]),
        ("h", [1], [23]),
    ]
    assert all(i.data.dtype == np.int64 and i.data.shape == (1,) for i in request.inputs)
    request.inputs[0].shape.append(2)  # each input has a shape of its own
    assert request.inputs[1].shape == [1]
    invalid(body(tensor([300], "UINT8", name="u"), tensor([1], "UINT8", name="v")), "out of range")
    invalid(body(tensor([1], "INT64", name="u"), tensor([2], "INT64", name="u")), "appears twice")


@st.composite
def _one_value_binary_requests(draw: st.DrawFn) -> tuple[bytes, int]:
    """Binary-extension requests that mostly take the short road (one datatype, shape [1], one
    value's bytes each), sometimes not: other sizes, data as well, extra parameters, a tail too
    short or too long."""
    datatype = draw(st.sampled_from(["INT64", "INT8", "UINT16", "FP32", "FP64", "BOOL"]))
    itemsize = np.dtype(DATATYPES[datatype]).itemsize
    inputs, tail = [], b""
    for _ in range(draw(st.integers(1, 4))):
        size = draw(st.sampled_from([itemsize] * 12 + [0, itemsize + 1, True, -1]))
        parameters: dict[str, Any] = {"binary_data_size": size}
        if draw(st.integers(0, 15)) == 0:
            parameters["binary_data"] = True
        raw: dict[str, Any] = {
            "name": draw(st.sampled_from(["a", "b", "c", "d", "e", "f", ""])),
            "datatype": draw(st.sampled_from([datatype] * 12 + ["INT32"])),
            "shape": draw(st.sampled_from([[1]] * 12 + [[2], [True]])),
            "parameters": parameters,
        }
        if draw(st.integers(0, 15)) == 0:
            raw["data"] = [1]
        inputs.append(raw)
        tail += draw(st.binary(min_size=itemsize, max_size=itemsize))
    tail += draw(st.sampled_from([b""] * 12 + [b"\x00"]))
    header = orjson.dumps({"inputs": inputs})
    return header + tail, len(header)


@settings(max_examples=400, deadline=None)
@given(_one_value_binary_requests())
def test_one_value_binary_inputs_decode_as_the_full_decoder_decodes_them(request: tuple[bytes, int]) -> None:
    from openlearner.predictor import protocol

    payload, header_length = request
    with mock.patch.object(protocol, "_single_values", return_value=None):
        try:
            expected = decode_request(payload, header_length).inputs
        except Invalid:
            with pytest.raises(Invalid):
                decode_request(payload, header_length)
            return
    got = decode_request(payload, header_length).inputs
    assert [(i.name, i.datatype, i.shape, i.data.dtype) for i in got] == [
        (i.name, i.datatype, i.shape, i.data.dtype) for i in expected
    ]
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine.data, theirs.data)  # NaN where NaN: bits from the wire
