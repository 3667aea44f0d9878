"""One operator execution as executors see it: a picklable :class:`Task` and its :class:`TaskResult`.

:func:`execute` runs in the worker (a thread, a process or a Ray task): it loads the
inputs from the artifact store, calls the function, checks the result against the
operator's annotation, stores each output and returns the refs with the metrics logged.
Failures come back as a traceback in the result rather than as an exception, so nothing
unpicklable crosses a process boundary.
"""

from __future__ import annotations

import inspect
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openlearner.flow.operator import Resources, collect_metrics, stop_collecting
from openlearner.flow.values import check_value, load_value, save_value, store_at
from openlearner.flow.workflow import Output

__all__ = ["InputRef", "Task", "TaskResult", "Upstream", "execute"]


@dataclass(frozen=True)
class InputRef:
    """An input already stored: the ref of an upstream output."""

    ref: dict[str, Any]


@dataclass(frozen=True)
class Upstream:
    """An input still being made: output ``index`` of ``node``, which an executor that chains resolves."""

    node: str
    index: int


@dataclass
class Task:
    """Everything a worker needs to run one node; ``function`` is the operator (or its raw function)."""

    node: str
    name: str
    function: Callable[..., Any]
    signature: inspect.Signature
    returns: list[Any]
    kwargs: dict[str, Any]
    artifact_uri: str
    resources: Resources = field(default_factory=Resources)
    timeout: float | None = None


@dataclass
class TaskResult:
    """Refs of the outputs, metrics logged ``(name, value, step, unix time)``, or the error's traceback."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[tuple[str, float, int | None, float]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class OperatorTimeout(Exception):
    """An operator ran past its timeout."""


def _resolve(value: Any, store: Any) -> Any:
    if isinstance(value, InputRef):
        return load_value(value.ref, store)
    if isinstance(value, Output | Upstream):  # pragma: no cover - resolved before a task runs
        raise RuntimeError(f"unresolved input {value}")
    if isinstance(value, list | tuple):
        return type(value)(_resolve(v, store) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, store) for k, v in value.items()}
    return value


def execute(task: Task) -> TaskResult:
    """Run ``task`` here and store its outputs (called by every executor)."""
    began = time.perf_counter()
    log, token = collect_metrics()
    alarm = task.timeout is not None and threading.current_thread() is threading.main_thread()
    previous: Any = None
    try:
        store = store_at(task.artifact_uri)
        arguments = {k: _resolve(v, store) for k, v in task.kwargs.items()}
        bound = inspect.BoundArguments(task.signature, arguments)
        fn = getattr(task.function, "fn", task.function)
        if alarm:
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, float(task.timeout or 0))
        try:
            value = fn(*bound.args, **bound.kwargs)
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        values = _split(value, task)
        outputs = [
            save_value(check_value(v, t, f"operator {task.name}"), store)
            for v, t in zip(values, task.returns, strict=True)
        ]
        return TaskResult(outputs, list(log.items), None, time.perf_counter() - began)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit) and not isinstance(exc, OperatorTimeout):
            raise
        text = "".join(traceback.format_exception(exc))
        return TaskResult([], list(log.items), text, time.perf_counter() - began)
    finally:
        stop_collecting(token)


def _on_alarm(signum: int, frame: Any) -> None:
    raise OperatorTimeout("the operator ran past its timeout")


def _split(value: Any, task: Task) -> list[Any]:
    if len(task.returns) == 1:
        return [value]
    from openlearner.errors import Invalid

    if not isinstance(value, tuple | list) or len(value) != len(task.returns):
        raise Invalid(
            f"operator {task.name} is annotated to return {len(task.returns)} values, "
            f"but returned {type(value).__name__}"
        )
    return list(value)
