"""One conformance suite over every non-neural family: estimator contract, export with parity, bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification

from openlearner.errors import Invalid
from openlearner.models import (
    GBDTClassifier,
    GBDTLogisticRegression,
    GBDTRegressor,
    IsolationForest,
    LinearSVM,
    LogisticRegression,
    NotFittedError,
    OnlineLogisticRegression,
    downsample_negatives,
    wrap,
)
from openlearner.models.onnx import LABEL, PREDICTION, PROBABILITIES, PROBABILITY, SCORE, export, to_onnx

BINARY, MULTICLASS, REGRESSION, ANOMALY = "binary", "multiclass", "regression", "anomaly"


def _wrapped_forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return wrap(RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0))


FAMILIES: dict[str, tuple[Callable[[], Any], str, bool | None]] = {
    # name: (factory, task, takes NaN; None: the wrapped estimator's own policy)
    "LogisticRegression": (lambda: LogisticRegression(C=0.5), BINARY, False),
    "OnlineLogisticRegression": (lambda: OnlineLogisticRegression(batch_size=16, epochs=2), BINARY, False),
    "LinearSVM": (lambda: LinearSVM(C=0.5), BINARY, False),
    "GBDTClassifier": (lambda: GBDTClassifier(num_trees=15, num_leaves=7), BINARY, True),
    "GBDTClassifier-multiclass": (lambda: GBDTClassifier(num_trees=10, num_leaves=7), MULTICLASS, True),
    "GBDTRegressor": (lambda: GBDTRegressor(num_trees=15, num_leaves=7), REGRESSION, True),
    "GBDTLogisticRegression": (lambda: GBDTLogisticRegression(num_trees=10, num_leaves=7), BINARY, True),
    "IsolationForest": (lambda: IsolationForest(num_trees=25), ANOMALY, False),
    "downsample_negatives(GBDT)": (
        lambda: downsample_negatives(GBDTClassifier(num_trees=10), 0.5),
        BINARY,
        True,
    ),
    "wrap(RandomForest)": (_wrapped_forest, BINARY, None),
}
OUTPUTS = {
    BINARY: [LABEL, PROBABILITY],
    MULTICLASS: [LABEL, PROBABILITIES],
    REGRESSION: [PREDICTION],
    ANOMALY: [LABEL, SCORE],
}


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    X, y = make_classification(n_samples=1200, n_features=5, n_informative=4, n_redundant=0, random_state=2)
    X = X.astype(np.float32)
    y3 = np.digitize(X[:, 0] + X[:, 1], [-0.7, 0.7])
    return {
        BINARY: (X, y),
        MULTICLASS: (X, y3),
        REGRESSION: (X, (2.0 * X[:, 0] - X[:, 1] + 0.1 * X[:, 2] ** 2).astype(np.float64)),
        ANOMALY: (X, np.zeros(len(X), np.int64)),
    }


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Callable[[], Any], str, bool]:
    factory, task, nan_ok = FAMILIES[request.param]
    return request.param, factory, task, nan_ok


def _fit(model: Any, task: str, X: np.ndarray, y: np.ndarray) -> Any:
    return model.fit(X) if task == ANOMALY else model.fit(X, y)


def test_fit_returns_self_and_the_model_learns(family: Any, data: Any) -> None:
    _, factory, task, _ = family
    X, y = data[task]
    model = factory()
    assert _fit(model, task, X[:900], y[:900]) is model
    assert model.feature_names_ == [f"f{i}" for i in range(5)]
    held_X, held_y = X[900:], y[900:]
    if task == BINARY:
        p = model.predict_proba(held_X)
        assert p.shape == (300, 2) and np.allclose(p.sum(axis=1), 1.0)
        assert np.mean(model.predict(held_X) == held_y) > 0.75
    elif task == MULTICLASS:
        p = model.predict_proba(held_X)
        assert p.shape == (300, 3) and np.allclose(p.sum(axis=1), 1.0)
        assert np.mean(model.predict(held_X) == held_y) > 0.75
    elif task == REGRESSION:
        error = np.mean((model.predict(held_X) - held_y) ** 2)
        assert error < 0.5 * np.var(held_y)
    else:
        outliers = np.full((20, 5), 8.0, np.float32)
        assert model.predict(outliers).tolist() == [1] * 20
        assert model.predict(held_X).mean() < 0.2
        assert model.score_samples(outliers).min() > model.score_samples(held_X).max()


def test_clone_and_params(family: Any) -> None:
    name, factory, _, _ = family
    model = factory()
    params = model.get_params()
    copy = clone(model)
    assert copy is not model and set(copy.get_params()) == set(params)
    key = next(iter(params))
    assert model.set_params(**{key: params[key]}) is model
    if not name.startswith("wrap"):
        with pytest.raises((Invalid, ValueError)):
            model.set_params(no_such_parameter=1)


def test_predict_before_fit_is_a_clear_error(family: Any, data: Any) -> None:
    _, factory, task, _ = family
    X, _ = data[task]
    model = factory()
    with pytest.raises(NotFittedError, match="fit"):
        model.predict(X)
    with pytest.raises(Invalid, match="fit"):
        to_onnx(model)


def test_export_has_canonical_outputs_dynamic_batch_and_parity(family: Any, data: Any) -> None:
    _, factory, task, nan_ok = family
    X, y = data[task]
    model = _fit(factory(), task, X[:900], y[:900])
    graph = to_onnx(model)
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == OUTPUTS[task]
    assert [i.name for i in graph.graph.input] == ["input"]
    assert not graph.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 13):
        produced = session.run(None, {"input": X[:n]})
        assert all(out.shape[0] == n for out in produced)
    held = X[900:].copy()
    if nan_ok:
        held[::6, 2] = np.nan  # missing values must be routed alike by the model and its graph
    payload, report = export(model, held)
    assert isinstance(payload, bytes)
    assert report.passed and report.max_abs_diff < 1e-5, str(report)
    assert report.class_agreement >= 0.99


def test_bad_inputs(family: Any, data: Any) -> None:
    _, factory, task, nan_ok = family
    X, y = data[task]
    with pytest.raises(Invalid, match=r"no rows|at least one"):
        _fit(factory(), task, X[:0], y[:0])
    if task in (BINARY, MULTICLASS):
        with pytest.raises(Invalid, match=r"single class|both|two classes"):
            factory().fit(X[:100], np.ones(100, np.int64))
        with pytest.raises(Invalid, match="one value per row"):
            factory().fit(X[:100], y[:50])
    if nan_ok is False:
        with_nan = X[:300].copy()
        with_nan[5, 1] = np.nan
        with pytest.raises(Invalid, match=r"NaN|missing"):
            _fit(factory(), task, with_nan, y[:300])
    model = _fit(factory(), task, X[:300], y[:300])
    with pytest.raises(Invalid, match="expected 5 features"):
        model.predict(X[:10, :3])
    with pytest.raises(Invalid, match="numeric"):
        model.predict(pa.table({f"f{i}": ["x"] * 3 for i in range(5)}))
