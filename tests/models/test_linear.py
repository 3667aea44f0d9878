"""LogisticRegression and LinearSVM: sparse input, Platt scaling, and the exported linear graph."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from openlearner.errors import Invalid
from openlearner.models import LinearSVM, LogisticRegression
from openlearner.models.metrics import auc
from openlearner.models.onnx import check_parity, to_onnx


@pytest.fixture(scope="module")
def one_hot() -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 200, size=(3000, 3)) + np.array([0, 200, 400])  # three one-hot fields
    rows = np.repeat(np.arange(3000), 3)
    X = sp.csr_matrix((np.ones(ids.size), (rows, ids.ravel())), shape=(3000, 600))
    effect = rng.normal(0, 1.5, 600)
    logit = effect[ids].sum(axis=1) - 1.0
    y = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def test_sparse_input_trains_predicts_and_exports(one_hot: tuple[sp.csr_matrix, np.ndarray]) -> None:
    X, y = one_hot
    model = LogisticRegression(C=1.0).fit(X[:2000], y[:2000])
    reference = SkLogisticRegression(C=1.0, max_iter=1000, tol=1e-6).fit(X[:2000], y[:2000])
    np.testing.assert_allclose(model.coef_, reference.coef_.ravel(), atol=1e-2)  # float32 vs float64 training
    p = model.predict_proba(X[2000:])[:, 1]
    assert auc(y[2000:], p) > 0.75
    np.testing.assert_allclose(p, model.predict_proba(X[2000:].toarray())[:, 1], atol=1e-6)
    report = check_parity(model, to_onnx(model), X[2000:])  # sparse rows are fed densified
    assert report.passed and report.max_abs_diff < 1e-5


def test_svm_probability_is_platt_scaled_margin(one_hot: tuple[sp.csr_matrix, np.ndarray]) -> None:
    X, y = one_hot
    model = LinearSVM(C=0.1).fit(X[:2000], y[:2000])
    a, b = model.platt_
    assert a > 0  # a larger margin means a larger probability
    margin = model.decision_function(X[2000:])
    p = model.predict_proba(X[2000:])[:, 1]
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(a * margin + b))))
    assert auc(y[2000:], p) == pytest.approx(auc(y[2000:], margin))  # a monotone map keeps the ranking
    assert check_parity(model, to_onnx(model), X[2000:]).max_abs_diff < 1e-5


def test_named_columns_reorder() -> None:
    import pyarrow as pa

    X, y = make_classification(n_samples=400, n_features=3, n_redundant=0, random_state=0)
    table = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    model = LogisticRegression().fit(table, y)
    reordered = table.select(["c", "a", "b"])
    np.testing.assert_allclose(model.predict_proba(reordered), model.predict_proba(table))


def test_bad_inputs(one_hot: tuple[sp.csr_matrix, np.ndarray]) -> None:
    X, y = one_hot
    with pytest.raises(Invalid, match="C must be positive"):
        LogisticRegression(C=0).fit(X, y)
    with pytest.raises(Invalid, match="cv"):
        LinearSVM(cv=1).fit(X, y)
    with pytest.raises(Invalid, match="sparse matrix of shape"):
        LogisticRegression().fit(X[:0], y[:0])
    bad = X[:100].copy().astype(np.float64)
    bad.data[0] = np.nan
    with pytest.raises(Invalid, match="missing values"):
        LogisticRegression().fit(bad, y[:100])
    model = LogisticRegression().fit(X[:500], y[:500])
    with pytest.raises(Invalid, match="expected 600 features"):
        model.predict_proba(X[:5, :10])
    with pytest.raises(Invalid, match="at least cv"):
        LinearSVM().fit(np.eye(4), [0, 0, 0, 1])
