"""Values between operators: Parquet datasets, pickle-free models, JSON, and return-type checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from openlearner.errors import Invalid
from openlearner.flow import Dataset, ModelArtifact, register_model_format
from openlearner.flow.values import check_value, load_value, save_value
from openlearner.storage.artifacts import LocalArtifactStore


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_a_dataset_is_stored_as_parquet_and_read_back(store: LocalArtifactStore) -> None:
    ref = save_value(Dataset({"a": [1, 2, 3], "b": ["x", "y", "z"]}), store)
    assert ref["kind"] == "dataset" and ref["rows"] == 3
    assert store.get(ref["digest"])[:4] == b"PAR1"
    again = load_value(ref, store)
    assert isinstance(again, Dataset) and again.table.to_pydict() == {"a": [1, 2, 3], "b": ["x", "y", "z"]}
    assert (
        save_value(Dataset(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})), store)["digest"]
        == ref["digest"]
    )


def test_a_gbdt_model_round_trips_without_pickle(store: LocalArtifactStore) -> None:
    from openlearner.models.gbdt import GBDTClassifier

    rng = np.random.default_rng(0)
    X = pa.table({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    y = (X.column("a").to_numpy() > 0).astype(np.int64)
    model = GBDTClassifier(num_trees=5, num_leaves=4, min_child_samples=5, num_threads=1).fit(X, y)
    ref = save_value(ModelArtifact(model), store)
    assert ref["kind"] == "model" and ref["format"] == "lightgbm-gbdt/1"
    document = json.loads(store.get(ref["digest"]))  # plain JSON, never a pickle
    assert document["params"]["num_trees"] == 5 and "booster_" in document["learned"]
    loaded = load_value(ref, store).model
    assert isinstance(loaded, GBDTClassifier) and loaded.feature_names_ == ["a", "b"]
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


class Memo:
    """A toy model family with its own format."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def fit(self) -> Memo:
        return self


def test_families_plug_in_their_own_format(store: LocalArtifactStore) -> None:
    with pytest.raises(Invalid, match="register_model_format"):
        ModelArtifact(Memo(1.0))
    register_model_format("memo/1", Memo, lambda m: str(m.value).encode(), lambda b: Memo(float(b)))
    ref = save_value(ModelArtifact(Memo(2.5)), store)
    assert store.get(ref["digest"]) == b"2.5" and load_value(ref, store).model.value == 2.5


def test_small_json_travels_inline_and_large_json_in_the_store(store: LocalArtifactStore) -> None:
    small = save_value({"ne": 0.8}, store)
    assert small["value"] == {"ne": 0.8} and not store.exists(small["digest"])
    large = save_value(list(range(50_000)), store)
    assert "value" not in large and load_value(large, store) == list(range(50_000))
    with pytest.raises(Invalid, match="JSON value"):
        save_value(object(), store)
    with pytest.raises(Invalid, match="JSON value"):
        save_value(float("nan"), store)


def test_return_values_are_checked_against_annotations() -> None:
    assert check_value(3, float, "op") == 3.0
    assert isinstance(check_value(pa.table({"a": [1]}), Dataset, "op"), Dataset)
    assert check_value(None, int | None, "op") is None
    assert check_value({"a": 1}, dict[str, int], "op") == {"a": 1}
    with pytest.raises(Invalid, match="op returned str, which is not int"):
        check_value("3", int, "op")
    with pytest.raises(Invalid, match="returned bool"):
        check_value(True, int, "op")
    with pytest.raises(Invalid, match="which is not Dataset"):
        check_value([1, 2], Dataset, "op")
