"""The gRPC wire types and codec, checked against the reference client's generated classes.

``tritonclient.grpc.service_pb2`` is protoc's output for Triton's ``grpc_service.proto``,
a superset of OIP v2's ``grpc_predict_v2.proto``: every message here must match it field
for field, and messages built by it must decode here (and ours be read by it).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2

from openlearner.errors import Invalid
from openlearner.predictor.grpc_protocol import (
    METHODS,
    decode_infer_request,
    encode_infer_response,
    message_class,
    usual_inputs,
)
from openlearner.predictor.protocol import MAX_BATCH, InferenceResponse, InferOutput

MESSAGES = [
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelInferRequest",
    "ModelInferResponse",
    "InferParameter",
    "InferTensorContents",
]


def as_proto(message: Any) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    message.DESCRIPTOR.CopyToProto(proto)
    return proto


def assert_same_fields(
    ours: descriptor_pb2.DescriptorProto, reference: descriptor_pb2.DescriptorProto
) -> None:
    def fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[Any, ...]]:
        return {
            f.name: (f.number, f.label, f.type, f.type_name, f.HasField("oneof_index")) for f in message.field
        }

    assert fields(ours) == fields(reference), ours.name
    nested = {n.name: n for n in reference.nested_type}
    assert sorted(nested) == sorted(n.name for n in ours.nested_type)
    for message in ours.nested_type:
        assert message.options.map_entry == nested[message.name].options.map_entry
        assert_same_fields(message, nested[message.name])


@pytest.mark.parametrize("name", MESSAGES)
def test_each_message_matches_the_reference_field_for_field(name: str) -> None:
    assert_same_fields(as_proto(message_class(name)), as_proto(getattr(service_pb2, name)))


def test_the_service_has_the_six_rpcs_of_the_spec() -> None:
    reference = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert set(METHODS) <= set(reference)
    for method in METHODS:
        assert reference[method].input_type.name == f"{method}Request"
        assert reference[method].output_type.name == f"{method}Response"


def test_importing_the_predictor_and_its_rest_adapter_does_not_import_grpc() -> None:
    code = (
        "import sys, openlearner, openlearner.predictor, openlearner.predictor.rest, openlearner.predictor.server;"
        "assert 'grpc' not in sys.modules, 'grpc imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- requests ----------------------------------------------------------------------------------
def decode(reference: Any) -> Any:
    """A request built with the reference classes, decoded by ours from its wire bytes."""
    return decode_infer_request(message_class("ModelInferRequest").FromString(reference.SerializeToString()))


def typed(name: str, datatype: str, shape: list[int], field: str, values: list[Any]) -> Any:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return tensor


TYPED = [
    ("BOOL", "bool_contents", [True, False, True, True], np.bool_),
    ("INT8", "int_contents", [-128, 0, 5, 127], np.int8),
    ("INT16", "int_contents", [-300, 0, 5, 32767], np.int16),
    ("INT32", "int_contents", [-(2**31), 0, 5, 2**31 - 1], np.int32),
    ("INT64", "int64_contents", [-(2**63), 0, 5, 2**63 - 1], np.int64),
    ("UINT8", "uint_contents", [0, 1, 200, 255], np.uint8),
    ("UINT16", "uint_contents", [0, 1, 200, 65535], np.uint16),
    ("UINT32", "uint_contents", [0, 1, 200, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [0, 1, 200, 2**64 - 1], np.uint64),
    ("FP32", "fp32_contents", [0.5, -1.25, float("nan"), 3.0], np.float32),
    ("FP64", "fp64_contents", [0.1, -1e300, float("inf"), 3.0], np.float64),
    ("BYTES", "bytes_contents", [b"a", b"", "é".encode(), b"dd"], np.object_),
]


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), TYPED)
def test_typed_contents_decode_to_the_datatype_s_array(
    datatype: str, field: str, values: list[Any], dtype: Any
) -> None:
    request = decode(service_pb2.ModelInferRequest(inputs=[typed("x", datatype, [2, 2], field, values)]))
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, [2, 2])
    assert tensor.data.dtype == dtype
    assert tensor.data.shape == (2, 2)
    expected = [v.decode() for v in values] if datatype == "BYTES" else values
    np.testing.assert_array_equal(tensor.data.reshape(-1), np.array(expected, dtype=dtype))


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), TYPED)
def test_raw_contents_from_the_reference_client_decode_to_the_same_arrays(
    datatype: str, field: str, values: list[Any], dtype: Any
) -> None:
    data = np.array(values, dtype=dtype).reshape(2, 2)
    infer_input = grpcclient.InferInput("x", [2, 2], datatype)
    infer_input.set_data_from_numpy(data)
    reference = service_pb2.ModelInferRequest(
        inputs=[infer_input._get_tensor()], raw_input_contents=[infer_input._get_content()]
    )
    (tensor,) = decode(reference).inputs
    expected = np.array([v.decode() for v in values], dtype=object) if datatype == "BYTES" else data
    np.testing.assert_array_equal(tensor.data, expected.reshape(2, 2))
    assert tensor.data.dtype == dtype


def test_fp16_travels_raw() -> None:
    data = np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)
    infer_input = grpcclient.InferInput("half", [1, 3], "FP16")
    infer_input.set_data_from_numpy(data)
    reference = service_pb2.ModelInferRequest(
        inputs=[infer_input._get_tensor()], raw_input_contents=[infer_input._get_content()]
    )
    np.testing.assert_array_equal(decode(reference).inputs[0].data, data)
    with pytest.raises(Invalid, match="raw_input_contents"):
        decode(service_pb2.ModelInferRequest(inputs=[typed("half", "FP16", [1], "fp32_contents", [0.5])]))


def test_several_inputs_of_mixed_types_keep_their_order_id_outputs_and_parameters() -> None:
    reference = service_pb2.ModelInferRequest(
        model_name="m",
        id="req-7",
        inputs=[
            typed("user", "BYTES", [3], "bytes_contents", [b"u1", b"u2", b"u3"]),
            typed("age", "INT64", [3], "int64_contents", [30, 41, 52]),
            typed("score", "FP32", [3, 2], "fp32_contents", [1, 2, 3, 4, 5, 6]),
        ],
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="probability")],
    )
    reference.parameters["trace"].bool_param = True
    reference.parameters["priority"].uint64_param = 3
    request = decode(reference)
    assert [i.name for i in request.inputs] == ["user", "age", "score"]
    assert request.inputs[0].data.tolist() == ["u1", "u2", "u3"]
    assert request.inputs[1].data.tolist() == [30, 41, 52]
    assert request.inputs[2].data.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert request.id == "req-7"
    assert request.outputs == ["probability"]
    assert request.parameters == {"trace": True, "priority": 3}


def test_no_id_and_no_outputs_mean_none() -> None:
    request = decode(service_pb2.ModelInferRequest(inputs=[typed("x", "FP32", [1], "fp32_contents", [1.0])]))
    assert request.id is None
    assert request.outputs is None


def raw_request(*tensors: tuple[str, str, list[int], bytes]) -> Any:
    return service_pb2.ModelInferRequest(
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name=n, datatype=d, shape=s)
            for n, d, s, _ in tensors
        ],
        raw_input_contents=[raw for *_, raw in tensors],
    )


BAD = [
    (service_pb2.ModelInferRequest(), "at least one tensor"),
    (
        service_pb2.ModelInferRequest(
            inputs=[
                typed("a", "FP32", [1], "fp32_contents", [1.0]),
                typed("b", "FP32", [1], "fp32_contents", [1]),
            ],
            raw_input_contents=[b"\0\0\0\0"],
        ),
        "raw_input_contents holds 1 tensors for 2 inputs",
    ),
    (
        service_pb2.ModelInferRequest(
            inputs=[typed("a", "FP32", [1], "fp32_contents", [1.0])], raw_input_contents=[b"\0\0\0\0"]
        ),
        "carries contents although",
    ),
    (raw_request(("a", "FP32", [2], b"\0" * 4)), "needs 2 FP32 values (8 bytes) but the raw contents hold 4"),
    (raw_request(("a", "BOOL", [1], b"\x02")), "0 or 1"),
    (raw_request(("a", "BYTES", [1], b"\x05\0\0\0ab")), "claims 5 bytes"),
    (raw_request(("a", "BYTES", [1], b"\x01\0")), "length prefix"),
    (raw_request(("a", "BYTES", [2], b"\x01\0\0\0a")), "needs 2 values but the raw contents hold 1"),
    (raw_request(("a", "BYTES", [1], b"\x01\0\0\0\xff")), "not UTF-8"),
    (raw_request(("", "FP32", [1], b"\0" * 4)), "inputs[0] needs a 'name'"),
    (raw_request(("a", "FP8", [1], b"\0")), "datatype 'FP8' is not one of"),
    (raw_request(("a", "FP32", [-1, 2], b"")), "negative dimension"),
    (raw_request(("a", "FP32", [1] * 40, b"\0" * 4)), "at most 32 dimensions"),
    (raw_request(("a", "FP32", [MAX_BATCH + 1], b"")), f"at most {MAX_BATCH}"),
    (raw_request(("a", "FP32", [1000, 100_000], b"")), "declares over"),
    (raw_request(("a", "FP32", [0, 2**62], b"")), "has a dimension over"),  # the product is 0
    (raw_request(("a", "BYTES", [1, 0, 2**40], b"")), "has a dimension over"),
    (
        raw_request(("a", "FP32", [1], b"\0" * 4), ("a", "FP32", [1], b"\0" * 4)),
        "an input name appears twice",
    ),
    (
        service_pb2.ModelInferRequest(inputs=[typed("a", "INT64", [2], "fp32_contents", [1.0, 2.0])]),
        "belong in contents.int64_contents, not fp32_contents",
    ),
    (
        service_pb2.ModelInferRequest(inputs=[typed("a", "FP32", [3], "fp32_contents", [1.0, 2.0])]),
        "needs 3 values but contents.fp32_contents holds 2",
    ),
    (service_pb2.ModelInferRequest(inputs=[typed("a", "INT8", [1], "int_contents", [128])]), "out of range"),
    (
        service_pb2.ModelInferRequest(inputs=[typed("a", "UINT16", [1], "uint_contents", [70000])]),
        "out of range",
    ),
    (
        service_pb2.ModelInferRequest(inputs=[typed("a", "BYTES", [1], "bytes_contents", [b"\xc3"])]),
        "not UTF-8",
    ),
    (
        service_pb2.ModelInferRequest(
            inputs=[typed("a", "FP32", [1], "fp32_contents", [1.0])],
            outputs=[
                service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="p"),
                service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="p"),
            ],
        ),
        "an output name appears twice",
    ),
]


@pytest.mark.parametrize(("reference", "message"), BAD, ids=[m for _, m in BAD])
def test_a_malformed_request_is_invalid_and_says_why(reference: Any, message: str) -> None:
    with pytest.raises(Invalid, match=None) as caught:
        decode(reference)
    assert message in str(caught.value)


def test_an_undeclared_field_set_alongside_the_right_one_is_refused() -> None:
    tensor = typed("a", "FP32", [1], "fp32_contents", [1.0])
    tensor.contents.int64_contents.append(1)
    with pytest.raises(Invalid, match="not int64_contents"):
        decode(service_pb2.ModelInferRequest(inputs=[tensor]))


# -- responses ---------------------------------------------------------------------------------
def response_with(*outputs: InferOutput) -> InferenceResponse:
    return InferenceResponse(model_name="m", model_version="3", outputs=list(outputs), id="r1")


OUTPUTS = [
    InferOutput("label", "INT64", [3], np.array([0, 1, 1], dtype=np.int64)),
    InferOutput("probability", "FP32", [3], np.array([0.1, 0.9, 0.75], dtype=np.float32)),
    InferOutput("scores", "FP64", [3, 2], np.arange(6, dtype=np.float64).reshape(3, 2)),
    InferOutput("flag", "BOOL", [3], np.array([True, False, True])),
    InferOutput("class", "BYTES", [3], np.array(["cat", "dög", ""], dtype=object)),
]


def read_back(message: Any) -> grpcclient.InferResult:
    """Our response as the reference client reads it."""
    return grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(message.SerializeToString()))


def test_a_raw_response_is_read_by_the_reference_client() -> None:
    result = read_back(encode_infer_response(response_with(*OUTPUTS), raw=True))
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "r1")
    assert [o.name for o in response.outputs] == [o.name for o in OUTPUTS]
    assert [o.datatype for o in response.outputs] == [o.datatype for o in OUTPUTS]
    for output in OUTPUTS:
        got = result.as_numpy(output.name)
        if output.datatype == "BYTES":
            assert [v.decode() for v in got.tolist()] == output.data.tolist()
        else:
            np.testing.assert_array_equal(got, output.data)
            assert got.dtype == output.data.dtype


def test_a_typed_response_fills_each_datatype_s_contents_field() -> None:
    message = service_pb2.ModelInferResponse.FromString(
        encode_infer_response(response_with(*OUTPUTS), raw=False).SerializeToString()
    )
    assert len(message.raw_output_contents) == 0
    got = {o.name: o for o in message.outputs}
    assert list(got["label"].contents.int64_contents) == [0, 1, 1]
    np.testing.assert_allclose(list(got["probability"].contents.fp32_contents), [0.1, 0.9, 0.75], rtol=1e-7)
    assert list(got["scores"].contents.fp64_contents) == [0, 1, 2, 3, 4, 5]
    assert list(got["scores"].shape) == [3, 2]
    assert list(got["flag"].contents.bool_contents) == [True, False, True]
    assert list(got["class"].contents.bytes_contents) == [b"cat", "dög".encode(), b""]


def test_an_fp16_output_makes_the_whole_response_raw() -> None:
    half = InferOutput("half", "FP16", [2], np.array([0.5, 1.5], dtype=np.float16))
    message = encode_infer_response(response_with(OUTPUTS[0], half), raw=False)
    assert len(message.raw_output_contents) == 2
    assert not message.outputs[0].HasField("contents")
    np.testing.assert_array_equal(read_back(message).as_numpy("half"), half.data)
    np.testing.assert_array_equal(read_back(message).as_numpy("label"), OUTPUTS[0].data)


def test_raw_bytes_elements_are_length_prefixed() -> None:
    out = InferOutput("class", "BYTES", [2], np.array(["ab", "c"], dtype=object))
    (raw,) = encode_infer_response(response_with(out), raw=True).raw_output_contents
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


def _one_row(**changes: Any) -> Any:
    """A usual one-row request: three INT64 inputs of shape [1], one value each."""
    message = service_pb2.ModelInferRequest(model_name="m")
    for name, value in (("user_id", 7), ("ad_id", 3), ("hour", 21)):
        tensor = message.inputs.add(name=name, datatype="INT64", shape=[1])
        tensor.contents.int64_contents.append(value)
    for change in changes.values():
        change(message)
    return message


def _decoded_both_ways(message: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    import openlearner.predictor.grpc_protocol as grpc_protocol

    def outcome() -> Any:
        try:
            request = decode_infer_request(message)
        except Invalid as exc:
            return str(exc)
        return [(i.name, i.datatype, i.shape, i.data.dtype, i.data.tolist()) for i in request.inputs], (
            request.id,
            request.outputs,
            request.parameters,
        )

    quick = outcome()
    with monkeypatch.context() as patch:
        patch.setattr(grpc_protocol, "_single_values", lambda message: None)
        full = outcome()
    return quick, full


CHANGES = [
    None,
    lambda m: setattr(m, "id", "r1"),
    lambda m: m.outputs.add(name="probability"),
    lambda m: m.parameters["strict"].CopyFrom(service_pb2.InferParameter(bool_param=True)),
    lambda m: m.inputs[1].contents.int64_contents.append(4),  # two values for shape [1]
    lambda m: m.inputs[1].contents.fp32_contents.append(1.5),  # a stray field
    lambda m: m.inputs[2].ClearField("contents"),
    lambda m: setattr(m.inputs[2], "datatype", "INT32"),
    lambda m: setattr(m.inputs[2], "name", ""),
    lambda m: setattr(m.inputs[2], "name", "user_id"),  # twice
    lambda m: m.inputs[0].shape.append(1),  # [1, 1]
    lambda m: m.raw_input_contents.extend([b"\0" * 8] * 3),
]
"""Changes to :func:`_one_row`'s request; the first two leave it a usual request."""


@pytest.mark.parametrize("change", CHANGES)
def test_a_one_row_request_decodes_quickly_as_it_does_in_full(
    change: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openlearner.predictor.grpc_protocol import _single_values

    message = _one_row(change=change) if change is not None else _one_row()
    quick, full = _decoded_both_ways(message, monkeypatch)
    assert quick == full
    if change is None:
        assert _single_values(message) is not None  # the usual request takes the quick road


@pytest.mark.parametrize("datatype", ["INT32", "UINT32", "UINT64", "FP32", "FP64", "INT8", "BOOL"])
def test_each_datatype_decodes_quickly_as_it_does_in_full(
    datatype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    field = {
        "INT32": "int_contents",
        "INT8": "int_contents",
        "UINT32": "uint_contents",
        "UINT64": "uint64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "BOOL": "bool_contents",
    }[datatype]
    value = {"FP32": 0.1, "FP64": 0.1, "BOOL": True, "UINT64": 2**64 - 1, "INT8": 300}.get(
        datatype, 2**31 - 1
    )
    message = service_pb2.ModelInferRequest(model_name="m")
    for name in ("a", "b"):
        tensor = message.inputs.add(name=name, datatype=datatype, shape=[1])
        getattr(tensor.contents, field).append(value)
    quick, full = _decoded_both_ways(message, monkeypatch)
    assert quick == full


def _the_tensors(inputs: Any) -> list[tuple[str, Any, tuple[int, ...], list[Any]]]:
    return [(name, array.dtype, array.shape, array.tolist()) for name, array in inputs]


@pytest.mark.parametrize(
    "change",
    [
        *CHANGES,
        lambda m: m.inputs[0].parameters["x"].CopyFrom(service_pb2.InferParameter(bool_param=True)),
        lambda m: (setattr(m.inputs[0], "name", "ad_id"), setattr(m.inputs[1], "name", "user_id")),  # order
        lambda m: m.inputs.add(name="extra", datatype="INT64", shape=[1]),
    ],
)
def test_the_usual_request_decodes_as_in_full_and_any_other_is_left_to_the_full_decode(change: Any) -> None:
    message = _one_row(change=change) if change is not None else _one_row()
    usual = usual_inputs(message, ("user_id", "ad_id", "hour"), "INT64", None)
    if change not in CHANGES[:2]:
        assert usual is None
        return
    assert usual is not None
    full = decode_infer_request(message)
    tensors, request_id = usual
    assert request_id == full.id and _the_tensors(tensors.items()) == _the_tensors(
        (i.name, i.data) for i in full.inputs
    )


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "UINT64"])
def test_a_usual_feature_vector_decodes_as_in_full(datatype: str) -> None:
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents"}.get(
        datatype, "uint64_contents"
    )
    message = service_pb2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="input", datatype=datatype, shape=[1, 3])
    getattr(tensor.contents, field).extend(
        [1, 2, 3] if datatype in ("INT32", "UINT64") else [0.1, -2.5, 3e38]
    )
    usual = usual_inputs(message, ("input",), datatype, 3)
    assert usual is not None
    full = decode_infer_request(message)
    assert _the_tensors(usual[0].items()) == _the_tensors((i.name, i.data) for i in full.inputs)
    assert usual_inputs(message, ("input",), datatype, 4) is None  # the model takes four columns
    assert usual_inputs(message, ("input",), "FP16", 3) is None  # no typed field of its own
