"""ONNX export and the parity gate."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
from sklearn.datasets import make_classification

from openlearner.errors import Invalid, ParityError
from openlearner.models import GBDTClassifier
from openlearner.models.onnx import LABEL, PROBABILITY, check_parity, export, to_onnx


@pytest.fixture(scope="module")
def fitted() -> tuple[GBDTClassifier, np.ndarray]:
    X, y = make_classification(n_samples=4000, n_features=6, random_state=1)
    X[::7, 2] = np.nan  # missing values must be routed the same way by both
    model = GBDTClassifier(num_trees=60, num_leaves=15).fit(X[:3000], y[:3000])
    return model, X[3000:]


def test_export_has_canonical_outputs_and_a_dynamic_batch(fitted: tuple[GBDTClassifier, np.ndarray]) -> None:
    model, _ = fitted
    graph = to_onnx(model)
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == [LABEL, PROBABILITY]
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert not batch.HasField("dim_value")  # dynamic, not fixed to the sample's size
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 17):
        label, probability = session.run(None, {"input": np.zeros((n, 6), np.float32)})
        assert label.shape == (n,) and probability.shape == (n,)


def test_parity_with_native_model_on_held_out_rows(fitted: tuple[GBDTClassifier, np.ndarray]) -> None:
    model, held_out = fitted
    report = check_parity(model, to_onnx(model), held_out)
    assert report.passed
    assert report.rows == len(held_out)
    assert report.max_abs_diff < 1e-5
    assert report.class_agreement == 1.0
    payload, again = export(model, held_out)
    assert isinstance(payload, bytes) and again.passed


def test_parity_on_named_columns(fitted: tuple[GBDTClassifier, np.ndarray]) -> None:
    model, held_out = fitted
    table = pa.table({name: held_out[:, i] for i, name in enumerate(model.feature_names_)})
    assert check_parity(model, to_onnx(model), table).passed


def test_the_gate_refuses_a_graph_that_disagrees(fitted: tuple[GBDTClassifier, np.ndarray]) -> None:
    model, held_out = fitted
    other = GBDTClassifier(num_trees=5, seed=9).fit(held_out, (held_out[:, 0] > 0).astype(int))
    report = check_parity(model, to_onnx(other), held_out)
    assert not report.passed and report.max_abs_diff > 1e-4
    assert "FAILED" in str(report)

    class Drifting(GBDTClassifier):
        def predict_proba(self, X: object) -> np.ndarray:
            p = super().predict_proba(X)
            return np.column_stack([p[:, 0] - 1e-3, p[:, 1] + 1e-3])

    drifting = Drifting(num_trees=10).fit(held_out, (held_out[:, 1] > 0).astype(int))
    with pytest.raises(ParityError, match="refused") as caught:
        export(drifting, held_out)
    assert caught.value.report is not None


def test_bad_inputs(fitted: tuple[GBDTClassifier, np.ndarray]) -> None:
    model, held_out = fitted
    with pytest.raises(Invalid, match="fit"):
        to_onnx(GBDTClassifier())
    with pytest.raises(Invalid, match="cannot export"):
        to_onnx(object())
    with pytest.raises(Invalid, match="at least one"):
        check_parity(model, to_onnx(model), held_out[:0])
