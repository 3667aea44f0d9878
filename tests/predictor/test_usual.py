"""The usual road answers the usual request exactly as the general road would, and nothing else."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.dataset as pads
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openlearner import Workspace
from openlearner.models.gbdt import GBDTClassifier
from openlearner.predictor import batching, rest
from openlearner.predictor.batching import BatchSettings
from openlearner.predictor.dataplane import DataPlane
from openlearner.predictor.model import LoadedModel
from openlearner.predictor.predictionlog import PredictionLog
from openlearner.predictor.rest import Inference, Reply, _Headers
from openlearner.predictor.usual import UsualRoad
from openlearner.registry.signature import TensorSpec

NEVER_SEEN = 987_654_321
Case = tuple[str, bytes, dict[str, str]]


def ads_usual(served: Any, row: int) -> dict[str, Any]:
    values = served.requests.slice(row, 1).to_pylist()[0]
    names = ["user_id", "ad_id", "hour", "device", "position"]
    return {"inputs": [{"name": n, "shape": [1], "datatype": "INT64", "data": [values[n]]} for n in names]}


def raw_usual(served: Any, row: int) -> dict[str, Any]:
    values = [float(v) for v in served.matrix[row]]
    return {"inputs": [{"name": "input", "shape": [1, len(values)], "datatype": "FP32", "data": values}]}


def binary(payload: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(payload)
    return header + tail, {"inference-header-content-length": str(len(header))}


def as_binary(request: dict[str, Any], dtype: str, **parameters: Any) -> dict[str, Any]:
    """``request`` with its data moved to the binary tail (returned under ``"_tail"``)."""
    out = copy.deepcopy(request)
    tail = b""
    for item in out["inputs"]:
        raw = np.asarray(item.pop("data"), dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        item["parameters"] = {"binary_data_size": len(raw)}
        tail += raw
    if parameters:
        out["parameters"] = parameters
    out["_tail"] = tail
    return out


def variants(served: Any) -> list[Case]:
    """Usual requests, and requests one step away from usual, for both kinds of model."""
    cases: list[Case] = []

    def add(model: str, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()  # (ints past 64 bits)
        cases.append((model, body, headers or {}))

    for row in (0, 1, 7):
        add("ads_ctr", ads_usual(served, row))
        add("raw_ctr", raw_usual(served, row))
    ads, raw = ads_usual(served, 2), raw_usual(served, 2)
    for model, usual in (("ads_ctr", ads), ("raw_ctr", raw)):
        add(model, {**usual, "id": "r-1"})
        add(model, {**usual, "id": 5})
        add(model, {**usual, "outputs": [{"name": "probability"}]})
        add(model, {**usual, "parameters": {}})
        add(model, {**usual, "parameters": {"strict": True}})
        add(model, {**usual, "parameters": {"binary_data_output": True}})
        add(model, {"inputs": usual["inputs"][::-1]})
        add(model, {"inputs": []})
        add(model, {"inputs": usual["inputs"][:1] * 2})
        add(model, [usual])
        add(model, b"not json")
        add(model, b'{"inputs": [')
        first = usual["inputs"][0]
        for change in (
            {"parameters": {}},
            {"datatype": "INT32"},
            {"datatype": "FP64"},
            {"shape": [float(d) for d in first["shape"]]},
            {"shape": [True, *first["shape"][1:]]},
            {"shape": [2, *first["shape"][1:]]},
            {"data": [first["data"][0]] * 2 + first["data"][1:]},
            {"data": [1.5, *first["data"][1:]]},
            {"data": [True, *first["data"][1:]]},
            {"data": ["7", *first["data"][1:]]},
            {"data": [None, *first["data"][1:]]},
            {"data": [2**70, *first["data"][1:]]},
            {"data": [1e300, *first["data"][1:]]},
            {"data": [first["data"]]},
            {"data": first["data"][0]},
            {"name": "nope"},
        ):
            add(model, {"inputs": [{**first, **change}, *usual["inputs"][1:]]})
        add(model, {"inputs": [{k: v for k, v in first.items() if k != "datatype"}, *usual["inputs"][1:]]})
    # The binary tensor extension.
    for model, usual, dtype in (("ads_ctr", ads, "int64"), ("raw_ctr", raw, "float32")):
        for parameters in ({}, {"binary_data_output": True}, {"binary_data_output": False}):
            request = as_binary(usual, dtype, **parameters)
            tail = request.pop("_tail")
            add(model, *binary(request, tail))
            add(model, *binary({**request, "id": "b-1"}, tail))
            add(model, *binary(request, tail[:-1]))
            add(model, *binary(request, tail + b"\0"))
        request = as_binary(usual, dtype)
        tail = request.pop("_tail")
        add(model, *binary({**request, "parameters": {"binary_data_output": 1}}, tail))
        add(model, *binary({**request, "parameters": {"binary_data_output": True, "x": 1}}, tail))
        first = request["inputs"][0]
        for change in (
            {"parameters": {"binary_data_size": first["parameters"]["binary_data_size"] + 1}},
            {"parameters": {"binary_data_size": True}},
            {"parameters": {**first["parameters"], "other": 1}},
            {"parameters": 8},
        ):
            add(model, *binary({"inputs": [{**first, **change}, *request["inputs"][1:]]}, tail))
        body, _ = binary(request, tail)
        add(model, body, {"inference-header-content-length": "x"})
        add(model, body, {"inference-header-content-length": str(len(body) + 1)})
    never = ads_usual(served, 3)
    never["inputs"][0]["data"] = [NEVER_SEEN]
    add("ads_ctr", never)
    add("ads_ctr", {**never, "parameters": {"strict": True}})
    return cases


def answer_all(
    dataplane: DataPlane, cases: list[Case], *, usual: bool, taken: list[bool] | None = None
) -> list[tuple[Any, ...]]:
    """Every case's reply through :meth:`Inference.from_http`, the usual road on or off; in
    ``taken``, whether the usual road took each case."""
    inference = Inference(dataplane, None, 1 << 20)
    replies: list[Reply | None] = [None] * len(cases)
    took: list[bool] = []
    original = Inference._usual

    def usual_road(self: Inference, *args: Any) -> Any:
        queue = original(self, *args) if usual else None
        took.append(queue is not None)
        return queue

    async def run() -> None:
        tasks: set[asyncio.Task[Any]] = set()
        for i, (model, body, headers) in enumerate(cases):
            dataplane.announce()
            raw = [(k.encode(), v.encode()) for k, v in headers.items()]
            path = f"/v2/models/{model}/infer"
            inference.from_http(
                model, None, _Headers(raw), body, path, partial(replies.__setitem__, i), tasks
            )
            await asyncio.sleep(0)  # a gathered batch runs
        while None in replies:
            await asyncio.sleep(0.01)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Inference, "_usual", usual_road)
        patch.setattr(
            batching, "INLINE_BUDGET", 60.0
        )  # a cold first batch must not send the rest to a thread
        asyncio.run(run())
    assert dataplane.arriving() == 0
    if taken is not None:
        taken[:] = took
    return [(r.status, r.content_type, list(r.extra), r.body) for r in replies if r is not None]


@pytest.mark.parametrize("strict", [False, True])
def test_the_usual_road_answers_byte_for_byte_as_the_general_one(served: Any, strict: bool) -> None:
    cases = variants(served)
    dataplane = DataPlane(served.ws.registry, served.ws.features, strict=strict)
    dataplane.preload()
    taken: list[bool] = []
    general = answer_all(dataplane, cases, usual=False)
    usual = answer_all(dataplane, cases, usual=True, taken=taken)
    for case, expected, got in zip(cases, general, usual, strict=True):
        assert got == expected, case
    assert {status for status, *_ in general} == {200, 400}  # both kinds are among the cases
    # The usual ones took the usual road, none of the others: 3 rows of each model, each with
    # an id, binary 3 ways with and without an id (12), an entity the store lacks, and for the
    # one-input FP32 model its input "reversed", 1.5 and 2**70 (numbers an FP32 input takes).
    assert sum(taken) == 6 + 2 + 12 + 1 + 3
    assert all(status == 200 or strict for (status, *_), took in zip(usual, taken, strict=True) if took)
    dataplane.close()


def test_requests_a_canary_or_shadow_may_take_are_routed_by_the_general_road(
    tiny: Workspace, tmp_path: Path
) -> None:
    """The same requests, each with its id (which routes the canary), both roads: the same
    replies, the same counts per version, the same rows in the prediction log."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    table = {f"f{i}": x[:, i] for i in range(3)}
    other = GBDTClassifier(num_trees=4, min_child_samples=5, seed=3).fit(table, (x[:, 1] > 0).astype(int))
    tiny.registry.register("tiny", other, sample=table)
    tiny.registry.set_alias("tiny", "canary", 2)
    tiny.registry.set_alias("tiny", "shadow", 2)
    cases: list[Case] = [
        (
            "tiny",
            orjson.dumps(
                {
                    "id": f"r{row}",
                    "inputs": [
                        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": x[row].tolist()}
                    ],
                }
            ),
            {},
        )
        for row in range(40)
    ]
    seen = []
    for road, folder in ((False, tmp_path / "general"), (True, tmp_path / "usual")):
        dataplane = DataPlane(
            tiny.registry, tiny.features, prediction_log=PredictionLog(folder, sample_rate=1.0)
        )
        dataplane.preload()
        taken: list[bool] = []
        replies = answer_all(dataplane, cases, usual=road, taken=taken)
        assert not any(taken)
        counts = sorted(
            (s.labels["version"], s.value)
            for family in text_string_to_metric_families(dataplane.metrics.render().decode())
            for s in family.samples
            if s.name == "openlearner_predictor_requests_total" and s.labels.get("model") == "tiny"
        )
        dataplane.close()
        rows = pads.dataset(folder, format="parquet").to_table().drop(["logged_at"]).to_pylist()
        seen.append((replies, counts, sorted(rows, key=lambda r: (r["request_id"], r["role"]))))
    assert seen[0] == seen[1]
    versions = {orjson.loads(body)["model_version"] for *_, body in seen[0][0]}
    assert versions == {"1", "2"}  # the canary answered some
    assert {r["role"] for r in seen[0][2]} == {"primary", "canary", "shadow"}


def test_the_usual_request_skips_the_general_decoder_and_the_rest_use_it(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[bytes] = []
    real = rest.decode_request

    def counting(body: bytes, header_length: int | None = None) -> Any:
        decoded.append(body)
        return real(body, header_length)

    monkeypatch.setattr(rest, "decode_request", counting)
    dataplane = DataPlane(served.ws.registry, served.ws.features)
    dataplane.preload()
    ads = ads_usual(served, 0)
    request = as_binary(ads, "int64", binary_data_output=True)
    tail = request.pop("_tail")
    cases: list[Case] = [
        ("ads_ctr", orjson.dumps(ads), {}),
        ("raw_ctr", orjson.dumps({**raw_usual(served, 0), "id": "x"}), {}),
        ("ads_ctr", *binary(request, tail)),
    ]
    replies = answer_all(dataplane, cases, usual=True)
    assert [status for status, *_ in replies] == [200, 200, 200] and decoded == []
    assert replies[2][1] == b"application/octet-stream"
    unusual = ("ads_ctr", orjson.dumps({**ads, "outputs": [{"name": "label"}]}), {})
    assert answer_all(dataplane, [unusual], usual=True)[0][0] == 200 and len(decoded) == 1
    dataplane.close()


def test_usual_requests_are_counted_timed_and_logged(served: Any, tmp_path: Path) -> None:
    dataplane = DataPlane(
        served.ws.registry, served.ws.features, prediction_log=PredictionLog(tmp_path, sample_rate=1.0)
    )
    dataplane.preload()
    cases: list[Case] = [("ads_ctr", orjson.dumps(ads_usual(served, row)), {}) for row in range(5)]
    cases.append(("ads_ctr", orjson.dumps({**ads_usual(served, 5), "id": "mine"}), {}))
    replies = answer_all(dataplane, cases, usual=True)
    ids = [orjson.loads(body)["id"] for *_, body in replies]  # a logged request learns its id
    assert ids[-1] == "mine" and len(set(ids)) == 6
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(dataplane.metrics.render().decode())
        for s in family.samples
        if s.labels.get("model") == "ads_ctr"
    }
    assert samples["openlearner_predictor_requests_total"] == 6
    assert samples["openlearner_predictor_request_seconds_count"] == 6
    dataplane.close()
    logged = pads.dataset(tmp_path, format="parquet").to_table().to_pylist()
    assert sorted(r["request_id"] for r in logged) == sorted(ids)
    assert all(r["role"] == "primary" and r["features"] is not None for r in logged)
    first = next(r for r in logged if r["request_id"] == ids[0])
    assert first["inputs"]["user_id"] == served.requests.column("user_id")[0].as_py()


def test_a_full_queue_refuses_a_usual_request_with_retry_after(served: Any) -> None:
    dataplane = DataPlane(served.ws.registry, served.ws.features, batching=BatchSettings(max_queue=1))
    dataplane.preload()
    model = dataplane.model("ads_ctr")
    assert model.batcher is not None
    elsewhere = asyncio.new_event_loop()
    model.batcher._gathered = {elsewhere: 1}  # one request waits on another loop: the queue is full
    [(status, _, extra, body)] = answer_all(
        dataplane, [("ads_ctr", orjson.dumps(ads_usual(served, 0)), {})], usual=True
    )
    model.batcher._gathered = {}
    elsewhere.close()
    assert status == 503 and (b"retry-after", b"1") in extra and b"requests waiting" in body
    dataplane.close()


def test_which_models_have_a_usual_request(served: Any) -> None:
    dataplane = DataPlane(served.ws.registry, served.ws.features)
    ads, raw = dataplane.model("ads_ctr"), dataplane.model("raw_ctr")
    assert ads.road is not None and raw.road is not None

    def variant(model: LoadedModel, inputs: list[TensorSpec], outputs: list[TensorSpec] | None = None) -> Any:
        changed = copy.copy(model)
        changed.inputs, changed.outputs = inputs, outputs or model.outputs
        return UsualRoad.of(changed)

    int64 = [TensorSpec("a", "INT64", [-1]), TensorSpec("b", "INT64", [-1])]
    assert variant(ads, int64) is not None
    assert variant(ads, [int64[0], TensorSpec("b", "FP32", [-1])]) is None  # two datatypes
    assert variant(ads, [TensorSpec("text", "BYTES", [-1])]) is None
    assert variant(ads, [TensorSpec("x", "FP32", [-1, 4])]) is not None
    assert variant(ads, [TensorSpec("x", "FP32", [-1, -1])]) is None  # columns not fixed
    assert variant(ads, [TensorSpec("x", "FP32", [-1, 4, 4])]) is None
    assert variant(ads, [TensorSpec("x", "FP32", [-1, 4]), TensorSpec("y", "FP32", [-1, 4])]) is None
    assert variant(ads, int64, [TensorSpec("label", "BYTES", [-1])]) is None  # text out: general road
    dataplane.close()


def test_usual_grpc_requests_find_a_canary_or_shadow_promoted_meanwhile(
    tiny: Workspace, tmp_path: Path, grpc_usual_taken: list[bool]
) -> None:
    """A usual gRPC request takes its road only while its model is warm, rollouts known: one
    sent after a canary and a shadow were promoted is routed to them, logged and mirrored."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from openlearner.predictor.grpc import GrpcServer

    taken = grpc_usual_taken
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 3)).astype(np.float32)

    def request(row: int) -> Any:
        message = service_pb2.ModelInferRequest(model_name="tiny", id=f"r{row}")
        tensor = message.inputs.add(name="input", datatype="FP32", shape=[1, 3])
        tensor.contents.fp32_contents.extend(x[row].tolist())
        return message

    log = PredictionLog(tmp_path / "log", sample_rate=1.0)
    dataplane = DataPlane(tiny.registry, tiny.features, alias_refresh=0.05, prediction_log=log)
    with GrpcServer(dataplane, port=0) as server, grpc.insecure_channel(server.address) as channel:
        assert server.wait_ready(60)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = [stub.ModelInfer(request(row)).model_version for row in range(5)]
        assert first == ["1"] * 5 and any(taken)  # no rollout: usual requests take their road
        table = {f"f{i}": x[:, i] for i in range(3)}
        other = GBDTClassifier(num_trees=4, min_child_samples=5, seed=3).fit(table, (x[:, 1] > 0).astype(int))
        tiny.registry.register("tiny", other, sample=table)
        tiny.registry.set_alias("tiny", "canary", 2)
        tiny.registry.set_alias("tiny", "shadow", 2)
        time.sleep(0.2)  # past alias_refresh: what the data plane knows of the aliases is stale
        taken.clear()
        later = {stub.ModelInfer(request(row)).model_version for row in range(5, 60)}
    dataplane.close()
    assert later == {"1", "2"} and not any(taken)  # the canary answered some
    rows = pads.dataset(tmp_path / "log", format="parquet").to_table().to_pylist()
    assert {r["role"] for r in rows if r["request_id"] not in {f"r{i}" for i in range(5)}} == {
        "primary",
        "canary",
        "shadow",
    }
