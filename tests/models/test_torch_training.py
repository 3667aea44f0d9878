"""The shared PyTorch training loop: seeds, early stopping, progress, devices."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from openlearner.errors import Invalid
from openlearner.models import MLPClassifier
from openlearner.models.nn import EpochReport, TrainingSettings, select_device, train_network
from openlearner.models.onnx import export

torch.set_num_threads(1)  # tiny networks: one thread beats several competing for busy cores


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    return X, (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)


def test_the_same_seed_gives_the_same_model_on_the_cpu() -> None:
    X, y = _data()
    params = {"hidden_sizes": (16,), "dropout": 0.2, "epochs": 4, "device": "cpu"}
    first = MLPClassifier(seed=5, **params).fit(X, y)
    second = MLPClassifier(seed=5, **params).fit(X, y)
    other = MLPClassifier(seed=6, **params).fit(X, y)
    assert np.array_equal(first.predict_proba(X), second.predict_proba(X))
    assert [r.train_loss for r in first.history_] == [r.train_loss for r in second.history_]
    assert not np.allclose(first.predict_proba(X), other.predict_proba(X))


def test_fitting_does_not_disturb_the_callers_random_state() -> None:
    X, y = _data(200)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MLPClassifier(epochs=1, seed=9).fit(X, y)
    assert torch.equal(torch.rand(3), expected)


def test_early_stopping_restores_the_best_epoch() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 10)).astype(np.float32)
    y = rng.integers(0, 2, 300)  # pure noise: validation loss soon rises while training loss falls
    model = MLPClassifier(hidden_sizes=(128, 128), epochs=200, learning_rate=1e-2, patience=3, seed=0)
    model.fit(X, y)
    assert model.stopped_early_ and len(model.history_) < 200
    losses = [r.valid_loss for r in model.history_]
    assert model.best_epoch_ == 1 + int(np.argmin(losses))
    assert len(model.history_) == model.best_epoch_ + 3
    assert model.history_[-1].train_loss < model.history_[0].train_loss


def test_the_restored_weights_are_the_best_epochs() -> None:
    X, y = _data(400)
    network = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    settings = TrainingSettings(epochs=30, learning_rate=5e-2, patience=2, seed=0, device="cpu")
    valid = (X[300:], y[300:])
    result = train_network(network, [X[:300]], y[:300], settings, validation=([valid[0]], valid[1]))
    with torch.no_grad():
        logits = network(torch.from_numpy(valid[0]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(valid[1])).item()
    best = min(r.valid_loss for r in result.history if r.valid_loss is not None)
    assert loss == pytest.approx(best, rel=1e-5)


def test_without_a_validation_split_every_epoch_runs() -> None:
    X, y = _data(200)
    model = MLPClassifier(epochs=5, validation_fraction=0.0).fit(X, y)
    assert len(model.history_) == 5 and not model.stopped_early_
    assert all(r.valid_loss is None for r in model.history_) and model.best_epoch_ == 5


def test_eval_set_replaces_the_split() -> None:
    X, y = _data(500)
    seen: list[EpochReport] = []
    model = MLPClassifier(epochs=3).fit(X[:400], y[:400], eval_set=(X[400:], y[400:]), progress=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3] and all(r.epochs == 3 for r in seen)
    assert all(r.valid_loss is not None and r.seconds >= 0 and r.device == model.device_ for r in seen)
    assert model.history_ == seen
    with pytest.raises(Invalid, match="not among the model's classes"):
        MLPClassifier(epochs=1).fit(X[:400], y[:400], eval_set=(X[400:], y[400:] + 5))


def test_progress_is_silent_by_default_and_logged_when_verbose(caplog: pytest.LogCaptureFixture) -> None:
    X, y = _data(200)
    with caplog.at_level(logging.INFO, logger="openlearner.models.nn"):
        MLPClassifier(epochs=2).fit(X, y)
        assert not caplog.records
        MLPClassifier(epochs=2, verbose=True).fit(X, y)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[0].startswith("epoch 1/2: train loss")


def test_a_diverging_run_is_a_clear_error() -> None:
    X, y = _data(200)
    X[7, 0] = np.inf  # the loop's own guard: families refuse such rows before training
    network = torch.nn.Linear(6, 2)
    with pytest.raises(Invalid, match="diverged"):
        train_network(network, [X], y, TrainingSettings(epochs=2, device="cpu"))
    with pytest.raises(Invalid, match="NaN"):
        MLPClassifier(epochs=1).fit(X, y)


def test_too_few_rows_for_the_split() -> None:
    X, y = np.array([[0.0], [1.0]], np.float32), np.array([0, 1])
    with pytest.raises(Invalid, match="nothing to train on"):
        MLPClassifier(validation_fraction=0.9).fit(X, y)


def test_device_selection() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(Invalid, match="device"):
        select_device("tpu")


@pytest.mark.gpu
def test_training_runs_on_the_gpu_when_present() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    X, y = _data(400)
    model = MLPClassifier(epochs=3, device="auto").fit(X, y)
    assert model.device_.startswith("cuda")
    assert all(p.is_cuda for p in model.network_.parameters())
    _, report = export(model, X[:100])  # the export copies the network to the CPU
    assert report.passed
