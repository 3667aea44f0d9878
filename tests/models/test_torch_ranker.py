"""EmbeddingRanker: declared categorical columns, the unknown-level bucket, real MovieLens ratings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from openlearner.errors import Invalid
from openlearner.models import EmbeddingRanker
from openlearner.models.metrics import auc
from openlearner.models.onnx import export, to_onnx

torch.set_num_threads(1)  # small networks: one thread beats several competing for busy cores


def _rows(n: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 30, n), rng.integers(100, 120, n)
    price = rng.normal(size=n)
    bias = np.random.default_rng(7).normal(size=30)
    y = (2 * bias[user] + price + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return pa.table({"user": user, "item": item, "price": price}), y


@pytest.fixture(scope="module")
def ranker() -> EmbeddingRanker:
    table, y = _rows(800)
    model = EmbeddingRanker(
        categorical_columns=["user", "item"],
        embedding_dim=4,
        bottom_sizes=(8,),
        top_sizes=(8,),
        epochs=20,
        batch_size=32,
        learning_rate=3e-2,
        patience=4,
    )
    model.fit(table.slice(0, 600), y[:600])
    assert auc(y[600:], model.predict_proba(table.slice(600))[:, 1]) > 0.8
    return model


def test_levels_are_numbered_from_one_and_zero_is_reserved(ranker: EmbeddingRanker) -> None:
    assert ranker.dense_columns_ == ["price"]
    assert ranker.levels_[0].tolist() == list(range(30))
    assert ranker.levels_[1].tolist() == list(range(100, 120))
    indices = ranker._indices(np.array([[0, 100], [29, 119], [30, 99]], np.int64))
    assert indices.tolist() == [[1, 1], [30, 20], [0, 0]]


def test_unknown_levels_share_the_reserved_embedding_natively_and_in_the_graph(
    ranker: EmbeddingRanker, caplog: pytest.LogCaptureFixture
) -> None:
    probe = pa.table(
        {
            "user": pa.array([5, 9999, -1, None, 5], pa.int64()),
            "item": pa.array([101, 101, 101, 101, 5555], pa.int64()),
            "price": [0.3, 0.3, 0.3, 0.3, 0.3],
        }
    )
    assert ranker.count_unknown(probe) == {"user": 3, "item": 1}
    with caplog.at_level(logging.INFO, logger="openlearner.models.ranker"):
        p = ranker.predict_proba(probe)[:, 1]
    assert "user: 3" in caplog.text and "item: 1" in caplog.text
    # unseen, other unseen and null: the same unknown bucket (equal up to float32 rounding)
    assert np.allclose([p[2], p[3]], p[1], rtol=0, atol=1e-6)
    assert abs(p[0] - p[1]) > 1e-4
    graph = to_onnx(ranker, probe)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = ranker._onnx_feeds(probe)
    assert feeds["categorical"].dtype == np.int64 and feeds["dense"].dtype == np.float32
    _, probability = session.run(None, feeds)
    assert np.max(np.abs(probability - p)) < 1e-6
    _, report = export(ranker, probe)
    assert report.passed


def test_the_predictor_serves_unknown_levels_from_raw_ids(ranker: EmbeddingRanker, tmp_path: Path) -> None:
    from openlearner import Predictor, Settings, Workspace

    probe = pa.table({"user": [3, 4242, 7], "item": [105, 105, 9999], "price": [0.1, 0.1, -1.0]})
    feeds = ranker._onnx_feeds(probe)  # raw ids: the graph maps them to indices itself
    with Workspace.init(settings=Settings(home=tmp_path / "ws", auth_token=None)) as ws:
        version = ws.registry.register("ranker", ranker, sample=probe, alias="production")
        assert [(t.name, t.datatype) for t in version.signature.inputs] == [
            ("dense", "FP32"),
            ("categorical", "INT64"),
        ]
        served = Predictor(ws).predict("ranker", inputs=feeds)
    np.testing.assert_allclose(served, ranker.predict_proba(probe)[:, 1], atol=1e-6)


def test_rare_levels_train_the_unknown_embedding() -> None:
    table, y = _rows(400)
    users = table.column("user").to_numpy().copy()
    users[:5] = 1000 + np.arange(5)  # five levels seen once each
    table = table.set_column(0, "user", pa.array(users))
    model = EmbeddingRanker(categorical_columns=["user", "item"], min_frequency=2, epochs=2, embedding_dim=4)
    model.fit(table, y)
    assert not set(range(1000, 1005)) & set(model.levels_[0].tolist())
    assert model.count_unknown(table)["user"] == 5
    unknown = model.network_.embeddings[0].weight[0].detach()
    assert float(unknown.abs().sum()) > 0  # it learned from the rare rows


def test_declared_columns_and_bad_input() -> None:
    table, y = _rows(100)
    with pytest.raises(Invalid, match="categorical_columns"):
        EmbeddingRanker().fit(table, y)
    with pytest.raises(Invalid, match="both dense and categorical"):
        EmbeddingRanker(categorical_columns=["user"], dense_columns=["user", "price"]).fit(table, y)
    with pytest.raises(Invalid, match="at least one dense column"):
        EmbeddingRanker(categorical_columns=["user", "item"], dense_columns=[]).fit(table, y)
    with pytest.raises(Invalid, match="lacks categorical column"):
        EmbeddingRanker(categorical_columns=["shop"]).fit(table, y)
    with pytest.raises(Invalid, match="named columns"):
        EmbeddingRanker(categorical_columns=["user"]).fit(np.zeros((100, 3)), y)
    strings = table.set_column(0, "user", pa.array([f"u{i}" for i in range(100)]))
    with pytest.raises(Invalid, match="levels must be integers"):
        EmbeddingRanker(categorical_columns=["user"]).fit(strings, y)
    model = EmbeddingRanker(categorical_columns=["user", "item"], epochs=1).fit(table, y)
    with pytest.raises(Invalid, match="NaN"):
        model.predict(table.set_column(2, "price", pa.array([np.nan] * 100)))
    with pytest.raises(Invalid, match="lacks column"):
        model.predict(table.drop_columns(["price"]))
    with pytest.raises(Invalid, match="lacks categorical column"):
        model.predict(table.drop_columns(["item"]))


def test_beats_chance_on_real_movielens_ratings(shared_data: Callable[[str], Path]) -> None:
    ratings = pacsv.read_csv(
        shared_data("recsys/ml-100k.inter"), parse_options=pacsv.ParseOptions(delimiter="\t")
    ).slice(0, 24000)
    ratings = ratings.rename_columns([c.split(":")[0] for c in ratings.column_names])
    liked = (ratings.column("rating").to_numpy() >= 4).astype(np.int64)
    table = pa.table(
        {
            "user_id": ratings.column("user_id"),
            "item_id": ratings.column("item_id"),
            "bias": np.ones(ratings.num_rows, np.float32),
        }
    )
    model = EmbeddingRanker(
        categorical_columns=["user_id", "item_id"],
        embedding_dim=8,
        bottom_sizes=(8,),
        top_sizes=(16,),
        epochs=4,
        batch_size=512,
        learning_rate=3e-3,
        seed=0,
    )
    model.fit(table.slice(0, 20000), liked[:20000])
    held = table.slice(20000)
    score = auc(liked[20000:], model.predict_proba(held)[:, 1])
    assert score > 0.65, score
    _, report = export(model, held)
    assert report.passed
