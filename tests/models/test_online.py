"""OnlineLogisticRegression: the per-coordinate learning rate, step by step, and streaming."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification

from openlearner.errors import Invalid
from openlearner.models import OnlineLogisticRegression
from openlearner.models.metrics import auc


def test_two_updates_by_hand() -> None:
    model = OnlineLogisticRegression(alpha=0.1, beta=1.0)
    # Row 1: x = 2, y = 1. w = b = 0, so p = 0.5; g = (p - y)·(x, 1) = (-1, -0.5).
    # Σg² = (1, 0.25); w = 0 - 0.1/(1 + 1)·(-1) = 0.05; b = 0 - 0.1/(1 + 0.5)·(-0.5) = 0.0333333.
    model.partial_fit(np.array([[2.0]]), [1])
    assert model.coef_[0] == pytest.approx(0.05)
    assert model.intercept_ == pytest.approx(0.1 / 1.5 * 0.5)
    # Row 2: x = -1, y = 0. logit = -0.05 + 0.0333333 = -0.0166667, p = 0.4958334;
    # g = p·(-1, 1); Σg² = (1 + p², 0.25 + p²) = (1.2458508, 0.4958508), roots (1.1161769, 0.7041667);
    # w = 0.05 + 0.1/2.1161769·0.4958334 = 0.0734306; b = 0.0333333 - 0.1/1.7041667·0.4958334 = 0.0042380.
    model.partial_fit(np.array([[-1.0]]), [0])
    assert model.coef_[0] == pytest.approx(0.0734306, abs=1e-7)
    assert model.intercept_ == pytest.approx(0.0042380, abs=1e-7)
    assert model.squared_gradients_ == pytest.approx([1.2458508, 0.4958508], abs=1e-7)
    assert model.rows_seen_ == 2


def test_rare_coordinates_keep_a_larger_rate() -> None:
    model = OnlineLogisticRegression(alpha=0.1, beta=1.0)
    X = np.zeros((200, 2))
    X[:, 0] = 1.0  # always active
    X[::50, 1] = 1.0  # active in 4 rows
    model.partial_fit(X, (np.arange(200) % 2 == 0).astype(int))
    rates = 0.1 / (1.0 + np.sqrt(model.squared_gradients_[:2]))
    assert rates[1] > 3 * rates[0]


def test_streaming_batches_learn_and_single_class_batches_are_fine() -> None:
    X, y = make_classification(n_samples=4000, n_features=6, random_state=3)
    model = OnlineLogisticRegression(batch_size=8)
    for start in range(0, 3000, 500):
        model.partial_fit(X[start : start + 500], y[start : start + 500])
    assert model.rows_seen_ == 3000
    assert auc(y[3000:], model.predict_proba(X[3000:])[:, 1]) > 0.85
    positives = X[3000:][y[3000:] == 1][:20]
    model.partial_fit(positives, np.ones(len(positives), int))
    with pytest.raises(Invalid, match="0 or 1"):
        model.partial_fit(X[:5], [0, 1, 2, 0, 1])
    with pytest.raises(Invalid, match="expected 6 features"):
        model.partial_fit(X[:5, :2], [0, 1, 0, 0, 1])
    refit = OnlineLogisticRegression(batch_size=8).fit(X[:3000], y[:3000])
    assert refit.rows_seen_ == 3000  # fit starts afresh


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"alpha": 0}, "alpha"),
        ({"beta": -1}, "beta"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_bad_hyper_parameters(params: dict[str, float], fragment: str) -> None:
    with pytest.raises(Invalid, match=fragment):
        OnlineLogisticRegression(**params).fit(np.eye(4), [0, 1, 0, 1])  # type: ignore[arg-type]


def test_sparse_rows_train_the_same_model_as_dense_ones() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(5)
    dense = (rng.random((600, 40)) < 0.1).astype(np.float64)
    y = (dense[:, :5].sum(axis=1) > 0).astype(int)
    a = OnlineLogisticRegression(batch_size=4, epochs=2).fit(dense, y)
    b = OnlineLogisticRegression(batch_size=4, epochs=2).fit(sp.csr_matrix(dense), y)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-9)
    np.testing.assert_allclose(a.predict_proba(dense), b.predict_proba(sp.csr_matrix(dense)), atol=1e-9)
    never_active = dense.sum(axis=0) == 0
    if never_active.any():
        assert (b.squared_gradients_[:-1][never_active] == 0).all()
