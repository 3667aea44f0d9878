"""Caching: a result is reused only when operator code, parameters and input digests all match."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pyarrow as pa

from openlearner import Workspace
from openlearner.flow import Dataset, operator, workflow
from openlearner.flow.operator import load_file_module


@operator
def source(n: int) -> Dataset:
    return pa.table({"x": list(range(n))})


@operator
def double(data: Dataset) -> Dataset:
    return pa.table({"x": [2 * v for v in data.table.column("x").to_pylist()]})


@operator
def summed(data: Dataset, offset: int = 0) -> int:
    return sum(data.table.column("x").to_pylist()) + offset


@operator(cache=False)
def fresh(value: int) -> int:
    return value


@workflow
def chain(n: int = 3, offset: int = 0) -> dict:
    doubled = double(source(n))
    return {"sum": summed(doubled, offset=offset), "fresh": fresh(n)}


def hits(workspace: Workspace, run_id: str) -> dict[str, bool]:
    return {o.node: o.cache_hit for o in workspace.flow.operators(run_id)}


def test_a_rerun_reuses_everything_but_uncached_operators(workspace: Workspace) -> None:
    first = workspace.flow.run(chain, executor="thread")
    second = workspace.flow.run(chain, executor="thread")
    assert first.outputs == second.outputs == {"sum": 6, "fresh": 3}
    assert not any(hits(workspace, first.id).values())
    assert hits(workspace, second.id) == {"source": True, "double": True, "summed": True, "fresh": False}


def test_a_parameter_change_reruns_only_what_it_reaches(workspace: Workspace) -> None:
    workspace.flow.run(chain, executor="thread")
    run = workspace.flow.run(chain, params={"offset": 10}, executor="thread")
    assert run.outputs["sum"] == 16
    assert hits(workspace, run.id) == {"source": True, "double": True, "summed": False, "fresh": False}


def test_an_input_change_reruns_everything_downstream(workspace: Workspace) -> None:
    workspace.flow.run(chain, executor="thread")
    run = workspace.flow.run(chain, params={"n": 4}, executor="thread")
    assert run.outputs["sum"] == 12
    assert not any(hits(workspace, run.id).values())


def test_no_cache_runs_everything(workspace: Workspace) -> None:
    workspace.flow.run(chain, executor="thread")
    run = workspace.flow.run(chain, executor="thread", cache=False)
    assert not any(hits(workspace, run.id).values())
    again = workspace.flow.run(chain, executor="thread")
    assert hits(workspace, again.id)["summed"] is True


def test_a_missing_artifact_is_recomputed_not_trusted(workspace: Workspace) -> None:
    first = workspace.flow.run(chain, executor="thread")
    digest = next(o.outputs for o in workspace.flow.operators(first.id) if o.node == "double")[0]["digest"]
    path = Path(workspace.settings.resolved_artifact_uri) / "sha256" / digest[:2] / digest[2:]
    path.unlink()
    run = workspace.flow.run(chain, executor="thread")
    assert hits(workspace, run.id)["double"] is False and run.outputs["sum"] == 6


STEP = """
from openlearner.flow import operator, workflow

@operator
def step(x: int) -> int:
    return x + {delta}

@workflow
def wf(x: int = 1) -> int:
    return step(x)
"""


def module(tmp_path: Path, name: str, delta: int) -> ModuleType:
    path = tmp_path / f"{name}.py"
    path.write_text(STEP.format(delta=delta))
    return load_file_module(name, path)


def test_a_code_change_is_a_cache_miss_and_the_same_code_a_hit(workspace: Workspace, tmp_path: Path) -> None:
    v1, v2, v1_again = (module(tmp_path, f"flow_cache_{i}", d) for i, d in enumerate((1, 2, 1)))
    first = workspace.flow.run(v1.wf, executor="thread")
    changed = workspace.flow.run(v2.wf, executor="thread")
    same = workspace.flow.run(v1_again.wf, executor="thread")
    assert (first.outputs, changed.outputs, same.outputs) == (2, 3, 2)
    assert hits(workspace, changed.id) == {"step": False}
    assert hits(workspace, same.id) == {"step": True}
