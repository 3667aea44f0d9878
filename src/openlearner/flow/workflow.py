"""Workflows: plain Python traced once into a DAG of operator calls.

While a workflow body runs under :meth:`Workflow.trace`, each operator call records a
:class:`Node` and hands back a :class:`Future` (or a tuple of them). Parameters are real
values, so loops over them fan out; a future's *value* does not exist until the run, so
using it in ``if``/``while``/arithmetic raises an error that says so. Types are checked
as the DAG is built and mistakes name the workflow's source line.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn, overload

from openlearner.errors import Invalid, OpenLearnerError
from openlearner.flow.operator import Operator
from openlearner.flow.values import Dataset, ModelArtifact, check_value, type_name

__all__ = ["Future", "Graph", "Node", "Output", "Workflow", "current_trace", "workflow"]

_FLOW_DIR = os.path.dirname(os.path.abspath(__file__))
_TRACE: ContextVar[_Trace | None] = ContextVar("openlearner_flow_trace", default=None)


def current_trace() -> _Trace | None:
    """The trace being built in this context, if any."""
    return _TRACE.get()


@dataclass(frozen=True)
class Output:
    """Output ``index`` of node ``node``: how the DAG names a value before it exists."""

    node: str
    index: int = 0


@dataclass
class Node:
    """One operator call in the DAG; ``args``/``kwargs`` hold constants and :class:`Output` markers."""

    id: str
    operator: Operator[Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    line: str
    deps: list[str] = field(default_factory=list)


@dataclass
class Graph:
    """The traced DAG of one workflow run: nodes in call order and the returned structure."""

    workflow: str
    params: dict[str, Any]
    nodes: dict[str, Node]
    outputs: Any

    def children(self) -> dict[str, list[str]]:
        """Each node's dependants."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for dep in node.deps:
                out[dep].append(node.id)
        return out

    def validate(self) -> None:
        """Raise Invalid for a node that depends on an unknown node or on a later one (a cycle)."""
        seen: set[str] = set()
        for node in self.nodes.values():
            for dep in node.deps:
                if dep not in seen:
                    raise Invalid(f"{node.line}: {node.id} depends on {dep}, which is not earlier in the DAG")
            seen.add(node.id)


_IN_FLOW: dict[str, bool] = {}


def _in_flow(filename: str) -> bool:
    inside = _IN_FLOW.get(filename)
    if inside is None:
        inside = _IN_FLOW[filename] = os.path.dirname(os.path.abspath(filename)) == _FLOW_DIR
    return inside


def _caller_line() -> str:
    frame = sys._getframe(1)
    while frame is not None and _in_flow(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class Future:
    """A value that one operator will produce when the run executes; pass it to other operators."""

    __slots__ = ("_line", "_output", "_trace", "_type")

    def __init__(self, trace: _Trace, output: Output, annotation: Any, line: str) -> None:
        self._trace, self._output, self._type, self._line = trace, output, annotation, line

    def _refuse(self, what: str) -> NoReturn:
        raise Invalid(
            f"{_caller_line()}: cannot {what} the result of {self._output.node} while the workflow is traced: "
            "its value exists only when the run executes. Branch on workflow parameters, or move the "
            "decision into an operator that takes this result as input"
        )

    def __bool__(self) -> bool:
        self._refuse("branch on")

    def __len__(self) -> int:
        self._refuse("take the length of")

    def __iter__(self) -> Iterator[Any]:
        self._refuse("iterate over (annotate the operator's return as tuple[A, B] to get several futures)")

    def __getitem__(self, key: Any) -> Any:
        self._refuse("index")

    def __int__(self) -> int:
        self._refuse("convert to int")

    def __float__(self) -> float:
        self._refuse("convert to float")

    def __index__(self) -> int:
        self._refuse("use as an index")

    def __lt__(self, other: Any) -> bool:
        self._refuse("compare")

    __le__ = __gt__ = __ge__ = __lt__

    def __add__(self, other: Any) -> Any:
        self._refuse("compute with")

    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __add__

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._refuse(f"read attribute {name!r} of")

    def __repr__(self) -> str:
        return f"Future({self._output.node}[{self._output.index}]: {type_name(self._type)})"


def _fits(given: Any, wanted: Any) -> bool:
    """Whether a value annotated ``given`` may feed a parameter annotated ``wanted``."""
    if wanted is Any or given is Any or wanted is inspect.Parameter.empty:
        return True
    if typing.get_origin(wanted) in (typing.Union, types.UnionType):
        return any(_fits(given, w) for w in typing.get_args(wanted))
    if typing.get_origin(given) in (typing.Union, types.UnionType):
        return all(_fits(g, wanted) for g in typing.get_args(given))
    g, w = typing.get_origin(given) or given, typing.get_origin(wanted) or wanted
    if w is float and g is int:
        return True
    if isinstance(g, type) and isinstance(w, type):
        return issubclass(g, w)
    return bool(g == w)


class _Trace:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: dict[str, Node] = {}
        self.counts: dict[str, int] = {}

    def _encode(self, value: Any, op: Operator[Any], param: str, line: str, deps: list[str]) -> Any:
        if isinstance(value, Future):
            if value._trace is not self:
                raise Invalid(
                    f"{line}: {op.name}() gets a future from another workflow trace in {param!r}; "
                    "futures are valid only inside the workflow call that made them"
                )
            deps.append(value._output.node)
            return value._output
        if isinstance(value, list | tuple):
            return type(value)(self._encode(v, op, param, line, deps) for v in value)
        if isinstance(value, dict):
            return {k: self._encode(v, op, param, line, deps) for k, v in value.items()}
        if isinstance(value, Dataset | ModelArtifact):
            raise Invalid(
                f"{line}: {op.name}() gets a {type(value).__name__} built outside the DAG in {param!r}; "
                "make it with an operator so it is stored and tracked"
            )
        if not isinstance(value, str | int | float | bool | type(None)):
            raise Invalid(
                f"{line}: {op.name}() parameter {param!r} gets a {type(value).__name__}; constants passed "
                "to operators are JSON values (numbers, strings, bools, lists, dicts)"
            )
        return value

    def call(self, op: Operator[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        line = _caller_line()
        try:
            bound = op.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise Invalid(f"{line}: {op.name}(): {exc}") from None
        bound.apply_defaults()
        deps: list[str] = []
        for param, value in bound.arguments.items():
            wanted = op.params.get(param, Any)
            if isinstance(value, Future):
                if not _fits(value._type, wanted):
                    raise Invalid(
                        f"{line}: {op.name}() parameter {param!r} takes {type_name(wanted)}, but gets "
                        f"{type_name(value._type)} from {value._output.node}"
                    )
            elif not _contains_future(value) and wanted is not Any:
                try:
                    check_value(value, wanted, "")
                except Invalid:
                    raise Invalid(
                        f"{line}: {op.name}() parameter {param!r} takes {type_name(wanted)}, not "
                        f"{type(value).__name__} {value!r}"
                    ) from None
        encoded = {p: self._encode(v, op, p, line, deps) for p, v in bound.arguments.items()}
        count = self.counts.get(op.name, 0) + 1
        self.counts[op.name] = count
        node_id = op.name if count == 1 else f"{op.name}#{count}"
        self.nodes[node_id] = Node(node_id, op, (), encoded, line, sorted(set(deps), key=deps.index))
        types_ = op.output_types()
        futures = tuple(Future(self, Output(node_id, i), t, line) for i, t in enumerate(types_))
        return futures if op.outputs() > 1 else futures[0]

    def encode_outputs(self, value: Any, line: str) -> Any:
        if isinstance(value, Future):
            if value._trace is not self:
                raise Invalid(f"{line}: workflow {self.name} returns a future from another workflow trace")
            return value._output
        if isinstance(value, list | tuple):
            return [self.encode_outputs(v, line) for v in value]
        if isinstance(value, dict):
            return {str(k): self.encode_outputs(v, line) for k, v in value.items()}
        if not isinstance(value, str | int | float | bool | type(None)):
            raise Invalid(
                f"{line}: workflow {self.name} returns a {type(value).__name__}; return futures of "
                "operators or JSON values"
            )
        return value


def _contains_future(value: Any) -> bool:
    if isinstance(value, Future):
        return True
    if isinstance(value, list | tuple):
        return any(_contains_future(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_future(v) for v in value.values())
    return False


class Workflow:
    """A traced workflow; made with :func:`workflow`, run with ``ws.flow.run``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        schedule: str | None = None,
        when: Any = None,
        missed: str = "skip",
        max_live_runs: int = 1,
    ) -> None:
        from openlearner.flow.schedule import parse_schedule

        self.fn = fn
        self.name = name or fn.__name__
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise Invalid(
                f"the type annotations of workflow {self.name!r} cannot be resolved: {exc}"
            ) from exc
        self.params = {n: hints.get(n, Any) for n in self.signature.parameters}
        if missed not in ("skip", "catch_up"):
            raise Invalid(f"missed must be 'skip' or 'catch_up', not {missed!r}")
        if not isinstance(max_live_runs, int) or max_live_runs < 1:
            raise Invalid(f"max_live_runs must be a positive integer, not {max_live_runs!r}")
        self.schedule = parse_schedule(schedule) if schedule is not None else None
        self.when = when
        self.missed = missed
        self.max_live_runs = max_live_runs
        self.target = f"{fn.__module__}:{fn.__qualname__}"
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn
        _KNOWN[self.target] = self

    def bind(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """All parameters of a run: ``params`` checked by name and type, defaults filled in."""
        params = dict(params or {})
        unknown = [k for k in params if k not in self.params]
        if unknown:
            raise Invalid(
                f"workflow {self.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(self.params) or 'none'}"
            )
        out: dict[str, Any] = {}
        for name, parameter in self.signature.parameters.items():
            if name in params:
                value = params[name]
            elif parameter.default is not inspect.Parameter.empty:
                value = parameter.default
            else:
                raise Invalid(
                    f"workflow {self.name} needs parameter {name!r} ({type_name(self.params[name])})"
                )
            if not isinstance(value, str | int | float | bool | type(None) | list | dict):
                raise Invalid(
                    f"parameter {name!r} of workflow {self.name} must be a JSON value, not {value!r}"
                )
            try:
                out[name] = check_value(value, self.params[name], "")
            except Invalid:
                raise Invalid(
                    f"parameter {name!r} of workflow {self.name} takes {type_name(self.params[name])}, "
                    f"not {type(value).__name__} {value!r}"
                ) from None
        return out

    def trace(self, params: dict[str, Any] | None = None) -> Graph:
        """Run the body once with futures and return the DAG it builds."""
        bound = self.bind(params)
        trace = _Trace(self.name)
        token = _TRACE.set(trace)
        try:
            result = self.fn(**bound)
        except OpenLearnerError:
            raise
        except Exception as exc:
            raise Invalid(
                f"{_traceback_line(exc, self.fn)}: workflow {self.name} failed while being traced: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            _TRACE.reset(token)
        line = f"{self.fn.__code__.co_filename}:{self.fn.__code__.co_firstlineno}"
        graph = Graph(self.name, bound, trace.nodes, trace.encode_outputs(result, line))
        graph.validate()
        return graph

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_trace() is not None:  # a workflow called inside another one is inlined
            return self.fn(*args, **kwargs)
        raise Invalid(
            f"run workflow {self.name} with ws.flow.run({self.name}, params=...), not by calling it"
        )

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"


_KNOWN: dict[str, Workflow] = {}
"""Workflows defined in this process, by target, so ``resume`` finds them without an import."""


def remember_workflow(wf: Workflow) -> None:
    """Find ``wf`` by its current target from now on."""
    _KNOWN[wf.target] = wf


def known_workflow(target: str) -> Workflow | None:
    """The workflow defined in this process under ``module:qualname``, if any."""
    return _KNOWN.get(target)


def _traceback_line(exc: BaseException, fn: Callable[..., Any]) -> str:
    filename = fn.__code__.co_filename
    line = f"{filename}:{fn.__code__.co_firstlineno}"
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return line


@overload
def workflow(fn: Callable[..., Any]) -> Workflow: ...


@overload
def workflow(
    fn: None = None,
    *,
    name: str | None = None,
    schedule: str | None = None,
    when: Any = None,
    missed: str = "skip",
    max_live_runs: int = 1,
) -> Callable[[Callable[..., Any]], Workflow]: ...


def workflow(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    schedule: str | None = None,
    when: Any = None,
    missed: str = "skip",
    max_live_runs: int = 1,
) -> Workflow | Callable[[Callable[..., Any]], Workflow]:
    """Make a function a workflow: ``@workflow`` or ``@workflow(schedule="daily", missed="catch_up")``.

    ``schedule`` is ``"hourly"``, ``"daily"``, ``"every 15m"`` or a cron string; ``when`` a
    data trigger such as ``NewRows(source, at_least=1000)``. ``missed`` says whether the
    scheduler runs every missed slot (``"catch_up"``) or only the latest (``"skip"``).
    """

    def wrap(f: Callable[..., Any]) -> Workflow:
        return Workflow(
            f, name=name, schedule=schedule, when=when, missed=missed, max_live_runs=max_live_runs
        )

    return wrap(fn) if fn is not None else wrap
