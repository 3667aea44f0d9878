"""Negative down-sampling: the re-calibration formula, in numpy and inside the exported graph."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

from openlearner.errors import Invalid
from openlearner.models import GBDTClassifier, LogisticRegression, NegativeDownsampled, downsample_negatives
from openlearner.models.metrics import calibration
from openlearner.models.onnx import export, to_onnx
from openlearner.models.sampling import recalibrate, sample_negatives


def test_recalibration_by_hand() -> None:
    # q = p / (p + (1 - p) / w)
    # p = 0.5, w = 0.1: 0.5 / (0.5 + 5) = 0.0909091
    # p = 0.2, w = 0.025: 0.2 / (0.2 + 32) = 0.0062112
    q = recalibrate([0.5, 0.2, 0.0, 1.0], 0.1)
    assert q[0] == pytest.approx(0.0909091, abs=1e-7)
    assert q[2] == 0.0 and q[3] == 1.0
    assert recalibrate([0.2], 0.025)[0] == pytest.approx(0.0062112, abs=1e-7)
    np.testing.assert_allclose(recalibrate([0.3, 0.7], 1.0), [0.3, 0.7])  # w = 1: nothing sampled away


def test_sample_negatives_keeps_every_positive_and_about_rate_of_negatives() -> None:
    y = np.array([1] * 100 + [0] * 10_000)
    X = np.arange(len(y), dtype=np.float32).reshape(-1, 1)
    kept, labels = sample_negatives(X, y, 0.1, seed=1)
    assert labels.sum() == 100
    assert 850 < (labels == 0).sum() < 1150
    assert np.all(np.diff(kept[:, 0]) > 0)  # row order kept
    table, labels2 = sample_negatives(pa.table({"x": X[:, 0]}), y, 0.1, seed=1)
    assert table.num_rows == len(labels2) == len(labels)


@pytest.fixture(scope="module")
def rare() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30_000, 3)).astype(np.float32)
    p = 1 / (1 + np.exp(-(-4.0 + 1.2 * X[:, 0] - 0.8 * X[:, 1])))
    return X, (rng.random(len(p)) < p).astype(int)


def test_the_rate_is_recorded_and_probabilities_are_recalibrated(rare: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = rare
    model = downsample_negatives(LogisticRegression(), 0.05, seed=0).fit(X[:20_000], y[:20_000])
    assert isinstance(model, NegativeDownsampled) and model.rate == 0.05
    assert model.sampled_rows_ < 3000
    raw = model.model_.predict_proba(X[20_000:])[:, 1]
    q = model.predict_proba(X[20_000:])[:, 1]
    np.testing.assert_allclose(q, raw / (raw + (1 - raw) / 0.05))
    assert calibration(y[20_000:], raw) > 5  # trained on few negatives it over-predicts
    assert calibration(y[20_000:], q) == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("base", [LogisticRegression, lambda: GBDTClassifier(num_trees=20)])
def test_recalibration_is_inside_the_one_exported_graph(
    rare: tuple[np.ndarray, np.ndarray], base: object
) -> None:
    X, y = rare
    model = downsample_negatives(base(), 0.1).fit(X[:10_000], y[:10_000])  # type: ignore[operator]
    graph = to_onnx(model)
    assert json.loads({p.key: p.value for p in graph.metadata_props}["negative_sampling_rate"]) == 0.1
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    label, q = session.run(["label", "probability"], {"input": X[20_000:]})
    p = model.model_.predict_proba(X[20_000:])[:, 1]
    np.testing.assert_allclose(q, p / (p + (1 - p) / 0.1), atol=1e-6)
    np.testing.assert_array_equal(label, (q >= 0.5).astype(np.int64))
    _, report = export(model, X[20_000:])
    assert report.passed


def test_bad_rates_and_data() -> None:
    for rate in (0, -0.1, 1.5, "0.1", True):
        with pytest.raises(Invalid, match="rate"):
            downsample_negatives(LogisticRegression(), rate)  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="rate"):
        recalibrate([0.5], 0.0)
    with pytest.raises(Invalid, match="single class"):
        downsample_negatives(LogisticRegression(), 0.001, seed=0).fit(np.eye(3), [0, 0, 1])
    with pytest.raises(Invalid, match="fit"):
        downsample_negatives(LogisticRegression(), 0.5).predict_proba(np.eye(3))


def test_online_model_learns_a_down_sampled_stream(rare: tuple[np.ndarray, np.ndarray]) -> None:
    from openlearner.models import OnlineLogisticRegression

    X, y = rare
    streamed = downsample_negatives(OnlineLogisticRegression(batch_size=4), 0.1, seed=3)
    for start in range(0, 20_000, 2_000):
        streamed.partial_fit(X[start : start + 2_000], y[start : start + 2_000])
    assert streamed.sampled_rows_ < 4_000
    again = downsample_negatives(OnlineLogisticRegression(batch_size=4), 0.1, seed=3)
    for start in range(0, 20_000, 2_000):
        again.partial_fit(X[start : start + 2_000], y[start : start + 2_000])
    np.testing.assert_array_equal(streamed.model_.coef_, again.model_.coef_)  # same stream, same model
    q = streamed.predict_proba(X[20_000:])[:, 1]
    assert calibration(y[20_000:], q) == pytest.approx(1.0, abs=0.35)
    assert export(streamed, X[20_000:])[1].passed
    with pytest.raises(Invalid, match="partial_fit"):
        downsample_negatives(LogisticRegression(), 0.1).partial_fit(X[:10], y[:10])
