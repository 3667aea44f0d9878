"""GBDTLogisticRegression: trees as a feature transform, an LR on one-hot leaves, exported as one graph."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from openlearner.errors import Invalid
from openlearner.models import GBDTLogisticRegression
from openlearner.models.metrics import auc
from openlearner.models.onnx import check_parity, to_onnx


@pytest.fixture(scope="module")
def fitted() -> tuple[GBDTLogisticRegression, np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=3000, n_features=6, n_informative=4, random_state=11)
    X = X.astype(np.float32)
    model = GBDTLogisticRegression(num_trees=20, num_leaves=8, lr_C=0.5).fit(X[:2000], y[:2000])
    return model, X, y


def test_leaf_features_are_one_hot_per_tree(
    fitted: tuple[GBDTLogisticRegression, np.ndarray, np.ndarray],
) -> None:
    model, X, _ = fitted
    leaves = model.leaf_features(X[:50])
    assert leaves.shape == (50, int(model.leaves_per_tree_.sum()))
    assert (leaves.sum(axis=1) == 20).all()  # exactly one leaf per tree
    native = model.trees_.booster_.predict(X[:50], pred_leaf=True)
    for t in (0, 7, 19):
        block = leaves[:, model.offsets_[t] : model.offsets_[t] + model.leaves_per_tree_[t]].toarray()
        np.testing.assert_array_equal(block.argmax(axis=1), native[:, t])


def test_the_regression_is_an_ordinary_lr_on_the_leaves(
    fitted: tuple[GBDTLogisticRegression, np.ndarray, np.ndarray],
) -> None:
    model, X, y = fitted
    reference = SkLogisticRegression(C=0.5, max_iter=2000, tol=1e-6).fit(
        model.leaf_features(X[:2000]), y[:2000]
    )
    np.testing.assert_allclose(
        model.predict_proba(X[2000:])[:, 1],
        reference.predict_proba(model.leaf_features(X[2000:]))[:, 1],
        atol=1e-6,
    )
    assert auc(y[2000:], model.predict_proba(X[2000:])[:, 1]) > 0.9


def test_one_graph_reproduces_the_hybrid(
    fitted: tuple[GBDTLogisticRegression, np.ndarray, np.ndarray],
) -> None:
    model, X, _ = fitted
    graph = to_onnx(model)
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["label", "probability"]
    held = X[2000:].copy()
    held[::5, 0] = np.nan
    report = check_parity(model, graph, held)
    assert report.passed and report.max_abs_diff < 1e-5, str(report)
    # The trees themselves are unchanged by the export.
    assert model.trees_.booster_.predict(X[:5]).tolist() == model.trees_.predict_proba(X[:5])[:, 1].tolist()


def test_bad_inputs() -> None:
    X, y = make_classification(n_samples=300, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    with pytest.raises(Invalid, match="lr_C"):
        GBDTLogisticRegression(lr_C=0).fit(X, y)
    with pytest.raises(Invalid, match="binary"):
        GBDTLogisticRegression(num_trees=3).fit(X, np.arange(300) % 3)
