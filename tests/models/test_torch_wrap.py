"""TorchModel: a user's own trained PyTorch module exports through the same parity gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from openlearner.errors import Invalid
from openlearner.models import TorchModel
from openlearner.models.nn import TrainingSettings, train_network
from openlearner.models.onnx import LABEL, PREDICTION, PROBABILITIES, PROBABILITY, export, to_onnx

torch.set_num_threads(1)


class TwoTower(nn.Module):
    """A user's module with two named inputs: features and ids."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = nn.Embedding(10, 4)
        self.dense = nn.Linear(3, 4)
        self.out = nn.Linear(8, 3)

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.dense(features), self.ids(ids)], dim=1))


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)


def test_a_trained_binary_module_exports_with_parity() -> None:
    X = _rows(300)
    y = (X[:, 0] > 0).astype(np.int64)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    train_network(net, [X], y, TrainingSettings(epochs=20, learning_rate=2e-2, device="cpu"))
    model = TorchModel(net, task="binary", classes=["no", "yes"])
    assert np.mean(model.predict(X) == np.array(["no", "yes"])[y]) > 0.9
    graph = to_onnx(model, X)
    assert [o.name for o in graph.graph.output] == [LABEL, PROBABILITY]
    assert {p.key: p.value for p in graph.metadata_props}["classes"] == '["no", "yes"]'
    _, report = export(model, X)
    assert report.passed and report.max_abs_diff < 1e-5


def test_a_single_logit_module_is_a_binary_classifier() -> None:
    X = _rows(50)
    model = TorchModel(nn.Linear(3, 1), task="binary")
    p = model.predict_proba(X)
    assert p.shape == (50, 2) and np.allclose(p.sum(axis=1), 1)
    _, report = export(model, X)
    assert report.passed


def test_a_multi_input_multiclass_module() -> None:
    features = _rows(40)
    ids = np.random.default_rng(1).integers(0, 10, 40)
    model = TorchModel(TwoTower(), task="multiclass", input_names=("features", "ids"))
    rows = {"features": features, "ids": ids}
    graph = to_onnx(model, rows)
    assert [i.name for i in graph.graph.input] == ["features", "ids"]
    assert [o.name for o in graph.graph.output] == [LABEL, PROBABILITIES]
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"features": features[:7], "ids": ids[:7].astype(np.int64)})
    assert probabilities.shape == (7, 3) and label.shape == (7,)
    _, report = export(model, rows)
    assert report.passed
    with pytest.raises(Invalid, match="lack input"):
        model.predict({"features": features})
    with pytest.raises(Invalid, match="dict keyed by"):
        model.predict(features)


def test_a_wrapped_module_registers_and_serves(tmp_path: Path) -> None:
    from openlearner import Predictor, Settings, Workspace

    X = _rows(20)
    model = TorchModel(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), task="binary")
    with Workspace.init(settings=Settings(home=tmp_path / "ws", auth_token=None)) as ws:
        version = ws.registry.register("own", model, sample=X, alias="production")
        assert [t.name for t in version.signature.inputs] == ["input"]
        served = Predictor(ws).predict("own", inputs={"input": X})
    np.testing.assert_allclose(served, model.predict_proba(X)[:, 1], atol=1e-6)


def test_a_regression_module() -> None:
    X = _rows(30)
    model = TorchModel(nn.Linear(3, 1), task="regression")
    graph = to_onnx(model, X)
    assert [o.name for o in graph.graph.output] == [PREDICTION]
    assert model.predict(X).shape == (30,)
    _, report = export(model, X)
    assert report.passed
    with pytest.raises(Invalid, match="no class probabilities"):
        model.predict_proba(X)


def test_bad_wrapping_is_refused() -> None:
    X = _rows(5)
    with pytest.raises(Invalid, match=r"torch\.nn\.Module"):
        TorchModel(object(), task="binary").predict(X)  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="task"):
        TorchModel(nn.Linear(3, 2), task="ranking").predict(X)
    with pytest.raises(Invalid, match="two classes"):
        TorchModel(nn.Linear(3, 2), task="binary", classes=[0, 1, 2]).predict(X)
    with pytest.raises(Invalid, match="sample rows"):
        to_onnx(TorchModel(nn.Linear(3, 2)))
    with pytest.raises(Invalid, match="no rows"):
        TorchModel(nn.Linear(3, 2)).predict(X[:0])
