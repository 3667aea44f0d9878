"""The executor conformance suite: every test runs on LocalExecutor (processes) and RayExecutor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from openlearner import Workspace
from openlearner.errors import Invalid
from openlearner.flow import Dataset, Executor, ModelArtifact, Resources, log_metric, operator, workflow


@operator
def make_rows(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pa.table(
        {"x": x, "z": rng.normal(size=n), "y": (x + rng.normal(scale=0.5, size=n) > 0).astype("int64")}
    )


@operator
def halves(data: Dataset) -> tuple[Dataset, Dataset]:
    cut = data.num_rows // 2
    return Dataset(data.table.slice(0, cut)), Dataset(data.table.slice(cut))


@operator(resources=Resources(cpu=1))
def fit(train: Dataset, num_trees: int = 5) -> ModelArtifact:
    from openlearner.models.gbdt import GBDTClassifier

    model = GBDTClassifier(num_trees=num_trees, num_leaves=4, min_child_samples=5, num_threads=1)
    model.fit(train.table.select(["x", "z"]), train.table.column("y"))
    for step in range(3):
        log_metric("progress", step / 2, step=step)
    return ModelArtifact(model)


@operator
def accuracy(model: ModelArtifact, test: Dataset) -> dict:
    predicted = model.model.predict(test.table.select(["x", "z"]))
    score = float(np.mean(predicted == test.table.column("y").to_numpy()))
    log_metric("accuracy", score)
    return {"accuracy": score, "rows": test.num_rows}


@workflow
def train_eval(n: int = 400, num_trees: int = 5) -> dict:
    train, test = halves(make_rows(n))
    model = fit(train, num_trees=num_trees)
    return {"model": model, "metrics": accuracy(model, test), "test": test}


@operator(resources=Resources(cpu=1), cache=False)
def meet(folder: str, me: str, other: str) -> bool:
    """Announce this operator has started, then wait for the other one: both must run at once."""
    Path(folder, me).touch()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Path(folder, other).exists():
            return True
        time.sleep(0.01)
    return False


@workflow
def rendezvous(folder: str) -> dict:
    return {"a": meet(folder, "a", "b"), "b": meet(folder, "b", "a")}


@operator
def explode(x: int) -> int:
    raise ValueError(f"bad input {x}")


@operator
def add_one(x: int) -> int:
    return x + 1


@workflow
def half_broken(x: int = 1) -> dict:
    return {"broken": add_one(explode(x)), "fine": add_one(add_one(x))}


@operator(resources=Resources(cpu=64))
def greedy(x: int) -> int:
    return x


@workflow
def too_big() -> int:
    return greedy(1)


def test_same_outputs_and_tracking(workspace: Workspace, executor: Executor) -> None:
    run = workspace.flow.run(train_eval, params={"n": 400}, executor=executor, cache=False)
    assert run.status == "succeeded", run.error
    assert run.outputs["metrics"]["rows"] == 200
    assert run.outputs["metrics"]["accuracy"] > 0.6
    assert isinstance(run.outputs["model"], ModelArtifact)
    probabilities = run.outputs["model"].model.predict_proba(run.outputs["test"].table.select(["x", "z"]))
    assert probabilities.shape == (200, 2)
    assert run.metrics["accuracy"] == run.outputs["metrics"]["accuracy"]
    steps = [(s, v) for _, node, s, v in workspace.flow.metric_history(run.id, "progress") if node == "fit"]
    assert steps == [(0, 0.0), (1, 0.5), (2, 1.0)]
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert set(nodes) == {"make_rows", "halves", "fit", "accuracy"}
    assert all(o.status == "succeeded" and o.attempts == 1 and not o.cache_hit for o in nodes.values())
    assert nodes["fit"].resources == {"cpu": 1, "gpu": 0, "memory": None}
    assert run.executor == executor.name


def test_independent_operators_run_at_the_same_time(
    workspace: Workspace, executor: Executor, tmp_path: Path
) -> None:
    run = workspace.flow.run(rendezvous, params={"folder": str(tmp_path)}, executor=executor)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"a": True, "b": True}


def test_a_failure_keeps_its_traceback_while_other_branches_finish(
    workspace: Workspace, executor: Executor
) -> None:
    run = workspace.flow.run(half_broken, executor=executor)
    assert run.status == "failed"
    assert "operator explode failed: ValueError: bad input 1" in (run.error or "")
    nodes = {o.node: o for o in workspace.flow.operators(run.id)}
    assert nodes["explode"].status == "failed"
    assert "Traceback" in (nodes["explode"].error or "") and "bad input 1" in (nodes["explode"].error or "")
    assert nodes["add_one"].status == "skipped"
    assert nodes["add_one#2"].status == nodes["add_one#3"].status == "succeeded"
    assert run.outputs == {"broken": None, "fine": 3}


def test_resources_no_worker_has_are_refused_before_running(workspace: Workspace, executor: Executor) -> None:
    with pytest.raises(Invalid, match="64 CPUs"):
        workspace.flow.run(too_big, executor=executor)
    assert workspace.flow.runs("too_big") == []


def _workflow_of_local_operators() -> Any:
    @operator
    def double(x: int) -> int:
        return 2 * x

    @workflow
    def doubled(x: int = 2) -> dict:
        return {"y": double(x)}

    return doubled


def test_an_operator_defined_in_a_function_is_refused_before_running(
    workspace: Workspace, executor: Executor
) -> None:
    """Worker processes find operators by name: one defined in a function cannot be found."""
    with pytest.raises(Invalid, match=r"double is defined inside a function.*top level of a module"):
        workspace.flow.run(_workflow_of_local_operators(), executor=executor)
    assert workspace.flow.runs("doubled") == []
    run = workspace.flow.run(_workflow_of_local_operators(), executor="thread")  # no names needed
    assert run.status == "succeeded" and run.outputs["y"] == 4
