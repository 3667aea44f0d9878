"""GBDTClassifier: the estimator contract on LightGBM."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification

from openlearner.errors import Invalid
from openlearner.models import GBDTClassifier, NotFittedError
from openlearner.models.metrics import auc


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=3000, n_features=8, n_informative=5, random_state=0)
    return X, y


def test_fit_returns_self_and_learns(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    model = GBDTClassifier(num_trees=50)
    assert model.fit(X[:2000], y[:2000]) is model
    p = model.predict_proba(X[2000:])
    assert p.shape == (1000, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert auc(y[2000:], p[:, 1]) > 0.9
    assert set(np.unique(model.predict(X[2000:]))) <= {0, 1}


def test_same_seed_same_model(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    a = GBDTClassifier(num_trees=20, seed=3).fit(X, y).predict_proba(X)
    b = GBDTClassifier(num_trees=20, seed=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_named_columns_from_arrow_are_kept_and_reordered(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    table = pa.table({f"c{i}": X[:, i] for i in range(X.shape[1])})
    model = GBDTClassifier(num_trees=10).fit(table, y)
    assert model.feature_names_ == [f"c{i}" for i in range(8)]
    shuffled = table.select(list(reversed(table.column_names)))
    np.testing.assert_allclose(model.predict_proba(shuffled), model.predict_proba(table))


def test_nulls_become_missing_values(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    column = pa.array([None if i % 5 == 0 else v for i, v in enumerate(X[:, 0])], pa.float64())
    table = pa.table({"a": column, "b": X[:, 1]})
    model = GBDTClassifier(num_trees=10).fit(table, y)
    assert np.isfinite(model.predict_proba(table)).all()


def test_early_stopping_keeps_only_the_best_trees(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    model = GBDTClassifier(num_trees=400, learning_rate=0.3, early_stopping_rounds=5)
    model.fit(X[:2000], y[:2000], eval_set=(X[2000:], y[2000:]))
    assert model.booster_.num_trees() < 400


def test_get_and_set_params_work_with_sklearn_clone() -> None:
    model = GBDTClassifier(num_trees=7, num_leaves=5)
    copy = clone(model)
    assert copy.get_params()["num_trees"] == 7 and copy is not model
    assert model.set_params(num_trees=9).num_trees == 9
    with pytest.raises(Invalid, match="no parameter"):
        model.set_params(trees=3)


def test_bad_inputs(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(NotFittedError, match="fit"):
        GBDTClassifier().predict_proba(X)
    with pytest.raises(Invalid, match="num_trees"):
        GBDTClassifier(num_trees=0).fit(X, y)
    with pytest.raises(Invalid, match="one value per row"):
        GBDTClassifier(num_trees=5).fit(X, y[:10])
    with pytest.raises(Invalid, match="0 or 1"):
        GBDTClassifier(num_trees=5).fit(X, y * 3)
    with pytest.raises(Invalid, match="single class"):
        GBDTClassifier(num_trees=5).fit(X, np.zeros(len(y)))
    with pytest.raises(Invalid, match="numeric"):
        GBDTClassifier(num_trees=5).fit(pa.table({"s": ["a"] * len(y)}), y)
    model = GBDTClassifier(num_trees=5).fit(X, y)
    with pytest.raises(Invalid, match="expected 8 features"):
        model.predict_proba(X[:, :3])
    with pytest.raises(Invalid, match="2-dimensional"):
        model.predict_proba(X[0])


def test_multiclass_with_string_labels_and_early_stopping(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = data
    names = np.array(["dos", "normal", "probe"])[np.digitize(X[:, 0], [-0.5, 0.5])]
    model = GBDTClassifier(num_trees=300, learning_rate=0.3, early_stopping_rounds=5)
    model.fit(X[:2000], names[:2000], eval_set=(X[2000:], names[2000:]))
    assert model.classes_.tolist() == ["dos", "normal", "probe"]
    assert model.booster_.num_trees() < 300 * 3  # three trees per round, stopped early
    p = model.predict_proba(X[2000:])
    assert p.shape == (1000, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert np.mean(model.predict(X[2000:]) == names[2000:]) > 0.9
    with pytest.raises(Invalid, match="not among"):
        model.fit(X[:2000], names[:2000], eval_set=(X[2000:2010], np.array(["u2r"] * 10)))
    with pytest.raises(Invalid, match="0 or 1"):
        GBDTClassifier(num_trees=3).fit(X, np.where(names == "dos", "yes", "no"))


def test_regressor_early_stopping_and_bad_targets(data: tuple[np.ndarray, np.ndarray]) -> None:
    from openlearner.models import GBDTRegressor

    X, _ = data
    target = X[:, 0] * 2.0 + X[:, 1]
    model = GBDTRegressor(num_trees=500, learning_rate=0.3, early_stopping_rounds=5)
    model.fit(X[:2000], target[:2000], eval_set=(X[2000:], target[2000:]))
    assert model.booster_.num_trees() < 500
    assert np.mean((model.predict(X[2000:]) - target[2000:]) ** 2) < 0.2 * np.var(target)
    with pytest.raises(Invalid, match="NaN or infinite"):
        GBDTRegressor(num_trees=3).fit(X[:10], np.r_[np.nan, target[1:10]])
    with pytest.raises(Invalid, match="objective"):
        GBDTRegressor(objective="poisson").fit(X, target)
    with pytest.raises(Invalid, match="feature_fraction"):
        GBDTRegressor(feature_fraction=0).fit(X, target)
