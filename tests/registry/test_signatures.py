"""Signatures are read from the exported graph, whatever the model family; explicit ones are checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from openlearner.errors import Invalid
from openlearner.models.base import to_matrix
from openlearner.registry import ModelRegistry, Signature, TensorSpec
from openlearner.registry.signature import converts, graph_signature
from openlearner.storage import LocalArtifactStore, MetadataDB

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class TinyRegressor:
    """``prediction = input · w``: a real (if small) regressor speaking the export protocol."""

    def __init__(self, w: tuple[float, ...] = (0.5, -2.0)) -> None:
        self.w = np.asarray(w, np.float32)
        self.feature_names_ = [f"x{i}" for i in range(len(w))]

    def _onnx_graph(self, sample: Any = None) -> onnx.ModelProto:
        return _model(
            [
                helper.make_node("MatMul", ["input", "w"], ["y2d"]),
                helper.make_node("Reshape", ["y2d", "flat"], ["prediction"]),
            ],
            [helper.make_tensor_value_info("input", F32, ["batch", len(self.w)])],
            [helper.make_tensor_value_info("prediction", F32, ["batch"])],
            [
                helper.make_tensor("w", F32, [len(self.w), 1], self.w.tolist()),
                helper.make_tensor("flat", I64, [1], [-1]),
            ],
        )

    def _onnx_feeds(self, rows: pa.Table) -> dict[str, np.ndarray]:
        return {
            "input": np.column_stack([rows.column(c).to_numpy() for c in self.feature_names_]).astype(
                np.float32
            )
        }

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"prediction": feeds["input"].astype(np.float64) @ self.w.astype(np.float64)}


class TwoInputRanker:
    """A ranker with a dense and a categorical input, like an embedding model: ``label`` + ``probability``."""

    feature_names_: ClassVar[list[str]] = ["x1", "x2", "site"]

    def _onnx_graph(self, sample: Any = None) -> onnx.ModelProto:
        return _model(
            [
                helper.make_node("MatMul", ["dense", "w"], ["d"]),
                helper.make_node("Cast", ["categorical"], ["c"], to=F32),
                helper.make_node("Mul", ["c", "cw"], ["cwc"]),
                helper.make_node("Add", ["d", "cwc"], ["logit"]),
                helper.make_node("Sigmoid", ["logit"], ["p2d"]),
                helper.make_node("Reshape", ["p2d", "flat"], ["probability"]),
                helper.make_node("GreaterOrEqual", ["probability", "half"], ["positive"]),
                helper.make_node("Cast", ["positive"], ["label"], to=I64),
            ],
            [
                helper.make_tensor_value_info("dense", F32, ["batch", 2]),
                helper.make_tensor_value_info("categorical", I64, ["batch", 1]),
            ],
            [
                helper.make_tensor_value_info("label", I64, ["batch"]),
                helper.make_tensor_value_info("probability", F32, ["batch"]),
            ],
            [
                helper.make_tensor("w", F32, [2, 1], [1.0, -1.0]),
                helper.make_tensor("cw", F32, [], [0.25]),
                helper.make_tensor("flat", I64, [1], [-1]),
                helper.make_tensor("half", F32, [], [0.5]),
            ],
        )

    def _onnx_feeds(self, rows: pa.Table) -> dict[str, np.ndarray]:
        dense, _ = to_matrix(rows, ["x1", "x2"])
        return {"dense": dense, "categorical": rows.column("site").to_numpy().astype(np.int64).reshape(-1, 1)}

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logit = feeds["dense"].astype(np.float64) @ np.array([1.0, -1.0]) + 0.25 * feeds["categorical"][:, 0]
        return {"probability": 1 / (1 + np.exp(-logit))}


class TinyTextModel:
    """Scores texts from token ids; its tokenizer is serving metadata (JSON), not part of the graph."""

    feature_names_: ClassVar[list[str]] = ["text"]
    vocab: ClassVar[dict[str, int]] = {"<pad>": 0, "good": 3, "bad": 1, "ok": 2}

    def _serving_metadata(self) -> dict[str, Any]:
        return {"tokenizer": {"vocab": self.vocab, "max_length": 4, "lowercase": True}}

    def _onnx_graph(self, sample: Any = None) -> onnx.ModelProto:
        return _model(
            [
                helper.make_node("Cast", ["tokens"], ["t"], to=F32),
                helper.make_node("ReduceSum", ["t", "axes"], ["s"], keepdims=0),
                helper.make_node("Mul", ["s", "scale"], ["score"]),
                helper.make_node("GreaterOrEqual", ["score", "one"], ["hi"]),
                helper.make_node("Cast", ["hi"], ["label"], to=I64),
            ],
            [helper.make_tensor_value_info("tokens", I64, ["batch", "length"])],
            [
                helper.make_tensor_value_info("label", I64, ["batch"]),
                helper.make_tensor_value_info("score", F32, ["batch"]),
            ],
            [
                helper.make_tensor("axes", I64, [1], [1]),
                helper.make_tensor("scale", F32, [], [0.1]),
                helper.make_tensor("one", F32, [], [1.0]),
            ],
        )

    def _onnx_feeds(self, rows: pa.Table) -> dict[str, np.ndarray]:
        ids = np.zeros((rows.num_rows, 4), np.int64)
        for i, text in enumerate(rows.column("text").to_pylist()):
            for j, word in enumerate(text.lower().split()[:4]):
                ids[i, j] = self.vocab.get(word, 0)
        return {"tokens": ids}

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"score": feeds["tokens"].sum(axis=1) * 0.1}


def _numbers(n: int = 64, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "x0": rng.normal(size=n),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "site": rng.integers(0, 5, n),
        }
    )


@pytest.fixture
def local_registry(tmp_path: Path) -> ModelRegistry:
    db = MetadataDB(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    return ModelRegistry(db, LocalArtifactStore(tmp_path / "artifacts"))


def test_a_regressor_gets_its_prediction_output(local_registry: ModelRegistry) -> None:
    mv = local_registry.register("price", TinyRegressor(), sample=_numbers())
    assert mv.signature.inputs == [TensorSpec("input", "FP32", [-1, 2])]
    assert mv.signature.outputs == [TensorSpec("prediction", "FP32", [-1])]
    assert mv.signature.columns == ["x0", "x1"] and mv.serving_metadata == {}


def test_a_model_with_several_inputs_keeps_their_names_and_types(local_registry: ModelRegistry) -> None:
    mv = local_registry.register("rank", TwoInputRanker(), sample=_numbers())
    assert mv.signature.serving_inputs() == [
        TensorSpec("dense", "FP32", [-1, 2]),
        TensorSpec("categorical", "INT64", [-1, 1]),
    ]
    assert [t.name for t in mv.signature.outputs] == ["label", "probability"]


def test_serving_metadata_is_stored_with_the_version(registry: ModelRegistry) -> None:
    texts = pa.table({"text": ["good good", "bad", "ok good bad", "Good ok"]})
    mv = registry.register("sentiment", TinyTextModel(), sample=texts)
    assert mv.signature.inputs == [TensorSpec("tokens", "INT64", [-1, -1])]
    assert [t.describe() for t in mv.signature.outputs] == ["label INT64 [-1]", "score FP32 [-1]"]
    again = ModelRegistry(registry.db, registry.artifacts).get("sentiment", version=1)
    assert again.serving_metadata == TinyTextModel()._serving_metadata()
    assert "serving_metadata" not in again.signature.to_dict()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [({"fn": print}, "not plain JSON"), ({"x": float("nan")}, "not plain JSON"), (["a"], "not a dict")],
)
def test_serving_metadata_must_be_a_json_object(
    local_registry: ModelRegistry, metadata: Any, message: str
) -> None:
    class Odd(TinyTextModel):
        def _serving_metadata(self) -> Any:
            return metadata

    with pytest.raises(Invalid, match=message):
        local_registry.register("odd", Odd(), sample=pa.table({"text": ["ok"]}))
    assert local_registry.models() == []


def test_an_explicit_signature_is_accepted_when_it_fits_the_graph(local_registry: ModelRegistry) -> None:
    declared = Signature(
        inputs=[TensorSpec("dense", "FP32", [-1, 2]), TensorSpec("categorical", "INT64", [-1, 1])],
        outputs=[TensorSpec("probability", "FP32", [-1])],
        columns=["x1", "x2", "site"],
    )
    mv = local_registry.register("rank", TwoInputRanker(), sample=_numbers(), signature=declared)
    assert mv.signature == declared
    as_dict = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}],
    }
    assert (
        local_registry.register("price", TinyRegressor(), sample=_numbers(), signature=as_dict).version == 1
    )


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 2]}], "outputs": []},
            "does not fit",
        ),
        (
            {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}],
                "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}],
            },
            "does not fit",
        ),
        (
            {"inputs": [], "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]},
            "not declared",
        ),
        (
            {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
            },
            "no output 'probability'",
        ),
        (
            {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}],
                "columns": ["x1", "x0"],
            },
            "not the model's",
        ),
        ({"inputs": "input"}, "not valid"),
        (42, "Signature or a dict"),
    ],
)
def test_an_explicit_signature_that_does_not_fit_is_invalid(
    local_registry: ModelRegistry, signature: Any, message: str
) -> None:
    with pytest.raises(Invalid, match=message):
        local_registry.register("price", TinyRegressor(), sample=_numbers(), signature=signature)
    assert local_registry.models() == []


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (pa.table({"x1": [1.0], "x2": [2.0]}), r"lacks the model's column\(s\) site"),
        (pa.table({"x1": ["a"], "x2": [1.0], "site": [1]}), "x1"),
        (None, "needs sample="),
        (
            pa.table(
                {
                    "x1": pa.array([], pa.float64()),
                    "x2": pa.array([], pa.float64()),
                    "site": pa.array([], pa.int64()),
                }
            ),
            "at least one held-out row",
        ),
    ],
)
def test_a_sample_whose_columns_do_not_match_is_invalid(
    local_registry: ModelRegistry, sample: Any, message: str
) -> None:
    with pytest.raises((Invalid, pa.ArrowInvalid), match=message):
        local_registry.register("rank", TwoInputRanker(), sample=sample)
    assert local_registry.models() == []


def test_graphs_that_cannot_be_described_are_invalid() -> None:
    good = TinyRegressor()._onnx_graph()
    with pytest.raises(Invalid, match="takes 2 input columns but the model names 3"):
        graph_signature(good, ["a", "b", "c"])
    no_shape = TinyRegressor()._onnx_graph()
    no_shape.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(Invalid, match="has no shape"):
        graph_signature(no_shape, ["x0", "x1"])
    sequence = TinyRegressor()._onnx_graph()
    sequence.graph.output[0].CopyFrom(helper.make_tensor_sequence_value_info("prediction", F32, None))
    with pytest.raises(Invalid, match="not a tensor"):
        graph_signature(sequence, ["x0", "x1"])


def test_signature_compatibility() -> None:
    base = graph_signature(TwoInputRanker()._onnx_graph(), ["x1", "x2", "site"])
    assert base.incompatibilities(base) == []
    more_outputs = Signature(base.inputs, [*base.outputs, TensorSpec("score", "FP32", [-1])], base.columns)
    assert more_outputs.incompatibilities(base) == []  # clients of base still find what they read
    regressor = graph_signature(TinyRegressor()._onnx_graph(), ["x0", "x1"])
    problems = " ".join(regressor.incompatibilities(base))
    assert "needs input input FP32 [-1, 2]" in problems and "no longer takes input dense" in problems
    assert "lacks output label" in problems
    reordered = Signature(regressor.inputs, regressor.outputs, ["x1", "x0"])
    assert "columns are x1, x0" in " ".join(reordered.incompatibilities(regressor))


def test_what_a_shadow_needs_is_to_take_the_requests() -> None:
    """A shadow's answers are never returned: outputs and datatypes (converted per value) do not
    matter to it, names, shapes and a raw input's columns do."""
    base = graph_signature(TinyRegressor()._onnx_graph(), ["x0", "x1"])
    wider = Signature([TensorSpec(t.name, "FP64", t.shape) for t in base.inputs], [], base.columns)
    assert wider.mirror_problems(base) == []
    assert "input input FP64 [-1, 2] was input FP32 [-1, 2]" in wider.incompatibilities(base)
    three = Signature(
        [TensorSpec(t.name, t.datatype, [-1, 3]) for t in base.inputs], [], [*base.columns, "x2"]
    )
    assert "input input FP32 [-1, 3] was input FP32 [-1, 2]" in three.mirror_problems(base)
    reordered = Signature(base.inputs, base.outputs, ["x1", "x0"])
    assert "columns are x1, x0" in " ".join(reordered.mirror_problems(base))
    narrow = Signature([TensorSpec(t.name, "INT64", t.shape) for t in base.inputs], [], base.columns)
    assert narrow.mirror_problems(base) == [
        "input input INT64 [-1, 2] was input FP32 [-1, 2], and FP32 values cannot be converted to INT64"
    ]


def test_the_shadow_gate_and_the_predictor_convert_the_same_datatypes() -> None:
    """``converts`` (the promote gate's rule) must agree with ``cast_array`` (what the predictor
    does with a mirrored request) for every pair of datatypes."""
    from openlearner.predictor.protocol import DATATYPES, cast_array

    for source, kind in DATATYPES.items():
        sample = np.array(["a"], dtype=object) if source == "BYTES" else np.zeros(1, dtype=kind)
        for target in DATATYPES:
            try:
                cast_array(sample, target)
                done = True
            except ValueError:
                done = False
            assert converts(source, target) == done, (source, target)
