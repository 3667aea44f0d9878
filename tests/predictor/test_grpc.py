"""The OIP v2 gRPC server over the fixture workspace, on a real port, through the reference clients.

``tritonclient.grpc`` sends raw tensors (``raw_input_contents``); typed ``contents`` are
sent with the reference stub generated from Triton's proto (``service_pb2_grpc``).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pyarrow as pa
import pytest
import tritonclient.grpc as grpcclient
from onnx import ModelProto, TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import openlearner
from openlearner import Settings, Workspace
from openlearner.demo import CONTEXT
from openlearner.errors import Invalid, Unavailable
from openlearner.predictor import DataPlane
from openlearner.predictor.batching import BatchSettings, DynamicBatcher
from openlearner.predictor.grpc import GrpcServer
from openlearner.predictor.protocol import InferenceRequest, InferInput

KEYS = ["user_id", "ad_id"]
TOKEN = "grpc-test-token"


@pytest.fixture(scope="module")
def server(served: Any) -> Iterator[GrpcServer]:
    """The gRPC server on a free loopback port, models preloaded."""
    with GrpcServer(DataPlane(served.ws.registry, served.ws.features), port=0) as server:
        assert server.wait_ready(60)
        yield server


@pytest.fixture(scope="module")
def client(server: GrpcServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.address) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: GrpcServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def ads_inputs(rows: pa.Table) -> list[grpcclient.InferInput]:
    inputs = []
    for name in [*KEYS, *CONTEXT]:
        values = np.asarray(rows.column(name).to_pylist(), dtype=np.int64)
        tensor = grpcclient.InferInput(name, [len(values)], "INT64")
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs


def raw_input(matrix: np.ndarray, name: str = "input", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(matrix.shape), datatype)
    tensor.set_data_from_numpy(matrix)
    return tensor


def failure(call: Any, status: str, *fragments: str) -> str:
    """Run ``call``; it must fail with gRPC ``status`` and a message holding ``fragments``."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{status}", caught.value
    message = str(caught.value.message())
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- health and metadata -----------------------------------------------------------------------
def test_health(client: grpcclient.InferenceServerClient, server: GrpcServer) -> None:
    assert server.ready
    assert client.is_server_live()
    assert client.is_server_ready()


@pytest.mark.parametrize(("model", "version"), [("ads_ctr", ""), ("raw_ctr", "1"), ("raw_ctr", "staging")])
def test_model_ready(client: grpcclient.InferenceServerClient, model: str, version: str) -> None:
    assert client.is_model_ready(model, version)


def test_server_metadata(client: grpcclient.InferenceServerClient, served: Any) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "openlearner"
    assert meta.version == openlearner.__version__
    assert list(meta.extensions) == DataPlane(served.ws.registry).server_metadata()["extensions"]


def test_feature_model_metadata_is_the_serving_signature(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("ads_ctr")
    assert (meta.name, list(meta.versions), meta.platform) == ("ads_ctr", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (n, "INT64", [-1]) for n in [*KEYS, *CONTEXT]
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]),
        ("probability", "FP32", [-1]),
    ]


@pytest.mark.parametrize("version", ["", "1", "staging"])
def test_raw_model_metadata_equals_the_data_plane_s(
    client: grpcclient.InferenceServerClient, served: Any, version: str
) -> None:
    meta = client.get_model_metadata("raw_ctr", version, as_json=True)
    expected = DataPlane(served.ws.registry).model_metadata("raw_ctr", version or None)
    assert meta["name"] == expected["name"]
    assert meta["versions"] == expected["versions"] == ["1", "2"]
    for tensor, spec in zip(
        meta["inputs"] + meta["outputs"], expected["inputs"] + expected["outputs"], strict=True
    ):
        assert (tensor["name"], tensor["datatype"]) == (spec["name"], spec["datatype"])
        assert [int(d) for d in tensor["shape"]] == spec["shape"]  # JSON renders int64 as strings
    assert expected["inputs"][0]["shape"] == [-1, len(served.columns)]


# -- inference with raw tensors (tritonclient) --------------------------------------------------
def test_raw_model_infers_a_batch_per_version(client: grpcclient.InferenceServerClient, served: Any) -> None:
    matrix = np.ascontiguousarray(served.matrix[:50])
    answers = {}
    for ref in ["", "1", "production", "2", "staging"]:
        result = client.infer("raw_ctr", [raw_input(matrix)], model_version=ref)
        assert result.get_response().model_version == {"2": "2", "staging": "2"}.get(ref, "1")
        assert len(result.get_response().raw_output_contents) == 2
        answers[ref] = result.as_numpy("probability")
        assert answers[ref].shape == (50,)
        assert answers[ref].dtype == np.float32
        label = result.as_numpy("label")
        assert label.dtype == np.int64
        np.testing.assert_array_equal(label, (answers[ref] > 0.5).astype(np.int64))
    for version, native in enumerate(served.raw_models, start=1):
        np.testing.assert_allclose(answers[str(version)], native.predict_proba(matrix)[:, 1], atol=1e-5)
    np.testing.assert_array_equal(answers[""], answers["1"])
    np.testing.assert_array_equal(answers["staging"], answers["2"])
    assert not np.allclose(answers["1"], answers["2"])


def test_feature_model_joins_features_for_each_row(
    client: grpcclient.InferenceServerClient, served: Any
) -> None:
    rows = served.requests.slice(0, 64)
    result = client.infer("ads_ctr", ads_inputs(rows), request_id="req-9")
    assert result.get_response().id == "req-9"
    probability = result.as_numpy("probability")
    expected = served.model.predict_proba(served.offline_rows(rows).select(served.columns))[:, 1]
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    assert len(set(np.round(probability, 6))) > 5  # rows differ, so the features were really joined


def test_answers_equal_the_data_plane_s_in_process(
    client: grpcclient.InferenceServerClient, served: Any
) -> None:
    rows = served.requests.slice(100, 7)
    plane = DataPlane(served.ws.registry, served.ws.features)
    tensors = [
        InferInput(n, "INT64", [7], np.asarray(rows.column(n).to_pylist(), dtype=np.int64))
        for n in [*KEYS, *CONTEXT]
    ]
    expected = {o.name: o.data for o in plane.infer("ads_ctr", None, InferenceRequest(tensors)).outputs}
    result = client.infer("ads_ctr", ads_inputs(rows))
    assert [o.name for o in result.get_response().outputs] == list(expected)
    for name, data in expected.items():
        np.testing.assert_array_equal(result.as_numpy(name), data)


class Held:
    """Holds each run of ``raw_ctr``'s batches until :meth:`release` (a batch that runs long), and
    records its rows: what a test needs to have calls queue behind a running batch."""

    def __init__(self, plane: DataPlane) -> None:
        batcher = plane.model("raw_ctr").batcher
        assert batcher is not None
        self.sizes: list[int] = []
        self.running, self._released = threading.Event(), threading.Event()
        run = batcher.run

        def held(tensors: Any, rows: int) -> Any:
            self.sizes.append(rows)
            self.running.set()
            self._released.wait(30)
            return run(tensors, rows)

        batcher.run = held

    def release(self) -> None:
        """Let every held run go on, and the runs to come run at once."""
        self._released.set()


def test_concurrent_rpcs_share_one_run_of_the_model(served: Any, grpc_usual_taken: list[bool]) -> None:
    # Each RPC waits on its own thread for its batch. While one batch runs (held here), the
    # seven calls that arrive meanwhile queue, and then share one run, the usual road and the
    # general alike; none waits the second of max_delay for more company (nobody else is on
    # the way).
    plane = DataPlane(
        served.ws.registry, served.ws.features, batching=BatchSettings(max_batch_size=8, max_delay=1.0)
    )
    matrix = served.matrix[:8]
    requests = [
        typed_request(
            "raw_ctr",
            {"input": ("FP32", [1, matrix.shape[1]], "fp32_contents", list(row))},
            **(
                {"outputs": [{"name": "probability"}]} if i % 2 else {}
            ),  # (asking for outputs: the general road)
        )
        for i, row in enumerate(matrix)
    ]
    with GrpcServer(plane, port=0) as server, grpc.insecure_channel(server.address) as channel:
        assert server.wait_ready(60)
        held = Held(plane)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(requests[0])
        assert held.running.wait(30)
        others = [stub.ModelInfer.future(r) for r in requests[1:]]
        wait_queued(plane, 7)
        began = time.monotonic()
        held.release()
        answers = [first.result(30)] + [o.result(30) for o in others]
        assert time.monotonic() - began < 0.9  # the full batch ran at once, not at its deadline
    expected = served.raw_models[0].predict_proba(matrix)[:, 1]
    got = [next(o for o in a.outputs if o.name == "probability").contents.fp32_contents[0] for a in answers]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert held.sizes == [1, 7]
    assert grpc_usual_taken.count(True) == 4  # (the other four asked for outputs: the general road)
    assert plane.arriving() == 0


def test_a_call_that_loads_its_model_is_announced_and_batched_adaptively(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first call to a server that preloaded nothing loads the model on its own thread,
    # and then, like any other call, lets its batch run as soon as nobody else is on the way.
    submitted: list[bool] = []
    submit = DynamicBatcher.submit

    def recording(self: DynamicBatcher, tensors: Any, rows: int, *, adaptive: bool = False) -> Any:
        submitted.append(adaptive)
        return submit(self, tensors, rows, adaptive=adaptive)

    monkeypatch.setattr(DynamicBatcher, "submit", recording)
    plane = DataPlane(served.ws.registry, served.ws.features)
    row = list(served.matrix[0])
    request = typed_request("raw_ctr", {"input": ("FP32", [1, len(row)], "fp32_contents", row)})
    with (
        GrpcServer(plane, port=0, preload=False) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        assert not plane.warm("raw_ctr", None)
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        assert len(infer(request).outputs) == 2  # loads it
        assert len(infer(request).outputs) == 2  # warm: the usual road
        assert plane.arriving() == 0
    assert submitted == [True, True]


def test_a_lone_rpc_runs_at_once_and_every_road_settles_its_arrival(
    served: Any, grpc_usual_taken: list[bool]
) -> None:
    # Batches wait for company only while calls are on their way (decoded, checked): a lone
    # call does not wait max_delay (a second here) for company that never comes. Each call
    # announces itself and settles once, whichever road it takes and however it fails, or
    # every later batch would wait its max_delay for a call that never comes.
    plane = DataPlane(
        served.ws.registry, served.ws.features, batching=BatchSettings(max_batch_size=8, max_delay=1.0)
    )
    row = list(served.matrix[0])
    usual = typed_request("raw_ctr", {"input": ("FP32", [1, len(row)], "fp32_contents", row)})
    general = typed_request(
        "raw_ctr",
        {"input": ("FP32", [1, len(row)], "fp32_contents", row)},
        outputs=[{"name": "probability"}],
    )
    misnamed = typed_request("raw_ctr", {"nope": ("FP32", [1, len(row)], "fp32_contents", row)})
    mistyped = typed_request(
        "raw_ctr",
        {"input": ("INT64", [1, len(row)], "int64_contents", [1] * len(row))},
        outputs=[{"name": "probability"}],
    )
    with GrpcServer(plane, port=0) as server, grpc.insecure_channel(server.address) as channel:
        assert server.wait_ready(60)
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for request in (usual, general, usual, general):
            began = time.monotonic()
            assert len(infer(request).outputs) >= 1
            assert time.monotonic() - began < 0.5
        undecodable = typed_request("raw_ctr", {"input": ("NOPE", [1, len(row)], "fp32_contents", row)})
        for request in (misnamed, mistyped, undecodable):
            with pytest.raises(grpc.RpcError) as caught:
                infer(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            infer(typed_request("no_such_model", {"input": ("FP32", [1, len(row)], "fp32_contents", row)}))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert plane.arriving() == 0
    assert grpc_usual_taken.count(True) == 2


def test_a_usual_request_is_answered_as_the_general_road_answers_it(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, served: Any, grpc_usual_taken: list[bool]
) -> None:
    taken = grpc_usual_taken
    rows = served.requests.slice(30, 4)
    for i in range(4):
        row = rows.slice(i, 1)
        ads = {n: ("INT64", [1], "int64_contents", row.column(n).to_pylist()) for n in [*KEYS, *CONTEXT]}
        raw = {"input": ("FP32", [1, served.matrix.shape[1]], "fp32_contents", list(served.matrix[i]))}
        for model, tensors in (("ads_ctr", ads), ("raw_ctr", raw)):
            usual = stub.ModelInfer(typed_request(model, tensors, id=f"r{i}" if i % 2 else ""))
            general = stub.ModelInfer(  # asking for every output, in order, takes the general road
                typed_request(
                    model,
                    tensors,
                    id=f"r{i}" if i % 2 else "",
                    outputs=[{"name": "label"}, {"name": "probability"}],
                )
            )
            assert [o.name for o in usual.outputs] == ["label", "probability"]
            assert usual.SerializeToString() == general.SerializeToString()
    assert taken.count(True) == 8  # (the general road's requests asked for outputs)


def test_requested_outputs_come_back_in_that_order(
    client: grpcclient.InferenceServerClient, served: Any
) -> None:
    wanted = [grpcclient.InferRequestedOutput("probability"), grpcclient.InferRequestedOutput("label")]
    result = client.infer("ads_ctr", ads_inputs(served.requests.slice(0, 2)), outputs=wanted)
    assert [o.name for o in result.get_response().outputs] == ["probability", "label"]
    only = client.infer("ads_ctr", ads_inputs(served.requests.slice(0, 2)), outputs=wanted[:1])
    assert [o.name for o in only.get_response().outputs] == ["probability"]


# -- inference with typed contents (the reference stub) ----------------------------------------
def typed_request(
    model: str, tensors: dict[str, tuple[str, list[int], str, list[Any]]], **fields: Any
) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    for name, (datatype, shape, field, values) in tensors.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents_are_answered_with_typed_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: grpcclient.InferenceServerClient, served: Any
) -> None:
    matrix = served.matrix[:20]
    request = typed_request(
        "raw_ctr",
        {"input": ("FP32", list(matrix.shape), "fp32_contents", matrix.reshape(-1).tolist())},
        id="t1",
    )
    response = stub.ModelInfer(request)
    assert (response.model_name, response.model_version, response.id) == ("raw_ctr", "1", "t1")
    assert len(response.raw_output_contents) == 0
    outputs = {o.name: o for o in response.outputs}
    assert list(outputs["probability"].shape) == [20]
    probability = np.array(outputs["probability"].contents.fp32_contents, dtype=np.float32)
    np.testing.assert_allclose(probability, served.raw_models[0].predict_proba(matrix)[:, 1], atol=1e-5)
    assert list(outputs["label"].contents.int64_contents) == (probability > 0.5).astype(int).tolist()
    raw = client.infer("raw_ctr", [raw_input(np.ascontiguousarray(matrix))]).as_numpy("probability")
    np.testing.assert_array_equal(probability, raw)  # one answer whichever encoding carried it


def test_typed_int64_keys_for_the_feature_model(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: grpcclient.InferenceServerClient, served: Any
) -> None:
    rows = served.requests.slice(20, 5)
    tensors = {n: ("INT64", [5, 1], "int64_contents", rows.column(n).to_pylist()) for n in [*KEYS, *CONTEXT]}
    response = stub.ModelInfer(typed_request("ads_ctr", tensors, model_version="production"))
    probability = next(o for o in response.outputs if o.name == "probability").contents.fp32_contents
    expected = client.infer("ads_ctr", ads_inputs(rows)).as_numpy("probability")
    np.testing.assert_array_equal(np.array(probability, dtype=np.float32), expected)


# -- errors ------------------------------------------------------------------------------------
def test_unknown_model_version_and_alias_are_not_found(
    client: grpcclient.InferenceServerClient, served: Any
) -> None:
    failure(lambda: client.get_model_metadata("nope"), "NOT_FOUND", "nope", "ads_ctr")
    failure(lambda: client.is_model_ready("nope"), "NOT_FOUND", "nope")
    failure(lambda: client.get_model_metadata("raw_ctr", "7"), "NOT_FOUND", "no version", "1, 2")
    failure(lambda: client.get_model_metadata("raw_ctr", "canary"), "NOT_FOUND", "no alias")
    matrix = np.ascontiguousarray(served.matrix[:1])
    failure(lambda: client.infer("nope", [raw_input(matrix)]), "NOT_FOUND", "nope")
    failure(
        lambda: client.infer("raw_ctr", [raw_input(matrix)], model_version="9"), "NOT_FOUND", "no version"
    )


def test_an_unknown_model_is_not_found_whatever_the_tensors(client: grpcclient.InferenceServerClient) -> None:
    failure(lambda: client.infer("nope", [raw_input(np.zeros((1, 1), np.float32), "wrong")]), "NOT_FOUND")


def test_a_wrong_tensor_name_is_invalid_and_names_the_signature(
    client: grpcclient.InferenceServerClient, served: Any
) -> None:
    rows = served.requests.slice(0, 1)
    inputs = ads_inputs(rows)
    renamed = raw_input(np.asarray(rows.column("hour").to_pylist(), np.int64), "hour_of_day", "INT64")
    failure(
        lambda: client.infer("ads_ctr", [*inputs[:2], renamed, *inputs[3:]]),
        "INVALID_ARGUMENT",
        "missing input(s) hour",
        "unknown input(s) hour_of_day",
        "user_id INT64 [-1]",
    )
    failure(
        lambda: client.infer("raw_ctr", inputs), "INVALID_ARGUMENT", "missing input(s) input", "input FP32"
    )


def test_a_wrong_datatype_is_invalid(client: grpcclient.InferenceServerClient, served: Any) -> None:
    as_fp64 = raw_input(served.matrix[:2].astype(np.float64), datatype="FP64")
    failure(lambda: client.infer("raw_ctr", [as_fp64]), "INVALID_ARGUMENT", "'input' is FP64", "FP32")
    inputs = ads_inputs(served.requests.slice(0, 1))
    inputs[0] = raw_input(np.array([1], dtype=np.int32), "user_id", "INT32")
    failure(lambda: client.infer("ads_ctr", inputs), "INVALID_ARGUMENT", "'user_id' is INT32", "INT64")


def test_a_wrong_shape_is_invalid(client: grpcclient.InferenceServerClient, served: Any) -> None:
    columns = len(served.columns)
    narrow = np.zeros((2, columns - 1), np.float32)
    failure(
        lambda: client.infer("raw_ctr", [raw_input(narrow)]), "INVALID_ARGUMENT", "shape [2, 7]", "[-1, 8]"
    )
    inputs = ads_inputs(served.requests.slice(0, 2))
    inputs[0] = raw_input(np.array([[1, 2], [3, 4]], dtype=np.int64), "user_id", "INT64")
    failure(lambda: client.infer("ads_ctr", inputs), "INVALID_ARGUMENT", "'user_id' has shape [2, 2]")


def test_raw_contents_that_disagree_with_the_shape_are_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, served: Any
) -> None:
    request = service_pb2.ModelInferRequest(model_name="raw_ctr")
    request.inputs.add(name="input", datatype="FP32", shape=[2, len(served.columns)])
    request.raw_input_contents.append(served.matrix[:1].tobytes())
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 16 FP32 values (64 bytes) but the raw contents hold 32 bytes" in caught.value.details()


def test_a_request_without_a_model_name_is_invalid(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(typed_request("", {"input": ("FP32", [1], "fp32_contents", [1.0])}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_name" in caught.value.details()


def test_rpcs_outside_the_six_are_unimplemented(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the server itself -------------------------------------------------------------------------
def test_a_bearer_token_is_required_on_all_but_health(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    with (
        GrpcServer(plane, port=0, token=TOKEN) as server,
        grpcclient.InferenceServerClient(server.address) as client,
    ):
        assert server.wait_ready(60)
        assert client.is_server_live()
        assert client.is_server_ready()
        for headers in [None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}]:
            failure(
                lambda h=headers: client.get_server_metadata(headers=h), "UNAUTHENTICATED", "bearer token"
            )
            failure(lambda h=headers: client.is_model_ready("raw_ctr", headers=h), "UNAUTHENTICATED")
            failure(
                lambda h=headers: client.infer("raw_ctr", [raw_input(served.matrix[:1])], headers=h),
                "UNAUTHENTICATED",
            )
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert client.get_server_metadata(headers=auth).name == "openlearner"
        # The scheme's name matches in any case (RFC 7235), as over REST.
        assert client.get_server_metadata(headers={"authorization": f"bearer {TOKEN}"}).name == "openlearner"
        assert client.infer("raw_ctr", [raw_input(served.matrix[:1])], headers=auth).as_numpy(
            "label"
        ).shape == (1,)


def test_a_port_in_use_is_unavailable(server: GrpcServer, served: Any) -> None:
    plane = DataPlane(served.ws.registry)
    with pytest.raises(Unavailable, match="choose another --grpc-port"):
        GrpcServer(plane, port=server.port, preload=False).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(Unavailable, match="cannot listen"):
            GrpcServer(plane, port=taken.getsockname()[1], preload=False).start()


def test_an_oversized_message_is_refused(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    big = np.zeros((64, len(served.columns)), np.float32)  # 2 KiB of tensor
    with (
        GrpcServer(plane, port=0, preload=False, max_message_bytes=1024) as server,
        grpcclient.InferenceServerClient(server.address) as client,
    ):
        failure(lambda: client.infer("raw_ctr", [raw_input(big)]), "RESOURCE_EXHAUSTED")
        assert client.infer("raw_ctr", [raw_input(big[:2])]).as_numpy("probability").shape == (2,)


def test_a_token_grpc_metadata_cannot_carry_is_refused_up_front(served: Any) -> None:
    with pytest.raises(Invalid, match="non-ASCII"):
        GrpcServer(DataPlane(served.ws.registry), port=0, token="tökén")


def test_binding_beyond_loopback_needs_a_token(served: Any) -> None:
    plane = DataPlane(served.ws.registry)
    with pytest.raises(Invalid, match="without a token"):
        GrpcServer(plane, host="0.0.0.0", port=0)
    with pytest.raises(Invalid, match="out of range"):
        GrpcServer(plane, port=70000)
    GrpcServer(plane, host="0.0.0.0", port=0, token=TOKEN)  # allowed; not started


def test_without_preload_the_server_is_ready_at_once_and_loads_on_first_use(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    with (
        GrpcServer(plane, port=0, preload=False) as server,
        grpcclient.InferenceServerClient(server.address) as client,
    ):
        assert client.is_server_ready()
        assert not plane.warm("raw_ctr")
        assert client.infer("raw_ctr", [raw_input(served.matrix[:3])]).as_numpy("probability").shape == (3,)
        assert plane.warm("raw_ctr")


# -- any inputs and outputs: a model of three typed tensors ------------------------------------
class MultiTensorModel:
    """A model over FP32 ``x`` [batch, 2], INT64 ``n`` and BYTES ``tag``, registered through the
    export protocol: ``prediction`` = sum of x + n (FP32), ``doubled`` = 2n (INT64), ``tag_echo`` = tag."""

    feature_names_: ClassVar[list[str]] = ["x0", "x1", "n", "tag"]

    def _onnx_graph(self, sample: Any) -> ModelProto:
        nodes = [
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
            helper.make_node("Cast", ["n"], ["n_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["total", "n_float"], ["prediction"]),
            helper.make_node("Mul", ["n", "two"], ["doubled"]),
            helper.make_node("Identity", ["tag"], ["tag_echo"]),
        ]
        tensor = helper.make_tensor_value_info
        graph = helper.make_graph(
            nodes,
            "multi",
            [
                tensor("x", TensorProto.FLOAT, [None, 2]),
                tensor("n", TensorProto.INT64, [None]),
                tensor("tag", TensorProto.STRING, [None]),
            ],
            [
                tensor("prediction", TensorProto.FLOAT, [None]),
                tensor("doubled", TensorProto.INT64, [None]),
                tensor("tag_echo", TensorProto.STRING, [None]),
            ],
            [
                helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                helper.make_tensor("two", TensorProto.INT64, [], [2]),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        model.ir_version = 8
        return model

    def _onnx_feeds(self, rows: pa.Table) -> dict[str, np.ndarray]:
        columns = rows.to_pydict()
        return {
            "x": np.column_stack([columns["x0"], columns["x1"]]).astype(np.float32),
            "n": np.asarray(columns["n"], np.int64),
            "tag": np.asarray(columns["tag"], dtype=object),
        }

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"prediction": feeds["x"].astype(np.float64).sum(axis=1) + feeds["n"]}


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    """A server over a workspace holding ``multi`` (version 1, production)."""
    ws = Workspace.init(
        settings=Settings(home=Path(tmp_path_factory.mktemp("grpc-multi")) / "ws", auth_token=None)
    )
    sample = {"x0": [0.5, 1.0], "x1": [2.0, -1.0], "n": [1, 2], "tag": ["a", "b"]}
    ws.registry.register("multi", MultiTensorModel(), sample=sample, alias="production")
    with GrpcServer(DataPlane(ws.registry, ws.features), port=0) as server:
        assert server.wait_ready(60)
        yield server
    ws.close()


X = np.array([[1.0, 2.0], [3.0, 4.0], [-0.5, 0.25]], dtype=np.float32)
N = np.array([5, -6, 7], dtype=np.int64)
TAGS = ["hé", "", "z" * 300]


def test_a_model_of_any_tensors_has_its_own_metadata(multi: GrpcServer) -> None:
    with grpcclient.InferenceServerClient(multi.address) as client:
        meta = client.get_model_metadata("multi")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("x", "FP32", [-1, 2]),
        ("n", "INT64", [-1]),
        ("tag", "BYTES", [-1]),
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [
        ("prediction", "FP32"),
        ("doubled", "INT64"),
        ("tag_echo", "BYTES"),
    ]


def test_a_model_of_any_tensors_infers_from_raw_tensors(multi: GrpcServer) -> None:
    tags = np.array([t.encode() for t in TAGS], dtype=np.object_)
    with grpcclient.InferenceServerClient(multi.address) as client:
        result = client.infer(
            "multi", [raw_input(X, "x"), raw_input(N, "n", "INT64"), raw_input(tags, "tag", "BYTES")]
        )
    np.testing.assert_allclose(result.as_numpy("prediction"), X.sum(axis=1) + N)
    np.testing.assert_array_equal(result.as_numpy("doubled"), 2 * N)
    assert [v.decode() for v in result.as_numpy("tag_echo").tolist()] == TAGS


def test_a_model_of_any_tensors_infers_from_typed_contents(multi: GrpcServer) -> None:
    request = typed_request(
        "multi",
        {
            "x": ("FP32", [3, 2], "fp32_contents", X.reshape(-1).tolist()),
            "n": ("INT64", [3], "int64_contents", N.tolist()),
            "tag": ("BYTES", [3], "bytes_contents", [t.encode() for t in TAGS]),
        },
    )
    with grpc.insecure_channel(multi.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    outputs = {o.name: o for o in response.outputs}
    np.testing.assert_allclose(list(outputs["prediction"].contents.fp32_contents), X.sum(axis=1) + N)
    assert list(outputs["doubled"].contents.int64_contents) == (2 * N).tolist()
    assert [v.decode() for v in outputs["tag_echo"].contents.bytes_contents] == TAGS


# -- batching ----------------------------------------------------------------------------------
def test_concurrent_requests_each_get_their_own_rows(
    client: grpcclient.InferenceServerClient, served: Any
) -> None:
    matrix = np.ascontiguousarray(served.matrix[:48])
    expected = served.raw_models[0].predict_proba(matrix)[:, 1]

    def one(start: int) -> np.ndarray:
        rows = matrix[start : start + 3]
        return client.infer("raw_ctr", [raw_input(np.ascontiguousarray(rows))]).as_numpy("probability")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(0, 48, 3)))
    np.testing.assert_allclose(np.concatenate(answers), expected, atol=1e-5)


def queued(plane: DataPlane) -> float:
    found = re.search(
        r'openlearner_predictor_queue_depth\{model="raw_ctr",version="1"\} (\S+)',
        plane.metrics.render().decode(),
    )
    return float(found.group(1)) if found else 0.0


def wait_queued(plane: DataPlane, depth: int) -> None:
    """Wait until ``depth`` requests to ``raw_ctr`` are queued (at most 30 s)."""
    deadline = time.monotonic() + 30
    while queued(plane) < depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queued(plane) == depth


def test_a_full_queue_is_unavailable_at_once_with_retry_after(served: Any) -> None:
    # One request may wait: while a batch runs (held) and one request waits behind it, one
    # more is refused by the queue (the server itself takes three calls at once).
    plane = DataPlane(served.ws.registry, served.ws.features, batching=BatchSettings(max_queue=1))
    matrix = np.ascontiguousarray(served.matrix[:1])
    with GrpcServer(plane, port=0, max_calls=3) as server, grpc.insecure_channel(server.address) as channel:
        assert server.wait_ready(60)
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        request = typed_request(
            "raw_ctr", {"input": ("FP32", list(matrix.shape), "fp32_contents", matrix.reshape(-1).tolist())}
        )
        held = Held(plane)
        running = infer.future(request)
        assert held.running.wait(30)
        waiting = infer.future(request)
        wait_queued(plane, 1)
        with pytest.raises(grpc.RpcError) as caught:
            infer(request)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry" in caught.value.details()
        assert ("retry-after", "1") in tuple(caught.value.trailing_metadata())
        held.release()
        assert len(running.result(timeout=10).outputs) == 2
        assert len(waiting.result(timeout=10).outputs) == 2  # the queued request is still answered
        assert plane.arriving() == 0  # (the refused call settled its arrival too)
        assert (
            'openlearner_predictor_errors_total{model="raw_ctr",status="503",version="1"} 1.0'
            in plane.metrics.render().decode()
        )


def test_inference_calls_beyond_the_limit_are_unavailable_at_once_and_health_still_answers(
    served: Any,
) -> None:
    # One inference call at once: while the one taken runs (held), one more is refused at
    # once, as a full queue refuses it; health and metadata still answer.
    plane = DataPlane(served.ws.registry, served.ws.features)
    matrix = np.ascontiguousarray(served.matrix[:1])
    request = typed_request(
        "raw_ctr", {"input": ("FP32", list(matrix.shape), "fp32_contents", matrix.reshape(-1).tolist())}
    )
    with GrpcServer(plane, port=0, max_calls=1) as server, grpc.insecure_channel(server.address) as channel:
        assert server.wait_ready(60)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        held = Held(plane)
        first = stub.ModelInfer.future(request)
        assert held.running.wait(30)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert time.monotonic() - began < 0.5
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "limit of 1 inference calls" in (caught.value.details() or "")
        assert ("retry-after", "1") in tuple(caught.value.trailing_metadata())
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="raw_ctr")).name == "raw_ctr"
        held.release()
        assert len(first.result(timeout=10).outputs) == 2  # the call taken is answered
        assert len(stub.ModelInfer(request).outputs) == 2  # and its place is free again
    assert (
        'openlearner_predictor_errors_total{model="raw_ctr",status="503",version="1"} 1.0'
        in plane.metrics.render().decode()
    )


@pytest.mark.parametrize("road", ["usual", "general"])
def test_a_call_that_ends_while_queued_is_left_out_of_its_batch_and_frees_its_place(
    served: Any, road: str
) -> None:
    # Two calls at once, one request may wait. The first call's batch is held running; a
    # second call, queued behind it, passes its deadline. A third call must then be taken
    # at once (not refused as beyond the calls' limit, nor by a queue full of the ended
    # request), and no batch may run the second call's row.
    plane = DataPlane(served.ws.registry, served.ws.features, batching=BatchSettings(max_queue=1))
    matrix = np.ascontiguousarray(served.matrix[:1])
    fields: dict[str, Any] = {}
    if road == "general":  # (the usual road takes no request that names its outputs)
        fields["outputs"] = [service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="probability")]
    request = typed_request(
        "raw_ctr",
        {"input": ("FP32", list(matrix.shape), "fp32_contents", matrix.reshape(-1).tolist())},
        **fields,
    )
    with GrpcServer(plane, port=0, max_calls=2) as server, grpc.insecure_channel(server.address) as channel:
        assert server.wait_ready(60)
        held = Held(plane)
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        first = infer.future(request, timeout=60)
        assert held.running.wait(30)
        second = infer.future(request, timeout=2)
        wait_queued(plane, 1)
        assert second.exception(30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        ended = time.monotonic()
        while True:  # (the server learns of the deadline a moment after the client)
            third = infer.future(request, timeout=60)
            try:
                third.result(timeout=2)
            except grpc.FutureTimeoutError:
                break  # taken, and waiting behind the held batch
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
                assert time.monotonic() - ended < 10, f"the call that ended still holds its place: {refused}"
                time.sleep(0.02)
        held.release()
        expected = served.raw_models[0].predict_proba(matrix)[:, 1]
        for answer in (first.result(30), third.result(30)):
            np.testing.assert_allclose(answer.outputs[-1].contents.fp32_contents, expected, atol=1e-5)
        assert plane.arriving() == 0
    assert held.sizes == [1, 1]  # the first call's run, then the third's without the second's row


def test_a_server_taking_no_inference_call_is_refused(served: Any) -> None:
    with pytest.raises(Invalid, match="at least one inference call"):
        GrpcServer(DataPlane(served.ws.registry, served.ws.features), port=0, max_calls=0)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
@pytest.mark.parametrize("batch_policy", [True, False])
def test_the_server_s_threads_take_the_batch_policy_unless_told_not_to(
    served: Any, batch_policy: bool
) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    before = set(threading.enumerate())  # (other tests' servers may still have threads; ids are reused)
    with (
        GrpcServer(plane, port=0, preload=False, batch_policy=batch_policy) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        matrix = served.matrix[:1]
        request = typed_request(
            "raw_ctr", {"input": ("FP32", list(matrix.shape), "fp32_contents", list(matrix[0]))}
        )
        assert len(stub.ModelInfer(request).outputs) == 2  # loads the model, from a gRPC thread
        policies = {
            os.sched_getscheduler(t.native_id)
            for t in threading.enumerate()
            if t.name.startswith("openlearner-grpc_") and t.native_id is not None and t not in before
        }
        model = plane.model("raw_ctr")
        assert model.batcher is not None and model.batcher._worker.native_id is not None
        worker = os.sched_getscheduler(model.batcher._worker.native_id)
    assert policies == {os.SCHED_BATCH if batch_policy else os.SCHED_OTHER}
    assert worker == os.SCHED_OTHER  # the batch worker a gRPC thread started does not inherit it
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # (the test's own thread is left alone)


# -- hostile messages --------------------------------------------------------------------------
def test_bytes_that_are_no_request_message_are_invalid_argument(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff\xff\xff garbage")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in (caught.value.details() or "")


@pytest.mark.parametrize("letter", ["x", "%", "é", "語"])
def test_an_error_echoing_a_huge_name_keeps_its_status(
    client: grpcclient.InferenceServerClient, letter: str
) -> None:
    # The status travels percent-encoded in trailing metadata, which clients may refuse past
    # 8 KiB: cut by its bytes, it stays INVALID_ARGUMENT instead of RESOURCE_EXHAUSTED.
    message = failure(
        lambda: client.infer("raw_ctr", [raw_input(np.zeros((1, 8), np.float32), name=letter * 20_000)]),
        "INVALID_ARGUMENT",
        "unknown input",
    )
    assert message.endswith("(cut)") and len(message.encode()) <= 2000


def test_thousands_of_huge_dimensions_are_refused_at_once(stub: Any) -> None:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[2**62] * 40_000
    )
    request = service_pb2.ModelInferRequest(model_name="raw_ctr", inputs=[tensor])
    began = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 32 dimensions" in (caught.value.details() or "")
    assert time.perf_counter() - began < 2  # was seconds of multiplying, on the server's event loop
