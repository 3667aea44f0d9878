"""Known LightGBM → ONNX pitfalls: each one exported and checked against the native model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_classification

from openlearner.errors import Invalid
from openlearner.models import GBDTClassifier, GBDTLogisticRegression, GBDTRegressor
from openlearner.models.onnx import check_parity, to_onnx


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=2000, n_features=6, n_informative=4, random_state=5)
    return X.astype(np.float32), y


def _assert_parity(model: object, rows: np.ndarray) -> None:
    report = check_parity(model, to_onnx(model), rows)
    assert report.passed and report.max_abs_diff < 1e-5, str(report)
    assert report.class_agreement >= 0.999


def test_feature_sampling_leaves_unused_columns_in_the_input(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    model = GBDTClassifier(num_trees=30, feature_fraction=0.34, seed=1).fit(X[:1500], y[:1500])
    used = set(json.dumps(model.booster_.dump_model()).count(f'"split_feature": {i}') for i in range(6))
    assert len(used) > 1  # features are used unevenly: sampling really happened
    graph = to_onnx(model)
    assert graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 6
    _assert_parity(model, X[1500:])


@pytest.mark.parametrize("boost_from_average", [True, False])
def test_base_score_of_a_shifted_target(
    data: tuple[np.ndarray, np.ndarray], boost_from_average: bool
) -> None:
    # A target far from 0: with boost_from_average LightGBM folds its mean into the first
    # tree (an XGBoost-style base score elsewhere); the graph must carry it either way.
    X, _ = data
    target = 500.0 + 3.0 * X[:, 0] - X[:, 1]
    model = GBDTRegressor(num_trees=25, boost_from_average=boost_from_average).fit(X[:1500], target[:1500])
    assert abs(float(np.mean(model.predict(X[1500:]))) - 500.0) < 5.0 or not boost_from_average
    report = check_parity(model, to_onnx(model), X[1500:])
    assert report.passed, str(report)


def test_imbalanced_binary_base_rate(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = data
    rare = (X[:, 0] > np.quantile(X[:, 0], 0.95)).astype(int)  # 5 % positives: a large negative initial score
    assert 0.04 < rare.mean() < 0.06
    model = GBDTClassifier(num_trees=20, boost_from_average=True).fit(X[:1500], rare[:1500])
    _assert_parity(model, X[1500:])


def test_missing_values_route_alike_including_columns_never_missing_in_training(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = data
    train = X[:1500].copy()
    train[::4, 1] = np.nan  # column 1 has missing values in training (learned default direction)
    model = GBDTClassifier(num_trees=30).fit(train, y[:1500])
    held = X[1500:].copy()
    held[::3, 1] = np.nan
    held[::5, 3] = np.nan  # column 3 was never missing in training: LightGBM treats NaN as 0
    _assert_parity(model, held)
    zeros = held.copy()
    zeros[::5, 3] = 0.0
    np.testing.assert_allclose(model.predict_proba(held)[::5], model.predict_proba(zeros)[::5])


def _with_codes(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = X.copy()
    X[:, 4] = rng.integers(0, 30, len(X))  # a categorical code whose effect is not monotone
    y = np.where(np.isin(X[:, 4], [3, 7, 11, 19, 23]), 1 - y, y)
    return X, y


def test_declared_categorical_splits_export(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = _with_codes(*data)
    model = GBDTClassifier(num_trees=30, categorical_features=["f4"]).fit(X[:1500], y[:1500])
    dumped = json.dumps(model.booster_.dump_model())
    assert '"decision_type": "=="' in dumped  # real categorical splits, not thresholds
    assert model.categories_["f4"].tolist() == list(range(30))
    _assert_parity(model, X[1500:])


def test_unknown_levels_go_to_the_unknown_bucket_and_are_counted(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = _with_codes(*data)
    model = GBDTClassifier(num_trees=30, categorical_features=[4]).fit(X[:1500], y[:1500])
    serve = X[1500:].copy()
    serve[:40, 4] = 1000.0  # never seen
    serve[40:50, 4] = np.nan  # missing
    assert model.unknown_levels(serve) == {"f4": 40}
    _assert_parity(model, serve)
    bucket = serve[:50].copy()
    bucket[:, 4] = -1.0  # the unknown bucket itself
    np.testing.assert_allclose(model.predict_proba(serve[:50]), model.predict_proba(bucket))
    hybrid = GBDTLogisticRegression(num_trees=15, categorical_features=[4]).fit(X[:1500], y[:1500])
    _assert_parity(hybrid, serve)


def test_categorical_inputs_are_declared_not_guessed(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = _with_codes(*data)
    model = GBDTClassifier(num_trees=10).fit(X[:1500], y[:1500])
    assert model.categories_ == {}
    assert '"decision_type": "=="' not in json.dumps(model.booster_.dump_model())


def test_bad_categorical_declarations(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(Invalid, match="not a column"):
        GBDTClassifier(num_trees=5, categorical_features=["nope"]).fit(X, y)
    with pytest.raises(Invalid, match="out of range"):
        GBDTClassifier(num_trees=5, categorical_features=[9]).fit(X, y)
    with pytest.raises(Invalid, match="non-negative integer codes"):
        GBDTClassifier(num_trees=5, categorical_features=[0]).fit(X, y)  # real-valued column


def test_a_failed_refit_leaves_the_model_unfitted(data: tuple[np.ndarray, np.ndarray]) -> None:
    from openlearner.models import NotFittedError

    X, y = data
    model = GBDTClassifier(num_trees=5, categorical_features=["f0"])
    X_codes = X.copy()
    X_codes[:, 0] = np.arange(len(X)) % 4
    model.fit(X_codes, y)
    with pytest.raises(Invalid, match="non-negative integer codes"):
        model.fit(X, y)  # f0 is real-valued now
    with pytest.raises(NotFittedError):
        model.predict_proba(X_codes)
