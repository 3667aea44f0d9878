"""One conformance suite over every PyTorch family: the estimator contract, export with parity, bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
import torch
from sklearn.base import clone

from openlearner.errors import Invalid
from openlearner.models import (
    CNNClassifier,
    EmbeddingRanker,
    LSTMClassifier,
    MLPClassifier,
    NotFittedError,
)
from openlearner.models.onnx import LABEL, PROBABILITIES, PROBABILITY, export, to_onnx

# The networks here are tiny: one intra-op thread is faster than several competing for busy cores.
torch.set_num_threads(1)

WORDS = {
    0: ["good", "great", "fine", "nice"],
    1: ["bad", "awful", "poor", "sad"],
    2: ["ball", "goal", "team"],
}


def _tabular(n: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, 5)).astype(np.float32)
    score = X[:, 0] + X[:, 1] - 0.5 * X[:, 2]
    cuts = [0.0] if classes == 2 else [-0.7, 0.7]
    return X, np.digitize(score, cuts)


def _ranker_rows(n: int, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray]:
    user, item = rng.integers(0, 40, n), rng.integers(500, 530, n)
    dense = rng.normal(size=n)
    factors = np.random.default_rng(7)
    users, items = factors.normal(size=(40, 2)), factors.normal(size=(30, 2))
    score = 2.0 * (users[user] * items[item - 500]).sum(axis=1) + users[user, 0] + 0.5 * dense
    return pa.table({"user": user, "item": item, "dense": dense}), (score > 0).astype(np.int64)


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    images = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
    images[y == 1, 2:6, 2:6] += 150  # a bright square marks class 1
    return images, y


def _texts(n: int, classes: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    y = rng.integers(0, classes, n)
    filler = ["the", "a", "it", "was", "day", "we"]
    texts = [
        " ".join(
            rng.choice(filler, 4).tolist()
            + rng.choice(WORDS[int(c)], 2).tolist()
            + rng.choice(filler, 3).tolist()
        )
        for c in y
    ]
    return texts, y


# name: (factory, data maker(n, rng) -> (X, y), number of classes, graph inputs)
FAMILIES: dict[str, tuple[Callable[[], Any], Callable[[int, np.random.Generator], Any], int, list[str]]] = {
    "MLPClassifier": (
        lambda: MLPClassifier(hidden_sizes=(16,), epochs=15, learning_rate=1e-2),
        lambda n, rng: _tabular(n, 2, rng),
        2,
        ["input"],
    ),
    "MLPClassifier-multiclass": (
        lambda: MLPClassifier(hidden_sizes=(16,), epochs=15, learning_rate=1e-2),
        lambda n, rng: _tabular(n, 3, rng),
        3,
        ["input"],
    ),
    "EmbeddingRanker": (
        lambda: EmbeddingRanker(
            categorical_columns=["user", "item"],
            embedding_dim=4,
            bottom_sizes=(8,),
            top_sizes=(16,),
            epochs=40,
            batch_size=32,
            learning_rate=3e-2,
            patience=5,
        ),
        _ranker_rows,
        2,
        ["dense", "categorical"],
    ),
    "CNNClassifier": (
        lambda: CNNClassifier(channels=(4,), hidden_size=8, epochs=8, learning_rate=1e-2),
        _images,
        2,
        ["input"],
    ),
    "LSTMClassifier-multiclass": (
        lambda: LSTMClassifier(max_len=12, embedding_dim=8, hidden_size=8, epochs=8, learning_rate=2e-2),
        lambda n, rng: _texts(n, 3, rng),
        3,
        ["tokens"],
    ),
}


def _take(X: Any, rows: slice) -> Any:
    if isinstance(X, pa.Table):
        return X.take(np.arange(X.num_rows)[rows])
    return X[rows]


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Callable[[], Any], Any, Any, int, list[str]]:
    factory, make, classes, inputs = FAMILIES[request.param]
    X, y = make(800, np.random.default_rng(0))
    return request.param, factory, X, y, classes, inputs


@pytest.fixture(scope="module", params=list(FAMILIES))
def fitted(request: pytest.FixtureRequest) -> tuple[Any, Any, Any, int, list[str], Any]:
    """Each family fitted once for the module: (model, held-out X, y, classes, inputs, what fit returned)."""
    factory, make, classes, inputs = FAMILIES[request.param]
    X, y = make(800, np.random.default_rng(0))
    model = factory()
    returned = model.fit(_take(X, slice(0, 600)), y[:600])
    return model, _take(X, slice(600, 800)), y[600:], classes, inputs, returned


def test_fit_returns_self_learns_and_predicts_classes(fitted: Any) -> None:
    model, held_X, held_y, classes, _, returned = fitted
    assert returned is model
    p = model.predict_proba(held_X)
    assert p.shape == (200, classes) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert model.classes_.tolist() == list(range(classes))
    accuracy = float(np.mean(model.predict(held_X) == held_y))
    majority = float(np.bincount(held_y).max() / len(held_y))
    assert accuracy > majority + 0.15, (accuracy, majority)
    assert model.history_ and model.best_epoch_ >= 1 and model.device_ in ("cpu", "cuda", "cuda:0")


def test_clone_and_params(family: Any) -> None:
    _, factory, *_ = family
    model = factory()
    params = model.get_params()
    copy = clone(model)
    assert copy is not model and copy.get_params().keys() == params.keys()
    assert model.set_params(seed=3) is model and model.seed == 3
    with pytest.raises(Invalid, match="no parameter"):
        model.set_params(no_such_parameter=1)


def test_predict_before_fit_is_a_clear_error(family: Any) -> None:
    _, factory, X, _, _, _ = family
    model = factory()
    with pytest.raises(NotFittedError, match="fit"):
        model.predict(X)
    with pytest.raises(NotFittedError, match="fit"):
        model.predict_proba(X)
    with pytest.raises(Invalid, match="fit"):
        to_onnx(model)


def test_export_has_named_inputs_canonical_outputs_dynamic_batch_and_parity(fitted: Any) -> None:
    model, held_X, _, classes, inputs, _ = fitted
    graph = to_onnx(model, held_X)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == inputs
    assert [o.name for o in graph.graph.output] == [LABEL, PROBABILITY if classes == 2 else PROBABILITIES]
    for value in [*graph.graph.input, *graph.graph.output]:
        assert not value.type.tensor_type.shape.dim[0].HasField("dim_value"), value.name
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = model._onnx_feeds(held_X)
    for n in (1, 13):
        label, probability = session.run(None, {k: v[:n] for k, v in feeds.items()})
        assert label.shape == (n,) and probability.shape[0] == n
    label, _ = session.run(None, feeds)
    assert np.mean(model.classes_[label] == model.predict(held_X)) >= 0.99
    payload, report = export(model, held_X)
    assert isinstance(payload, bytes)
    assert report.passed and report.max_abs_diff < 1e-5, str(report)
    assert report.class_agreement >= 0.99


def test_empty_data_and_a_single_class_are_refused(family: Any) -> None:
    _, factory, X, y, _, _ = family
    with pytest.raises(Invalid, match=r"no rows|no texts|no images|at least one"):
        factory().fit(_take(X, slice(0, 0)), y[:0])
    with pytest.raises(Invalid, match="single class"):
        factory().fit(_take(X, slice(0, 100)), np.ones(100, np.int64))
    with pytest.raises(Invalid, match="one value per row"):
        factory().fit(_take(X, slice(0, 100)), y[:50])


def test_a_failed_refit_leaves_no_half_fitted_model(fitted: Any) -> None:
    trained, held_X, held_y, *_ = fitted
    model = clone(trained).set_params(epochs=1)
    model.fit(held_X, held_y)
    with pytest.raises(Invalid):
        model.fit(_take(held_X, slice(0, 50)), np.zeros(50, np.int64))
    with pytest.raises(NotFittedError):
        model.predict(held_X)


def test_string_labels_come_back_as_strings() -> None:
    X, y = _tabular(400, 2, np.random.default_rng(1))
    names = np.array(["ham", "spam"])[y]
    model = MLPClassifier(hidden_sizes=(8,), epochs=5).fit(X, names)
    assert model.classes_.tolist() == ["ham", "spam"]
    assert set(model.predict(X[:50]).tolist()) <= {"ham", "spam"}
    graph = to_onnx(model, X)
    assert {p.key: p.value for p in graph.metadata_props}["classes"] == '["ham", "spam"]'


def test_mlp_refuses_nan_and_a_wrong_feature_count() -> None:
    X, y = _tabular(300, 2, np.random.default_rng(2))
    with_nan = X.copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(Invalid, match="NaN"):
        MLPClassifier(epochs=1).fit(with_nan, y)
    model = MLPClassifier(epochs=1).fit(X, y)
    with pytest.raises(Invalid, match="NaN"):
        model.predict(with_nan)
    with pytest.raises(Invalid, match="expected 5 features"):
        model.predict(X[:, :3])
    with pytest.raises(Invalid, match="numeric"):
        model.predict(pa.table({f"f{i}": ["x"] * 3 for i in range(5)}))


def test_bad_hyper_parameters_are_named() -> None:
    X, y = _tabular(100, 2, np.random.default_rng(3))
    for params, word in [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"hidden_sizes": (8, 0)}, "hidden_sizes"),
        ({"dropout": 1.5}, "dropout"),
        ({"device": "tpu"}, "device"),
    ]:
        with pytest.raises(Invalid, match=word):
            MLPClassifier(**params).fit(X, y)
    if not torch.cuda.is_available():
        with pytest.raises(Invalid, match="no CUDA GPU"):
            MLPClassifier(device="cuda").fit(X, y)
