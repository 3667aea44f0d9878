"""Disaster-recovery groundwork: replicate to a second store (idempotently) and verify every graph."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from openlearner.errors import Invalid
from openlearner.registry import ModelRegistry
from openlearner.registry.replication import open_replica, replica_location
from openlearner.storage import LocalArtifactStore, MetadataDB


class Scaled:
    """``prediction = input · w`` over ``x0, x1``, with a tokenizer-like piece of serving metadata."""

    feature_names_ = ("x0", "x1")

    def __init__(self, w: tuple[float, float]) -> None:
        self.w = np.asarray(w, np.float32)

    def _serving_metadata(self) -> dict[str, Any]:
        return {"weights": self.w.tolist()}

    def _onnx_graph(self, sample: Any = None) -> onnx.ModelProto:
        f32 = TensorProto.FLOAT
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["input", "w"], ["y2d"]),
                helper.make_node("Reshape", ["y2d", "flat"], ["prediction"]),
            ],
            "scaled",
            [helper.make_tensor_value_info("input", f32, ["batch", 2])],
            [helper.make_tensor_value_info("prediction", f32, ["batch"])],
            [
                helper.make_tensor("w", f32, [2, 1], self.w.tolist()),
                helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        model.ir_version = 8
        return model

    def _onnx_feeds(self, rows: pa.Table) -> dict[str, np.ndarray]:
        return {
            "input": np.column_stack([rows.column("x0").to_numpy(), rows.column("x1").to_numpy()]).astype(
                "f4"
            )
        }

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"prediction": feeds["input"].astype(np.float64) @ self.w.astype(np.float64)}


ROWS = pa.table({"x0": np.linspace(-1, 1, 16), "x1": np.linspace(2, 0, 16)})


@pytest.fixture
def source(tmp_path: Path) -> ModelRegistry:
    """A populated registry: two models, three versions, aliases with history, one archived version."""
    db = MetadataDB(f"sqlite:///{tmp_path / 'source' / 'meta.db'}")
    db.migrate()
    registry = ModelRegistry(db, LocalArtifactStore(tmp_path / "source" / "artifacts"))
    for w in ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0)):
        registry.register("ctr", Scaled(w), sample=ROWS, tags={"w": str(w)})
    registry.register("churn", Scaled((0.5, 0.5)), sample=ROWS, alias="staging")
    registry.promote("ctr", 1)
    registry.promote("ctr", 2)
    registry.archive("ctr", 1)
    return registry


def _state(registry: ModelRegistry) -> list[tuple[Any, ...]]:
    rows = []
    for name in registry.models():
        for v in registry.versions(name):
            rows.append(
                (
                    name,
                    v.version,
                    v.artifact_digest,
                    v.status,
                    tuple(v.aliases),
                    v.serving_metadata,
                    v.signature,
                    v.tags,
                    v.parity["passed"],
                )
            )
            rows.extend(
                (
                    name,
                    a,
                    [(m.from_version, m.to_version, m.moved_by) for m in registry.alias_history(name, a)],
                )
                for a in v.aliases
            )
    return rows


def test_replicate_copies_everything_and_a_rerun_copies_nothing(
    source: ModelRegistry, tmp_path: Path
) -> None:
    replica_dir = str(tmp_path / "replica")
    first = source.replicate(replica_dir)
    assert first.ok and (first.versions_copied, first.artifacts_copied) == (4, 4)
    assert first.alias_moves_copied == 3
    replica = open_replica(replica_dir)
    assert _state(replica) == _state(source)
    assert replica.read_graph(replica.get("ctr", alias="production")) == source.read_graph(
        source.get("ctr", version=2)
    )

    again = source.replicate(replica_dir)
    assert (again.versions_copied, again.artifacts_copied, again.alias_moves_copied, again.rows_copied) == (
        0,
        0,
        0,
        0,
    )

    source.register("ctr", Scaled((7.0, 8.0)), sample=ROWS)
    source.promote("ctr", 4)
    source.archive("ctr", 3)
    delta = source.replicate(replica)
    assert (delta.versions_copied, delta.artifacts_copied, delta.alias_moves_copied) == (1, 1, 1)
    assert _state(replica) == _state(source)
    assert replica.verify().ok and replica.verify().checked == 5


def test_verify_reports_missing_and_corrupt_graphs_and_repairs_them_from_a_replica(
    source: ModelRegistry, tmp_path: Path
) -> None:
    assert source.verify().ok and source.verify().checked == 4
    source.replicate(str(tmp_path / "replica"))
    store = source.artifacts
    assert isinstance(store, LocalArtifactStore)
    gone, bad = source.get("ctr", version=2).artifact_digest, source.get("churn", version=1).artifact_digest
    (store.root / "sha256" / gone[:2] / gone[2:]).unlink()
    (store.root / "sha256" / bad[:2] / bad[2:]).write_bytes(b"not a graph any more")

    report = source.verify()
    assert not report.ok and report.checked == 4
    assert [(p.digest, p.versions) for p in report.missing] == [(gone, ["ctr:2"])]
    assert [(p.digest, p.versions) for p in report.corrupt] == [(bad, ["churn:1"])]
    assert "sha256 no longer matches" in report.corrupt[0].problem

    repaired = source.verify(repair_from=str(tmp_path / "replica"))
    assert repaired.ok and sorted(p.digest for p in repaired.repaired) == sorted([gone, bad])
    assert source.verify().ok
    assert source.read_graph(source.get("churn", alias="staging"))


def test_replicate_skips_what_it_cannot_read_and_copies_the_rest(
    source: ModelRegistry, tmp_path: Path
) -> None:
    store = source.artifacts
    assert isinstance(store, LocalArtifactStore)
    bad = source.get("churn", version=1).artifact_digest
    (store.root / "sha256" / bad[:2] / bad[2:]).write_bytes(b"junk")
    report = source.replicate(str(tmp_path / "replica"))
    assert not report.ok
    assert any("churn:1 not copied" in p and "corrupt" in p for p in report.problems)
    assert any("alias staging of churn not moved" in p for p in report.problems)
    replica = open_replica(str(tmp_path / "replica"))
    assert [v.version for v in replica.versions("ctr")] == [1, 2, 3]
    assert replica.get("ctr", alias="production").version == 2
    assert replica.verify().ok  # nothing corrupt reached the replica


def test_a_replica_that_went_its_own_way_is_not_overwritten(source: ModelRegistry, tmp_path: Path) -> None:
    source.replicate(str(tmp_path / "replica"))
    replica = open_replica(str(tmp_path / "replica"))
    replica.promote("ctr", 3)  # the replica is ahead on this alias: kept
    replica.register("other", Scaled((1.0, 1.0)), sample=ROWS)
    source.register("other", Scaled((9.0, 9.0)), sample=ROWS)  # same name and number, another graph
    report = source.replicate(replica)
    assert report.problems == ["other:1 differs on the replica (another graph); left as it is"]
    assert replica.get("ctr", alias="production").version == 3
    assert replica.get("other", version=1).serving_metadata == {"weights": [1.0, 1.0]}
    source.promote("ctr", 3)
    source.promote("ctr", 2)  # now both moved differently since they parted
    diverged = source.replicate(replica)
    assert any("alias production of ctr has a different history" in p for p in diverged.problems)


def test_replicate_names_its_target_clearly(source: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="onto itself"):
        source.replicate(source)
    with pytest.raises(Invalid, match="not a folder"):
        source.replicate("postgresql://elsewhere/db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(Invalid, match="is a file"):
        source.replicate(str(tmp_path / "file"))
    with pytest.raises(Invalid, match="both a database URL and an artifact URI"):
        replica_location(None, "sqlite:///x.db", None)
    assert replica_location(str(tmp_path / "r")) == (
        f"sqlite:///{tmp_path / 'r' / 'meta.db'}",
        str(tmp_path / "r" / "artifacts"),
    )


@pytest.mark.postgres
@pytest.mark.s3
def test_replicate_to_postgresql_and_s3_then_verify_there(
    source: ModelRegistry, postgres_url: str, s3_endpoint: str
) -> None:
    import boto3

    bucket = f"ol-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/replica?endpoint_url={s3_endpoint}"
    replica = open_replica(None, postgres_url, uri)
    assert source.replicate(replica).ok
    assert _state(replica) == _state(source)
    assert source.replicate(replica).artifacts_copied == 0
    digest = replica.get("ctr", alias="production").artifact_digest
    client.delete_object(Bucket=bucket, Key=f"replica/sha256/{digest[:2]}/{digest[2:]}")
    report = replica.verify()
    assert [p.versions for p in report.missing] == [["ctr:2"]]
    assert source.replicate(replica).artifacts_copied == 1  # the next run puts it back
    assert replica.verify().ok
    replica.db.dispose()


def test_runs_and_the_values_they_stored_travel_with_the_registry(
    source: ModelRegistry, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from openlearner.storage.schema import operator_runs, run_artifacts, runs

    now = datetime.now(UTC)
    value = source.artifacts.put(b"a training set, as a run stored it")
    with source.db.engine.begin() as con:
        con.execute(
            sa.insert(runs).values(
                id="r1", workflow="ctr", status="completed", params={}, metrics={}, started_at=now
            )
        )
        con.execute(
            sa.insert(operator_runs).values(
                run_id="r1",
                node="train",
                operator="train",
                status="completed",
                attempts=1,
                cache_hit=False,
                resources={},
                inputs={},
            )
        )
        con.execute(
            sa.insert(run_artifacts).values(
                run_id="r1", node="train", output=0, digest=value, kind="bytes", inputs={}, created_at=now
            )
        )
    first = source.replicate(str(tmp_path / "replica"))
    assert first.ok and first.artifacts_copied == 5 and first.rows_copied == 3
    replica = open_replica(str(tmp_path / "replica"))
    assert replica.artifacts.get(value) == b"a training set, as a run stored it"
    with replica.db.engine.connect() as con:
        assert con.execute(sa.select(run_artifacts.c.digest)).scalars().all() == [value]
        assert con.execute(sa.select(operator_runs.c.node)).scalars().all() == ["train"]
    assert source.replicate(replica).rows_copied == 0

    store = source.artifacts
    assert isinstance(store, LocalArtifactStore)
    (store.root / "sha256" / value[:2] / value[2:]).unlink()
    report = source.verify()
    assert report.checked == 5 and [p.versions for p in report.missing] == [["run r1 train[0]"]]
    assert source.verify(repair_from=replica).ok
