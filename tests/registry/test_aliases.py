"""Aliases, promotion gates, rollback, atomic registration and concurrency, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pytest
import sqlalchemy as sa
from onnx import TensorProto, helper

from openlearner.errors import Conflict, Invalid, NotFound, ParityError
from openlearner.registry import ModelRegistry
from openlearner.storage import LocalArtifactStore, MetadataDB
from openlearner.storage.schema import alias_history, model_aliases, model_versions, models


class Linear:
    """``prediction = input · w`` over columns ``x0..x{n-1}``: a small real model with the export protocol."""

    def __init__(self, w: tuple[float, ...] = (0.5, -2.0), drift: float = 0.0) -> None:
        self.w = np.asarray(w, np.float32)
        self.drift = drift
        self.feature_names_ = [f"x{i}" for i in range(len(w))]

    def _onnx_graph(self, sample: Any = None) -> onnx.ModelProto:
        f32 = TensorProto.FLOAT
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["input", "w"], ["y2d"]),
                helper.make_node("Reshape", ["y2d", "flat"], ["prediction"]),
            ],
            "linear",
            [helper.make_tensor_value_info("input", f32, ["batch", len(self.w)])],
            [helper.make_tensor_value_info("prediction", f32, ["batch"])],
            [
                helper.make_tensor("w", f32, [len(self.w), 1], self.w.tolist()),
                helper.make_tensor("flat", TensorProto.INT64, [1], [-1]),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        model.ir_version = 8
        return model

    def _onnx_feeds(self, rows: pa.Table) -> dict[str, np.ndarray]:
        return {
            "input": np.column_stack([rows.column(c).to_numpy() for c in self.feature_names_]).astype(
                np.float32
            )
        }

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"prediction": feeds["input"].astype(np.float64) @ self.w.astype(np.float64) + self.drift}


def _rows(n: int = 32) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({f"x{i}": rng.normal(size=n) for i in range(3)})


def _history(
    registry: ModelRegistry, name: str = "m", alias: str = "production"
) -> list[tuple[int | None, int]]:
    return [(m.from_version, m.to_version) for m in registry.alias_history(name, alias)]


# -- promotion gates and rollback ----------------------------------------------------------


def test_promote_moves_compatible_versions_and_rollback_goes_back(registry: ModelRegistry) -> None:
    for w in ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0)):
        registry.register("m", Linear(w), sample=_rows())
    assert registry.promote("m", 1).to_version == 1
    assert registry.promote("m", 2, "production").from_version == 1
    registry.promote("m", 3)
    back = registry.rollback("m", "production")
    assert (back.from_version, back.to_version) == (3, 2)
    assert registry.get("m", alias="production").version == 2
    assert _history(registry) == [(None, 1), (1, 2), (2, 3), (3, 2)]
    registry.rollback("m", "production")  # undoes the rollback
    assert registry.get("m", alias="production").version == 3


def test_promoting_the_version_an_alias_holds_moves_nothing_and_rollback_still_goes_back(
    registry: ModelRegistry,
) -> None:
    for w in ((1.0, 2.0), (3.0, 4.0)):
        registry.register("m", Linear(w), sample=_rows())
    registry.promote("m", 1)
    registry.promote("m", 2)
    for again in (
        registry.promote("m", 2),
        registry.promote("m", 2, force=True),
        registry.set_alias("m", "production", 2),
    ):
        assert (again.from_version, again.to_version) == (2, 2)
    assert _history(registry) == [(None, 1), (1, 2)]  # no 2 → 2 entries
    back = registry.rollback("m", "production")
    assert (back.from_version, back.to_version) == (2, 1)


def test_rollback_skips_no_op_moves_recorded_by_earlier_versions(registry: ModelRegistry) -> None:
    from datetime import UTC, datetime

    from openlearner.registry.aliases import move

    for w in ((1.0, 2.0), (3.0, 4.0)):
        registry.register("m", Linear(w), sample=_rows())
    registry.promote("m", 1)
    registry.promote("m", 2)
    with registry.db.engine.begin() as con:  # what a forced re-promotion used to record
        move(con, "m", "production", 2, 2, "someone", datetime.now(UTC))
    back = registry.rollback("m", "production")
    assert (back.from_version, back.to_version) == (2, 1)


def test_promote_refuses_an_incompatible_signature_unless_forced(registry: ModelRegistry) -> None:
    registry.register("m", Linear((1.0, 2.0)), sample=_rows())
    registry.register("m", Linear((1.0, 2.0, 3.0)), sample=_rows())  # takes three columns
    registry.promote("m", 1)
    with pytest.raises(
        Conflict, match=r"input input FP32 \[-1, 3\] was input FP32 \[-1, 2\].*version 1 holds"
    ):
        registry.promote("m", 2)
    assert registry.get("m", alias="production").version == 1
    assert registry.promote("m", 2, force=True).to_version == 2
    registry.promote("m", 2, "staging")  # a new alias has nothing to be compatible with


@pytest.mark.parametrize("rollout", ["canary", "shadow"])
def test_a_canary_or_shadow_must_take_what_production_is_sent(registry: ModelRegistry, rollout: str) -> None:
    """They get production's requests, so their signature is checked against production's
    version, not against the version the rollout alias held before (or nothing)."""
    registry.register("m", Linear((1.0, 2.0)), sample=_rows())
    registry.register("m", Linear((1.0, 2.0, 3.0)), sample=_rows())  # takes three columns
    registry.register("m", Linear((2.0, 1.0)), sample=_rows())
    registry.promote("m", 1)
    with pytest.raises(
        Conflict,
        match=rf"input input FP32 \[-1, 3\] was input FP32 \[-1, 2\] \(version 1 holds production, "
        rf"whose requests the {rollout} gets\)",
    ):
        registry.promote("m", 2, rollout)
    with pytest.raises(NotFound):
        registry.get("m", alias=rollout)
    assert registry.promote("m", 2, rollout, force=True).to_version == 2
    assert registry.promote("m", 3, rollout).from_version == 2  # fits production, not what it held
    registry.promote("m", 2, "production", force=True)
    with pytest.raises(Conflict, match="version 2 holds production"):
        registry.promote("m", 1, rollout)


class Scored(Linear):
    """:class:`Linear` that also answers ``score`` (the same values): a new output clients may read."""

    def _onnx_graph(self, sample: Any = None) -> onnx.ModelProto:
        model = super()._onnx_graph(sample)
        model.graph.node.append(helper.make_node("Identity", ["prediction"], ["score"]))
        model.graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]))
        return model

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super()._parity_outputs(feeds)
        return {**out, "score": out["prediction"]}


def test_production_cannot_move_to_a_version_the_canary_in_place_cannot_serve(
    registry: ModelRegistry,
) -> None:
    registry.register("m", Linear((1.0, 2.0)), sample=_rows())
    registry.register("m", Scored((1.0, 2.0)), sample=_rows())  # adds an output
    registry.promote("m", 1)
    registry.promote("m", 1, "canary")
    registry.promote("m", 1, "shadow")
    with pytest.raises(
        Conflict, match=r"the canary \(version 1\) could not take its requests: it lacks output score"
    ):
        registry.promote("m", 2)
    assert registry.get("m", alias="production").version == 1
    registry.promote("m", 2, "canary")  # the canary moves first (a shadow's outputs never reach clients)
    assert registry.promote("m", 2).from_version == 1


def test_a_rollout_that_moves_while_production_is_checked_is_checked_again(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production is checked against the canary in place; the canary moves (ungated, as a
    concurrent promotion would) before production's move commits: the move is checked
    again against the canary now in place, and refused."""
    registry.register("m", Linear((1.0, 2.0)), sample=_rows())
    registry.register("m", Scored((1.0, 2.0)), sample=_rows())  # adds an output
    registry.promote("m", 1)
    registry.promote("m", 2, "canary")
    real = ModelRegistry._rollout_problems
    moved: list[bool] = []

    def then_the_canary_moves(self: ModelRegistry, target: Any, rollouts: dict[str, int | None]) -> list[str]:
        found = real(self, target, rollouts)
        if not moved:
            moved.append(True)
            registry.set_alias("m", "canary", 1)  # lacks version 2's output
        return found

    monkeypatch.setattr(ModelRegistry, "_rollout_problems", then_the_canary_moves)
    with pytest.raises(Conflict, match=r"the canary \(version 1\) could not take its requests"):
        registry.promote("m", 2)
    assert moved and registry.get("m", alias="production").version == 1


def test_promoting_the_version_production_holds_moves_nothing_whatever_the_rollouts(
    registry: ModelRegistry,
) -> None:
    registry.register("m", Linear((1.0, 2.0)), sample=_rows())
    registry.register("m", Linear((1.0, 2.0, 3.0)), sample=_rows())
    registry.promote("m", 1)
    registry.promote("m", 2, "canary", force=True)  # cannot take production's requests
    assert registry.promote("m", 1).to_version == 1  # a deploy script run again: nothing to refuse


def test_a_canary_without_production_has_no_clients_to_fit(registry: ModelRegistry) -> None:
    registry.register("m", Linear((1.0, 2.0)), sample=_rows())
    registry.register("m", Linear((1.0, 2.0, 3.0)), sample=_rows())
    registry.promote("m", 1, "canary")
    assert registry.promote("m", 2, "canary").to_version == 2


def test_promote_refuses_a_failed_parity_report_unless_forced(registry: ModelRegistry) -> None:
    with pytest.raises(ParityError):
        registry.register("m", Linear(drift=0.01), sample=_rows())
    mv = registry.register("m", Linear(drift=0.01), sample=_rows(), require_parity=False)
    assert mv.version == 1 and not mv.parity["passed"]
    with pytest.raises(Conflict, match="parity check failed"):
        registry.promote("m", 1)
    with pytest.raises(NotFound, match="no alias 'production'"):
        registry.get("m", alias="production")
    assert registry.promote("m", 1, force=True).to_version == 1


def test_an_archived_version_cannot_be_promoted_even_forced(registry: ModelRegistry) -> None:
    for _ in range(2):
        registry.register("m", Linear(), sample=_rows())
    registry.promote("m", 1)
    registry.promote("m", 2)
    with pytest.raises(Conflict, match="move them first"):
        registry.archive("m", 2)
    registry.archive("m", 1)
    for attempt in (
        lambda: registry.promote("m", 1, force=True),
        lambda: registry.rollback("m", "production"),
    ):
        with pytest.raises(Conflict, match="archived"):
            attempt()
    assert registry.get("m", alias="production").version == 2


def test_rollback_needs_somewhere_to_go(registry: ModelRegistry) -> None:
    registry.register("m", Linear(), sample=_rows())
    with pytest.raises(NotFound, match=r"no alias 'production' \(aliases: none\)"):
        registry.rollback("m", "production")
    registry.promote("m", 1, "staging")
    with pytest.raises(NotFound, match=r"aliases: staging"):
        registry.rollback("m", "production")
    with pytest.raises(Conflict, match="nothing to roll back to"):
        registry.rollback("m", "staging")
    with pytest.raises(NotFound, match="registered models: m"):
        registry.rollback("nope", "staging")
    with pytest.raises(NotFound, match=r"no alias 'canary' \(aliases: staging\)"):
        registry.alias_history("m", "canary")
    with pytest.raises(NotFound, match="versions: 1"):
        registry.promote("m", 5)
    with pytest.raises(Invalid, match="alias"):
        registry.promote("m", 1, "not an alias")


def test_register_can_set_an_alias_in_the_same_transaction(registry: ModelRegistry) -> None:
    first = registry.register("m", Linear(), sample=_rows(), alias="staging")
    assert first.aliases == ["staging"]
    registry.register("m", Linear(), sample=_rows(), alias="staging")
    assert _history(registry, alias="staging") == [(None, 1), (1, 2)]


# -- atomic registration under injected failures -------------------------------------------


def _fail_on(registry: ModelRegistry, table: str) -> Any:
    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()}"):
            raise RuntimeError(f"injected failure writing {table}")

    sa.event.listen(registry.db.engine, "before_cursor_execute", hook)
    return lambda: sa.event.remove(registry.db.engine, "before_cursor_execute", hook)


def _counts(registry: ModelRegistry) -> tuple[int, ...]:
    with registry.db.engine.connect() as con:
        return tuple(
            con.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (models, model_versions, model_aliases, alias_history)
        )


@pytest.mark.parametrize("table", ["model_versions", "alias_history"])
def test_a_failure_midway_leaves_no_half_version_and_no_orphan_alias(
    registry: ModelRegistry, table: str
) -> None:
    remove = _fail_on(registry, table)
    with pytest.raises(Exception, match="injected failure"):
        registry.register("m", Linear(), sample=_rows(), alias="production")
    remove()
    assert _counts(registry) == (0, 0, 0, 0)  # not even the model's row
    assert registry.models() == []
    registry.register("m", Linear(), sample=_rows(), alias="production")
    remove = _fail_on(registry, table)
    with pytest.raises(Exception, match="injected failure"):
        registry.register("m", Linear((9.0, 9.0)), sample=_rows(), alias="production")
    remove()
    assert _counts(registry) == (1, 1, 1, 1)
    assert registry.get("m", alias="production").version == 1
    assert registry.register("m", Linear(), sample=_rows()).version == 2  # nothing half-allocated


def test_a_failed_artifact_write_registers_nothing(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(data: Any) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(registry.artifacts, "put", full)
    with pytest.raises(OSError, match="disk full"):
        registry.register("m", Linear(), sample=_rows(), alias="production")
    assert _counts(registry) == (0, 0, 0, 0)


def test_a_failed_alias_move_changes_nothing(registry: ModelRegistry) -> None:
    for _ in range(2):
        registry.register("m", Linear(), sample=_rows())
    registry.promote("m", 1)
    remove = _fail_on(registry, "alias_history")
    with pytest.raises(Exception, match="injected failure"):
        registry.promote("m", 2)
    remove()
    assert registry.get("m", alias="production").version == 1
    assert _history(registry) == [(None, 1)]


# -- concurrency across processes ----------------------------------------------------------


def _open(url: str, artifacts: str) -> ModelRegistry:
    return ModelRegistry(MetadataDB(url), LocalArtifactStore(Path(artifacts)))


def _worker(url: str, artifacts: str, count: int, plan: list[int], barrier: Any, out: Any) -> None:
    """Register ``count`` versions, wait for every worker, then move the alias along ``plan``."""
    registry = ModelRegistry(MetadataDB(url), LocalArtifactStore(Path(artifacts)))
    model, rows = Linear(), _rows()
    barrier.wait()
    numbers = [registry.register("shared", model, sample=rows).version for _ in range(count)]
    barrier.wait()  # every version exists now
    moves = [registry.set_alias("shared", "production", v) for v in plan]
    out.put((numbers, [(m.from_version, m.to_version) for m in moves]))


def test_concurrent_registration_and_alias_moves_from_several_processes(
    registry: ModelRegistry, database_url: str, tmp_path: Path
) -> None:
    plans = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [12, 6, 1, 7, 3, 9]]
    # Fresh processes forked from a server that imported the registry once (spawn would import it per process).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["openlearner.registry.store", "openlearner.features.store", "onnxruntime", "psycopg"]
    )
    barrier, out = context.Barrier(len(plans)), context.Queue()
    processes = [
        context.Process(
            target=_worker, args=(database_url, str(tmp_path / "artifacts"), 4, plan, barrier, out)
        )
        for plan in plans
    ]
    for p in processes:
        p.start()
    results = [out.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == 0

    numbers = sorted(n for batch, _ in results for n in batch)
    assert numbers == list(range(1, 13))  # distinct, no gaps
    assert [v.version for v in registry.versions("shared")] == numbers
    history = registry.alias_history("shared", "production")
    # Every move recorded; a call that found the alias on its version already moved nothing.
    moves = [move for _, batch in results for move in batch]
    assert len(moves) == 18
    changed = [to for before, to in moves if before != to]
    assert sorted(m.to_version for m in history) == sorted(changed)
    assert all(m.from_version != m.to_version for m in history)
    assert history[0].from_version is None
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version  # each move left where the last one went
    assert registry.get("shared", alias="production").version == history[-1].to_version  # last writer wins


def test_the_move_itself_refuses_an_archived_version(registry: ModelRegistry) -> None:
    """The check inside the move's transaction, which a concurrent archive cannot slip past."""
    from openlearner.registry.aliases import set_alias

    for _ in range(2):
        registry.register("m", Linear(), sample=_rows())
    registry.promote("m", 2)
    registry.archive("m", 1)
    with pytest.raises(Conflict, match="version 1 is archived"):
        set_alias(registry.db.engine, "m", "production", 1, "someone")
    assert registry.get("m", alias="production").version == 2
    assert _history(registry) == [(None, 2)]
