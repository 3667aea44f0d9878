"""Real model families register with the signature their exported graph declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from openlearner.errors import Invalid
from openlearner.registry import ModelRegistry, TensorSpec
from openlearner.storage import LocalArtifactStore, MetadataDB


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    db = MetadataDB(f"sqlite:///{tmp_path / 'meta.db'}")
    db.migrate()
    return ModelRegistry(db, LocalArtifactStore(tmp_path / "artifacts"))


def _rows(n: int = 300) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    site = rng.integers(0, 4, n)
    y = (a - b + 0.3 * site + rng.normal(scale=0.3, size=n) > 0.4).astype(int)
    return pa.table({"a": a, "b": b, "site": site}), y


def test_a_gbdt_regressor_gives_prediction(registry: ModelRegistry) -> None:
    from openlearner.models import GBDTRegressor

    X, y = _rows()
    model = GBDTRegressor(num_trees=5).fit(X.select(["a", "b"]), X.column("a").to_numpy() * 2 + y)
    mv = registry.register("price", model, sample=X)
    assert mv.framework == "lightgbm" and mv.signature.columns == ["a", "b"]
    assert mv.signature.outputs == [TensorSpec("prediction", "FP32", [-1])]


def test_an_anomaly_detector_gives_label_and_score(registry: ModelRegistry) -> None:
    from openlearner.models import IsolationForest

    X, _ = _rows()
    mv = registry.register("fraud", IsolationForest(num_trees=10).fit(X.select(["a", "b"])), sample=X)
    assert [t.describe() for t in mv.signature.outputs] == ["label INT64 [-1]", "score FP32 [-1]"]


def test_an_embedding_ranker_takes_dense_and_categorical(registry: ModelRegistry) -> None:
    from openlearner.models import EmbeddingRanker

    X, y = _rows()
    model = EmbeddingRanker(
        categorical_columns=["site"],
        embedding_dim=2,
        bottom_sizes=(4,),
        top_sizes=(4,),
        epochs=1,
        device="cpu",
    ).fit(X, y)
    mv = registry.register("rank", model, sample=X)
    assert mv.framework == "torch"
    assert [(t.name, t.datatype, t.shape[-1]) for t in mv.signature.inputs] == [
        ("dense", "FP32", 2),
        ("categorical", "INT64", 1),
    ]
    assert [t.name for t in mv.signature.outputs] == ["label", "probability"]
    with pytest.raises(Invalid, match="site"):
        registry.register("rank", model, sample=X.select(["a", "b"]))  # its columns do not match
    assert [v.version for v in registry.versions("rank")] == [1]


def test_a_text_model_keeps_its_tokenizer_as_serving_metadata(registry: ModelRegistry) -> None:
    from openlearner.models import LSTMClassifier

    texts = ["good film", "bad film", "really good", "really bad", "good good", "bad bad"] * 5
    labels = np.array([1, 0, 1, 0, 1, 0] * 5)
    model = LSTMClassifier(max_len=4, embedding_dim=4, hidden_size=4, epochs=1, device="cpu").fit(
        texts, labels
    )
    mv = registry.register("sentiment", model, sample=texts[:12])
    assert [(t.name, t.datatype, t.shape) for t in mv.signature.inputs] == [("tokens", "INT64", [-1, 4])]
    assert mv.serving_metadata == model._serving_metadata()
    assert mv.serving_metadata["tokenizer"] and mv.signature.columns == []
