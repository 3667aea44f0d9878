"""Tracking on SQLite and PostgreSQL: runs, operator executions, metrics, lineage, comparisons and sweeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from openlearner import Settings, Workspace
from openlearner.errors import Invalid, NotFound
from openlearner.flow import Dataset, log_metric, operator, workflow


@operator
def rows(n: int) -> Dataset:
    return pa.table({"x": list(range(n))})


@operator
def fit_line(data: Dataset, slope: float) -> dict:
    xs = data.table.column("x").to_pylist()
    loss = sum((slope * x - 2 * x) ** 2 for x in xs) / len(xs)
    for epoch in range(2):
        log_metric("loss", loss * (2 - epoch), step=epoch)
    return {"loss": loss, "slope": slope}


@workflow
def line(n: int = 5, slope: float = 1.0) -> dict:
    data = rows(n)
    return {"data": data, "metrics": fit_line(data, slope)}


@pytest.fixture
def ws(database_url: str, tmp_path: Path) -> Iterator[Workspace]:
    """A workspace whose metadata lives in SQLite, then in PostgreSQL."""
    workspace = Workspace.init(settings=Settings(home=tmp_path / "ws", database_url=database_url))
    yield workspace
    workspace.close()


def test_a_run_records_everything(ws: Workspace) -> None:
    run = ws.flow.run(line, params={"n": 4}, executor="thread", tags={"team": "ads"})
    assert run.status == "succeeded" and run.id
    stored = ws.flow.get(run.id)
    assert stored.workflow == "line" and stored.params == {"n": 4, "slope": 1.0}
    assert stored.tags == {"team": "ads"} and stored.executor == "thread"
    assert stored.target == line.target
    assert stored.git_commit is None or len(stored.git_commit) == 40
    assert (
        stored.started_at is not None and stored.ended_at is not None and stored.ended_at >= stored.started_at
    )
    assert stored.metrics == {"loss": 3.5, "slope": 1.0}  # last logged values, then the metrics output
    assert ws.flow.metric_history(run.id, "loss") == [
        ("loss", "fit_line", 0, 7.0),
        ("loss", "fit_line", 1, 3.5),
    ]
    ops = ws.flow.operators(run.id)
    assert [o.node for o in ops] == ["rows", "fit_line"]
    assert all(o.ended_at is not None and o.started_at is not None for o in ops)
    assert ws.flow.runs(workflow="line")[0].id == run.id
    assert ws.flow.runs(workflow="other") == []


def test_lineage_links_each_value_to_its_operator_and_inputs(ws: Workspace) -> None:
    run = ws.flow.run(line, executor="thread")
    data = run.outputs["data"]
    assert isinstance(data, Dataset) and data.num_rows == 5
    (made,) = ws.flow.lineage(data.digest or "")
    assert (made.run_id, made.node, made.operator, made.kind, made.inputs) == (
        run.id,
        "rows",
        "rows",
        "dataset",
        [],
    )
    metrics = {a.node: a for a in ws.flow.artifacts_of(run.id)}["fit_line"]
    assert metrics.inputs == [data.digest] and metrics.kind == "json"
    assert ws.flow.lineage("0" * 64) == []


def test_compare_lines_runs_up(ws: Workspace) -> None:
    a = ws.flow.run(line, params={"slope": 1.0}, executor="thread")
    b = ws.flow.run(line, params={"slope": 2.0}, executor="thread")
    table = ws.flow.compare([a.id, b.id])
    assert table.params == {"n": [5, 5], "slope": [1.0, 2.0]}
    assert table.metrics["loss"] == [6.0, 0.0]
    assert table.differing == ["slope"]
    assert "*slope" in table.render()
    with pytest.raises(NotFound):
        ws.flow.compare([a.id, "missing"])


def test_a_sweep_ranks_variants_by_a_metric(ws: Workspace) -> None:
    result = ws.flow.sweep(
        line, grid={"slope": [1.0, 2.0, 3.5]}, metric="loss", mode="min", executor="thread"
    )
    assert [e.params["slope"] for e in result.entries] == [2.0, 1.0, 3.5]
    assert result.best.value == 0.0 and result.best.run.status == "succeeded"
    assert {r.tags.get("sweep") for r in ws.flow.runs("line")} == {result.id}
    best_first = ws.flow.sweep(line, grid={"slope": [1.0, 2.0]}, metric="loss", mode="max", executor="thread")
    assert best_first.best.params == {"slope": 1.0}
    with pytest.raises(Invalid, match="no parameter 'nope'"):
        ws.flow.sweep(line, grid={"nope": [1]}, metric="loss")
    with pytest.raises(Invalid, match="mode"):
        ws.flow.sweep(line, grid={"slope": [1.0]}, metric="loss", mode="best")


def test_random_search_samples_the_grid() -> None:
    from openlearner.flow.sweep import grid_variants

    everything = grid_variants({"a": [1, 2, 3], "b": ["x", "y"]})
    assert len(everything) == 6 and everything[0] == {"a": 1, "b": "x"}
    picked = grid_variants({"a": [1, 2, 3], "b": ["x", "y"]}, samples=4, seed=1)
    assert (
        len(picked) == 4
        and all(p in everything for p in picked)
        and len({json.dumps(p) for p in picked}) == 4
    )
    with pytest.raises(Invalid, match="non-empty list"):
        grid_variants({"a": []})
    with pytest.raises(Invalid, match="samples=N"):
        grid_variants({"a": list(range(100)), "b": list(range(100))})


def test_finished_operators_are_written_while_others_run(ws: Workspace) -> None:
    from openlearner.flow.runs import RunRecorder
    from openlearner.flow.values import save_value

    run = ws.flow.start("w")
    recorder = RunRecorder(ws.flow.db, run.id)

    def stored() -> dict[str, str]:
        return {o.node: o.status for o in ws.flow.operators(run.id)}

    recorder.node("a", operator="op", status="running")
    recorder.node("b", operator="op", status="running")
    recorder.node("b", status="succeeded")
    recorder.artifacts("b", [save_value(1, ws.flow.artifacts)], [])
    assert recorder.settled == 1
    recorder.flush_settled()  # b alone: a is still running
    assert stored() == {"b": "succeeded"} and recorder.settled == 0
    assert [e.node for e in ws.flow.lineage(save_value(1, ws.flow.artifacts)["digest"])] == ["b"]
    recorder.flush()  # everything else: a, running
    assert stored() == {"a": "running", "b": "succeeded"}
    recorder.node("a", status="retrying")  # not settled: it runs again
    assert recorder.settled == 0
    recorder.node("a", status="failed", error="boom")
    recorder.flush_settled()  # a was written before: updated, not inserted twice
    assert stored() == {"a": "failed", "b": "succeeded"}
    recorder.flush()  # nothing left: writes only the heartbeat
    assert stored() == {"a": "failed", "b": "succeeded"}


def test_a_failed_write_loses_no_record(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from openlearner.flow.runs import RunRecorder
    from openlearner.flow.values import save_value

    run = ws.flow.start("w")
    recorder = RunRecorder(ws.flow.db, run.id)
    ref = save_value(2, ws.flow.artifacts)
    recorder.node("a", operator="op", status="succeeded", outputs=[ref])
    recorder.artifacts("a", [ref], [])
    recorder.metrics("a", [("loss", 0.5, 1, 0.0)])
    original = RunRecorder._write

    def broken(self: RunRecorder, *args: object) -> None:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(RunRecorder, "_write", broken)
    with pytest.raises(ConnectionError):
        recorder.flush_settled()
    recorder.node("b", operator="op", status="running")
    with pytest.raises(ConnectionError):
        recorder.flush()
    assert ws.flow.operators(run.id) == []
    monkeypatch.setattr(RunRecorder, "_write", original)
    assert recorder.settled == 1
    recorder.flush()  # everything buffered is written once the database is back
    assert {o.node: o.status for o in ws.flow.operators(run.id)} == {"a": "succeeded", "b": "running"}
    assert [e.node for e in ws.flow.lineage(ref["digest"])] == ["a"]
    assert ws.flow.metric_history(run.id, "loss") == [("loss", "a", 1, 0.5)]


@pytest.mark.parametrize("database_fails", [False, True])
def test_finished_operators_are_written_during_the_run_and_a_failed_write_does_not_fail_it(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, database_fails: bool
) -> None:
    from openlearner.flow import engine
    from openlearner.flow.runs import RunRecorder

    monkeypatch.setattr(engine, "WRITE_SETTLED", 1)  # write as soon as one operator finished
    calls: list[list[str]] = []
    original = RunRecorder.flush_settled

    def spy(self: RunRecorder) -> None:
        calls.append(sorted(self._settled))
        if database_fails:
            raise ConnectionError("the database went away")
        original(self)

    monkeypatch.setattr(RunRecorder, "flush_settled", spy)
    run = ws.flow.run(line, {"n": 4}, executor="thread")
    assert run.status == "succeeded", run.error
    assert calls and calls[0] == ["rows"]  # rows was written while fit_line ran
    assert len(calls) == (1 if database_fails else 2)  # after a failure, only the run's end writes
    nodes = {o.node: o for o in ws.flow.operators(run.id)}
    assert {n: o.status for n, o in nodes.items()} == {"rows": "succeeded", "fit_line": "succeeded"}
    assert ws.flow.metric_history(run.id, "loss") and ws.flow.artifacts_of(run.id)


@pytest.mark.parametrize("after_commit", [False, True])
def test_an_interrupted_write_neither_loses_nor_repeats_rows(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, after_commit: bool
) -> None:
    from openlearner.flow.runs import RunRecorder

    run = ws.flow.start("w")
    recorder = RunRecorder(ws.flow.db, run.id)
    recorder.node("a", operator="op", status="succeeded")
    original = RunRecorder._write

    def interrupted(self: RunRecorder, *args: object) -> None:
        if after_commit:
            original(self, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunRecorder, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recorder.flush_settled()
    monkeypatch.setattr(RunRecorder, "_write", original)
    # Before the commit: still buffered. After it: written, and not inserted a second time.
    assert recorder.settled == (0 if after_commit else 1)
    recorder.node("a", status="succeeded", error=None)  # a later change updates the row
    recorder.flush()
    assert {o.node: o.status for o in ws.flow.operators(run.id)} == {"a": "succeeded"}
