"""wrap(): a user's own scikit-learn or LightGBM model exports like OpenLearner's."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.ensemble import IsolationForest as SkIsolationForest
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from openlearner.errors import Invalid
from openlearner.models import WrappedModel, wrap
from openlearner.models.onnx import LABEL, PREDICTION, PROBABILITIES, PROBABILITY, SCORE, export, to_onnx


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=1500, n_features=4, n_informative=3, n_redundant=0, random_state=7)
    return X.astype(np.float32), y


def _outputs(model: object) -> list[str]:
    return [o.name for o in to_onnx(model).graph.output]


def test_fitted_sklearn_pipeline_is_adopted_as_is(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    pipeline = make_pipeline(StandardScaler(), SkLogisticRegression()).fit(X[:1000], y[:1000])
    model = wrap(pipeline, feature_names=["a", "b", "c", "d"])
    assert isinstance(model, WrappedModel) and model.kind_ == "binary"
    assert model.feature_names_ == ["a", "b", "c", "d"]
    np.testing.assert_allclose(model.predict_proba(X[1000:]), pipeline.predict_proba(X[1000:]))
    assert _outputs(model) == [LABEL, PROBABILITY]
    assert export(model, X[1000:])[1].passed


def test_string_classes_export_class_indices(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    names = np.array(["ham", "spam", "eggs"])[(y + (X[:, 0] > 1)).clip(0, 2)]
    model = wrap(SkLogisticRegression(max_iter=500)).fit(X[:1000], names[:1000])
    assert model.kind_ == "multiclass" and model.classes_.tolist() == ["eggs", "ham", "spam"]
    graph = to_onnx(model)
    assert [o.name for o in graph.graph.output] == [LABEL, PROBABILITIES]
    assert json.loads({p.key: p.value for p in graph.metadata_props}["classes"]) == ["eggs", "ham", "spam"]
    _, report = export(model, X[1000:])
    assert report.passed and report.class_agreement == 1.0


def test_regressors_detectors_and_lightgbm(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    target = X[:, 0] * 2 + X[:, 1]
    regressor = wrap(GradientBoostingRegressor(n_estimators=20)).fit(X[:1000], target[:1000])
    assert _outputs(regressor) == [PREDICTION] and export(regressor, X[1000:])[1].passed
    detector = wrap(SkIsolationForest(n_estimators=20, random_state=0)).fit(X[:1000])
    assert _outputs(detector) == [LABEL, SCORE] and export(detector, X[1000:])[1].passed
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(X[:1000], y[:1000]), 10)
    wrapped = wrap(booster)
    assert wrapped.kind_ == "binary" and export(wrapped, X[1000:])[1].passed
    sk_api = wrap(lgb.LGBMRegressor(n_estimators=10, verbose=-1)).fit(X[:1000], target[:1000])
    assert export(sk_api, X[1000:])[1].passed


def test_bad_inputs(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    with pytest.raises(Invalid, match="scikit-learn and LightGBM"):
        wrap(object())
    with pytest.raises(Invalid, match="fit"):
        to_onnx(wrap(SkLogisticRegression()))
    with pytest.raises(Invalid, match="single class"):
        wrap(SkLogisticRegression()).fit(X[:50], np.zeros(50))
    with pytest.raises(Invalid, match="feature names"):
        wrap(SkLogisticRegression().fit(X, y), feature_names=["a"])
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(X, y), 3)
    with pytest.raises(Invalid, match="already trained"):
        wrap(booster).fit(X, y)
    model = wrap(SkLogisticRegression()).fit(X, y)
    with pytest.raises(Invalid, match="expected 4 features"):
        model.predict_proba(X[:3, :2])
    with pytest.raises(Invalid, match="not an outlier detector"):
        model.score_samples(X)
    with pytest.raises(Invalid, match="cannot convert"):
        to_onnx(wrap(_Unconvertible()).fit(X, y))


class _Unconvertible(SVR):
    """A scikit-learn subclass the converter has never heard of."""
