"""Tracing workflows into DAGs: nodes, fan-out, type checks and the errors that name a source line."""

from __future__ import annotations

import pyarrow as pa
import pytest

from openlearner import Workspace
from openlearner.errors import Invalid, NotFound
from openlearner.flow import Dataset, load_workflow, operator, workflow

THIS = __file__


def line_of(text: str) -> int:
    """The line number of the first source line of this file that contains ``text``."""
    with open(THIS) as handle:
        for number, line in enumerate(handle, 1):
            if text in line and "line_of" not in line:
                return number
    raise AssertionError(text)


@operator
def load(n: int) -> Dataset:
    return pa.table({"x": list(range(n))})


@operator
def scale(data: Dataset, factor: float = 1.0) -> Dataset:
    return pa.table({"x": [v * factor for v in data.table.column("x").to_pylist()]})


@operator
def count(data: Dataset) -> int:
    return data.num_rows


@operator
def total(values: list) -> float:
    return float(sum(values))


@operator
def lies(n: int) -> int:
    return "not a number"  # type: ignore[return-value]


@operator
def pair(n: int) -> tuple[int, int]:
    return n, n + 1


@workflow
def fan_out(factors: list = [1.0, 2.0, 3.0]) -> dict:  # noqa: B006 - a JSON default
    data = load(4)
    counts = [count(scale(data, factor=f)) for f in factors]
    return {"total": total(counts), "first": counts[0]}


@workflow
def wrong_type() -> int:
    return count(count(load(3)))  # count takes a Dataset, gets an int


@workflow
def branches(n: int = 3) -> int:
    rows = count(load(n))
    if rows:  # a future has no value while tracing
        return rows
    return count(load(1))


@workflow
def lying(n: int = 1) -> int:
    return lies(n)


@workflow
def unknown_argument() -> int:
    return count(load(2), bogus=1)


@operator
def echo(x):  # type: ignore[no-untyped-def]
    return x


@workflow
def object_constant() -> int:
    return echo(object())


LEAKED: list = []


@workflow
def leaks(n: int = 1) -> int:
    LEAKED.append(count(load(n)))
    return count(load(n))


@workflow
def uses_leaked() -> int:
    return echo(LEAKED[0])


@workflow
def tuple_outputs(n: int = 5) -> dict:
    a, b = pair(n)
    return {"a": a, "b": b}


@workflow
def user_bug(n: int = 1) -> int:
    return 1 // 0


def test_a_trace_records_one_node_per_call_and_fans_out_over_parameters() -> None:
    graph = fan_out.trace({"factors": [1.0, 2.0]})
    assert list(graph.nodes) == ["load", "scale", "count", "scale#2", "count#2", "total"]
    assert graph.nodes["scale#2"].deps == ["load"]
    assert graph.nodes["total"].deps == ["count", "count#2"]
    assert graph.nodes["scale#2"].kwargs["factor"] == 2.0
    assert graph.nodes["load"].line.endswith(f":{line_of('data = load(4)')}")


def test_a_fanned_out_workflow_runs(workspace: Workspace) -> None:
    run = workspace.flow.run(fan_out, executor="thread")
    assert run.status == "succeeded", run.error
    assert run.outputs == {"total": 12.0, "first": 4}


def test_tuple_annotations_give_several_futures(workspace: Workspace) -> None:
    run = workspace.flow.run(tuple_outputs, params={"n": 5}, executor="thread")
    assert run.outputs == {"a": 5, "b": 6}


def test_a_type_mismatch_names_the_workflow_line() -> None:
    with pytest.raises(Invalid) as caught:
        wrong_type.trace()
    message = str(caught.value)
    assert f"{THIS}:{line_of('return count(count(load(3)))')}" in message
    assert "parameter 'data' takes Dataset, but gets int from count" in message


def test_branching_on_a_future_says_why() -> None:
    with pytest.raises(Invalid) as caught:
        branches.trace()
    assert f":{line_of('if rows:')}" in str(caught.value)
    assert "exists only when the run executes" in str(caught.value)


def test_bad_calls_are_reported_with_their_line() -> None:
    with pytest.raises(Invalid, match="unexpected keyword argument 'bogus'"):
        unknown_argument.trace()
    with pytest.raises(Invalid, match=f"{line_of('return echo(object())')}.*JSON values"):
        object_constant.trace()
    with pytest.raises(Invalid, match=r"user_bug failed while being traced: ZeroDivisionError"):
        user_bug.trace()
    with pytest.raises(Invalid, match=f":{line_of('return 1 // 0')}"):
        user_bug.trace()


def test_workflow_parameters_are_checked(workspace: Workspace) -> None:
    with pytest.raises(Invalid, match="has no parameter 'dayz'; it takes factors"):
        workspace.flow.run(fan_out, params={"dayz": 3})
    with pytest.raises(Invalid, match="takes int, not str"):
        tuple_outputs.bind({"n": "five"})
    with pytest.raises(Invalid, match="not by calling it"):
        tuple_outputs()
    assert workspace.flow.runs() == []


def test_a_return_value_that_breaks_its_annotation_fails_the_operator(workspace: Workspace) -> None:
    run = workspace.flow.run(lying, executor="thread")
    assert run.status == "failed"
    assert "operator lies returned str, which is not int" in (run.error or "")


def test_operators_are_plain_functions_outside_workflows() -> None:
    data = load.fn(3)
    assert count(Dataset(data)) == 3
    assert pair(1) == (1, 2)


def test_futures_cannot_leave_their_trace() -> None:
    leaks.trace()
    with pytest.raises(Invalid, match="future from another workflow trace"):
        uses_leaked.trace()


def test_workflows_are_found_by_target(tmp_path: pytest.TempPathFactory) -> None:
    assert load_workflow(fan_out.target) is fan_out
    with pytest.raises(Invalid, match="MODULE:WORKFLOW"):
        load_workflow("no_colon")
    with pytest.raises(NotFound, match="cannot import"):
        load_workflow("no_such_module_xyz:wf")
    with pytest.raises(NotFound, match="is not a workflow"):
        load_workflow("openlearner.flow:operator")
    with pytest.raises(NotFound, match="no workflow file"):
        load_workflow("/nowhere/flows.py:wf")
