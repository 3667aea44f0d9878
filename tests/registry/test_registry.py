"""The model registry: versions, aliases, lineage, integrity, concurrency."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from openlearner.errors import Conflict, Corrupt, Invalid, NotFound, ParityError
from openlearner.models import GBDTClassifier
from openlearner.registry import ModelRegistry
from openlearner.storage import LocalArtifactStore


def _table(seed: int, n: int = 300) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    y = (a + 0.5 * b + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return pa.table({"a": a, "b": b}), y


@functools.cache  # a fitted model is only read from here on: fit it once per module
def _model(seed: int = 0) -> tuple[GBDTClassifier, pa.Table]:
    X, y = _table(seed)
    return GBDTClassifier(num_trees=5, seed=seed).fit(X, y), X


def test_register_records_everything_a_version_holds(registry: ModelRegistry) -> None:
    model, X = _model()
    mv = registry.register(
        "ctr",
        model,
        sample=X,
        metrics={"ne": 0.83},
        run_id="run-1",
        tags={"team": "ads"},
        training_set_digest="ab" * 32,
    )
    assert (mv.name, mv.version, mv.status) == ("ctr", 1, "ready")
    assert mv.framework == "lightgbm"
    assert mv.parity["passed"] and mv.parity["rows"] == X.num_rows
    assert mv.metrics == {"ne": 0.83} and mv.tags == {"team": "ads"} and mv.run_id == "run-1"
    assert mv.training_set_digest == "ab" * 32
    assert {"onnxruntime", "lightgbm", "python"} <= set(mv.libraries)
    assert [t.name for t in mv.signature.inputs] == ["input"] and mv.signature.columns == ["a", "b"]
    assert mv.signature.serving is None
    graph = registry.read_graph(mv)
    assert registry.artifacts.get(mv.artifact_digest) == graph


def test_versions_count_up_and_are_never_reused(registry: ModelRegistry) -> None:
    model, X = _model()
    numbers = [registry.register("ctr", model, sample=X).version for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert [v.version for v in registry.versions("ctr")] == [1, 2, 3]
    assert registry.get("ctr").version == 3
    assert registry.models() == ["ctr"]


def test_aliases_move_and_keep_their_history(registry: ModelRegistry) -> None:
    model, X = _model()
    for _ in range(2):
        registry.register("ctr", model, sample=X)
    first = registry.set_alias("ctr", "production", 1)
    assert first.from_version is None and first.to_version == 1
    assert registry.get("ctr", alias="production").version == 1
    second = registry.set_alias("ctr", "production", 2)
    assert (second.from_version, second.to_version) == (1, 2)
    assert registry.get("ctr", alias="production").aliases == ["production"]
    history = registry.alias_history("ctr", "production")
    assert [(h.from_version, h.to_version) for h in history] == [(None, 1), (1, 2)]


def test_all_aliases_of_a_model_in_one_call(registry: ModelRegistry) -> None:
    model, X = _model()
    for _ in range(2):
        registry.register("ctr", model, sample=X)
    assert registry.aliases("ctr") == {}
    registry.set_alias("ctr", "production", 1)
    registry.set_alias("ctr", "canary", 2)
    assert registry.aliases("ctr") == {"production": 1, "canary": 2}
    with pytest.raises(NotFound, match="no model 'nope'; registered models: ctr"):
        registry.aliases("nope")
    with pytest.raises(Invalid, match="model name"):
        registry.aliases("a b")


def test_archive_rules(registry: ModelRegistry) -> None:
    model, X = _model()
    for _ in range(2):
        registry.register("ctr", model, sample=X)
    registry.set_alias("ctr", "production", 2)
    with pytest.raises(Conflict, match="move them first"):
        registry.archive("ctr", 2)
    registry.archive("ctr", 1)
    assert registry.get("ctr", version=1).status == "archived"
    with pytest.raises(Conflict, match="archived"):
        registry.set_alias("ctr", "staging", 1)


def test_unknown_names_say_what_exists(registry: ModelRegistry) -> None:
    model, X = _model()
    registry.register("ctr", model, sample=X)
    with pytest.raises(NotFound, match="registered models: ctr"):
        registry.get("nope")
    with pytest.raises(NotFound, match="versions: 1"):
        registry.get("ctr", version=7)
    with pytest.raises(NotFound, match="no alias 'production'"):
        registry.get("ctr", alias="production")
    with pytest.raises(Invalid, match="not both"):
        registry.get("ctr", version=1, alias="production")
    with pytest.raises(Invalid, match="not valid"):
        registry.set_alias("ctr", "bad alias!", 1)
    with pytest.raises(Invalid, match="model name"):
        registry.register("bad name/", model, sample=X)


def test_a_sample_without_the_model_columns_is_refused(registry: ModelRegistry) -> None:
    model, X = _model()
    with pytest.raises(Invalid, match="lacks the model's column"):
        registry.register("ctr", model, sample=X.select(["a"]))
    with pytest.raises(Invalid, match=r"not fitted|fit it first"):
        registry.register("ctr", GBDTClassifier(), sample=X)
    assert registry.models() == []


@pytest.mark.parametrize(
    ("metrics", "message"), [({"auc": float("nan")}, "finite"), ({"auc": "high"}, "numbers")]
)
def test_metrics_must_be_numbers(registry: ModelRegistry, metrics: dict[str, object], message: str) -> None:
    model, X = _model()
    with pytest.raises(Invalid, match=message):
        registry.register("ctr", model, sample=X, metrics=metrics)  # type: ignore[arg-type]
    assert registry.models() == []


def test_a_failed_parity_gate_leaves_no_version(registry: ModelRegistry) -> None:
    class Drifting(GBDTClassifier):
        def predict_proba(self, X: object) -> np.ndarray:
            p = super().predict_proba(X)
            return np.column_stack([p[:, 0] - 0.01, p[:, 1] + 0.01])

    X, y = _table(0)
    with pytest.raises(ParityError):
        registry.register("ctr", Drifting(num_trees=5).fit(X, y), sample=X)
    assert registry.models() == []


def test_a_corrupted_graph_is_refused_on_load(registry: ModelRegistry) -> None:
    model, X = _model()
    mv = registry.register("ctr", model, sample=X)
    store = registry.artifacts
    assert isinstance(store, LocalArtifactStore)
    path = store.root / "sha256" / mv.artifact_digest[:2] / mv.artifact_digest[2:]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Corrupt, match="sha256 no longer matches"):
        registry.read_graph(mv)


@pytest.mark.parametrize("bad", [0, -1, 2**63, 2**70])
def test_out_of_range_versions_are_not_found(registry: ModelRegistry, bad: int) -> None:
    model, X = _model()
    registry.register("ctr", model, sample=X)
    with pytest.raises(NotFound, match="versions: 1"):
        registry.get("ctr", version=bad)


def test_a_version_must_be_a_whole_number(registry: ModelRegistry) -> None:
    model, X = _model()
    registry.register("ctr", model, sample=X)
    for bad in ("1", 1.0, True):
        with pytest.raises(Invalid, match="whole number"):
            registry.get("ctr", version=bad)  # type: ignore[arg-type]


def test_nothing_in_the_registry_is_ever_unpickled(registry: ModelRegistry) -> None:
    import ast
    from pathlib import Path

    import onnx

    import openlearner.registry
    import openlearner.storage.artifacts

    loaders = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
    for package in (openlearner.registry, openlearner.storage.artifacts):
        for source in Path(package.__path__[0]).glob("*.py"):
            tree = ast.parse(source.read_text())
            imported = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
            }
            assert not imported & loaders, f"{source.name} imports {imported & loaders}"
            assert "torch.load" not in source.read_text() and "np.load" not in source.read_text()
    model, X = _model()
    mv = registry.register("ctr", model, sample=X)
    graph = onnx.load_from_string(registry.read_graph(mv))  # what is stored is an ONNX graph, nothing else
    assert [o.name for o in graph.graph.output] == ["label", "probability"]


@pytest.mark.s3
def test_a_workspace_keeps_its_graphs_in_s3(tmp_path: Path, s3_endpoint: str) -> None:
    import uuid

    import boto3

    from openlearner import Settings, Workspace
    from openlearner.storage.artifacts.s3 import S3ArtifactStore

    bucket = f"ol-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    settings = Settings(
        home=tmp_path / "ws", artifact_uri=f"s3://{bucket}/models", s3_endpoint_url=s3_endpoint
    )
    with Workspace.init(settings=settings) as ws:
        assert isinstance(ws.artifacts, S3ArtifactStore)
        model, X = _model()
        mv = ws.registry.register("ctr", model, sample=X, alias="production")
        key = f"models/sha256/{mv.artifact_digest[:2]}/{mv.artifact_digest[2:]}"
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == ws.registry.read_graph(mv)
        assert not (tmp_path / "ws" / "artifacts").exists()
        client.put_object(Bucket=bucket, Key=key, Body=b"tampered")
        with pytest.raises(Corrupt, match="sha256 no longer matches"):
            ws.registry.read_graph(ws.registry.get("ctr", alias="production"))
        assert [p.versions for p in ws.registry.verify().corrupt] == [["ctr:1"]]
