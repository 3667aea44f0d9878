"""IsolationForest: scores, the normal-only use, and the directly built graph at split boundaries."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.ensemble import IsolationForest as SkIsolationForest

from openlearner.errors import Invalid
from openlearner.models import IsolationForest, wrap
from openlearner.models.anomaly import _float32_at_or_below
from openlearner.models.onnx import check_parity, to_onnx


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    rng = np.random.default_rng(8)
    X = rng.normal(size=(3000, 4)).astype(np.float32)
    X[:, 0] = np.round(X[:, 0] * 2)  # a coarse column: many rows sit exactly on split values
    return X


def test_score_is_the_negated_sklearn_decision_function(normal: np.ndarray) -> None:
    model = IsolationForest(num_trees=30, seed=1).fit(normal)
    reference = SkIsolationForest(n_estimators=30, random_state=1).fit(normal)
    np.testing.assert_allclose(model.score_samples(normal[:100]), -reference.decision_function(normal[:100]))
    np.testing.assert_array_equal(
        model.predict(normal[:100]), (reference.predict(normal[:100]) == -1).astype(int)
    )


def test_graph_matches_at_and_around_every_split_threshold(normal: np.ndarray) -> None:
    model = IsolationForest(num_trees=40, seed=2).fit(normal)
    rows = []
    for tree in model.estimator_.estimators_[:10]:
        nodes = tree.tree_
        for node in np.flatnonzero(nodes.children_left != -1):
            t32 = np.float32(nodes.threshold[node])
            for value in (t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))):
                row = normal[node % len(normal)].copy()
                row[nodes.feature[node]] = value
                rows.append(row)
    boundary = np.array(rows, np.float32)
    report = check_parity(model, to_onnx(model), boundary)
    assert report.max_abs_diff < 1e-5 and report.class_agreement == 1.0, str(report)
    session = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    label, score = session.run(["label", "score"], {"input": boundary})
    np.testing.assert_array_equal(label, (score > 0).astype(np.int64))


def test_threshold_rounding_keeps_the_comparison() -> None:
    for threshold in (0.1, -0.1, 1 / 3, 2.5, 1e-8):
        below = _float32_at_or_below(threshold)
        assert below <= threshold and np.float32(below) == below
        above = float(np.nextafter(np.float32(below), np.float32(np.inf)))
        assert above > threshold  # no float32 lies between the two


def test_wrapped_sklearn_forest_uses_the_same_graph(normal: np.ndarray) -> None:
    wrapped = wrap(SkIsolationForest(n_estimators=20, random_state=0).fit(normal))
    graph = to_onnx(wrapped)
    assert graph.graph.name == "isolation_forest"
    assert check_parity(wrapped, graph, normal * 2).passed


def test_bad_inputs(normal: np.ndarray) -> None:
    with pytest.raises(Invalid, match="at least two rows"):
        IsolationForest().fit(normal[:1])
    with pytest.raises(Invalid, match="contamination"):
        IsolationForest(contamination=0.9).fit(normal)
    with pytest.raises(Invalid, match="num_trees"):
        IsolationForest(num_trees=0).fit(normal)
