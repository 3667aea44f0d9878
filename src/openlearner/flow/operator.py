"""Operators: typed Python functions that a workflow calls and an executor runs.

Inside a workflow being traced, calling an operator records a node and returns a
future; anywhere else it is a plain function call (handy in tests).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import re
import sys
import time
import typing
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from importlib import import_module
from types import ModuleType
from typing import Any, Generic, TypeVar, overload

from openlearner.errors import Invalid

__all__ = ["Operator", "Resources", "RetryPolicy", "log_metric", "operator", "parse_duration", "parse_memory"]

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_memory(value: int | str | None) -> int | None:
    """Bytes from ``2GB``, ``512MiB`` or a number of bytes."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if isinstance(value, int) and value < 0:
            raise Invalid(f"memory must not be negative, not {value}")
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).upper() not in _UNITS:
        raise Invalid(f"memory {value!r} is not a size; write e.g. '2GB', '512MiB' or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_duration(value: float | int | str | None) -> float | None:
    """Seconds from ``1h``, ``15m``, ``30s``, ``2d`` or a number of seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", str(value))
        if not match:
            raise Invalid(f"duration {value!r} is not understood; write e.g. '30s', '15m', '1h' or '2d'")
        seconds = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise Invalid(f"a duration must be positive, not {value!r}")
    return seconds


@dataclass(frozen=True)
class Resources:
    """What one execution of an operator needs: CPU cores, GPUs and memory (e.g. ``"2GB"``)."""

    cpu: float = 1
    gpu: float = 0
    memory: int | str | None = None

    def __post_init__(self) -> None:
        for name in ("cpu", "gpu"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise Invalid(f"Resources {name} must be a non-negative number, not {value!r}")
        object.__setattr__(self, "memory", parse_memory(self.memory))

    @property
    def memory_bytes(self) -> int:
        """Memory in bytes (0 when unspecified)."""
        return int(self.memory or 0)

    def to_dict(self) -> dict[str, Any]:
        """As stored with each operator execution."""
        return asdict(self)


@dataclass(frozen=True)
class RetryPolicy:
    """How often to retry a failing operator, waiting ``backoff * factor**k`` seconds (up to ``max_backoff``)."""

    retries: int = 0
    backoff: float = 1.0
    factor: float = 2.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise Invalid(f"retries must be a non-negative integer, not {self.retries!r}")
        if self.backoff < 0 or self.factor < 1:
            raise Invalid("backoff must be >= 0 seconds and factor >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.max_backoff, self.backoff * self.factor ** (attempt - 1)))


@dataclass
class _MetricLog:
    items: list[tuple[str, float, int | None, float]] = field(default_factory=list)


_METRICS: ContextVar[_MetricLog | None] = ContextVar("openlearner_flow_metrics", default=None)


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record a metric of the running operator (``step`` for curves, e.g. the epoch)."""
    if not isinstance(name, str) or not name:
        raise Invalid("a metric needs a name")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise Invalid(f"metric {name!r} must be a finite number, not {value!r}")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise Invalid(f"the step of metric {name!r} must be an integer, not {step!r}")
    log = _METRICS.get()
    if log is None:
        raise Invalid("log_metric is called from inside an operator; this code is not running in one")
    log.items.append((name, float(value), step, time.time()))


def collect_metrics() -> tuple[_MetricLog, Any]:
    """Start collecting metrics in this context; returns the log and a reset token."""
    log = _MetricLog()
    return log, _METRICS.set(log)


def stop_collecting(token: Any) -> None:
    """Stop collecting metrics (the token from :func:`collect_metrics`)."""
    _METRICS.reset(token)


def code_version(fn: Callable[..., Any]) -> str:
    """The hash of a function's source (its bytecode when the source is unavailable)."""
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = fn.__code__
        text = code.co_code + repr(code.co_consts).encode()
    return hashlib.sha256(text).hexdigest()


class Operator(Generic[R]):
    """A typed unit of work in a workflow; made with :func:`operator`."""

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        name: str | None = None,
        resources: Resources | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        cache: bool = True,
    ) -> None:
        if not callable(fn):
            raise Invalid("@operator decorates a function")
        self.fn = fn
        self.name = name or fn.__name__
        self.resources = resources or Resources()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.cache = cache
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise Invalid(
                f"the type annotations of operator {self.name!r} cannot be resolved: {exc}"
            ) from exc
        self.params = {n: hints.get(n, Any) for n in self.signature.parameters}
        self.returns: Any = hints.get("return", Any)
        self.module = fn.__module__
        self.qualname = fn.__qualname__
        # Where a new process loads the module from when it cannot import it by name (a
        # workflow file loaded by path): its source file, if it has one.
        self.file: str | None = getattr(sys.modules.get(fn.__module__), "__file__", None)
        self.code_version = code_version(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__module__ = fn.__module__
        self.__qualname__ = fn.__qualname__
        self.__wrapped__ = fn

    def outputs(self) -> int:
        """How many outputs a call yields: a fixed ``tuple[A, B, ...]`` annotation gives one per item."""
        return len(self._output_types())

    def output_types(self) -> list[Any]:
        """The annotation of each output."""
        return list(self._output_types())

    def _output_types(self) -> tuple[Any, ...]:
        # Asked for on every traced call and every task: worked out once per annotation.
        cached = self.__dict__.get("_outputs_of")
        if cached is None or cached[0] is not self.returns:
            types: tuple[Any, ...] = (self.returns,)
            if typing.get_origin(self.returns) is tuple:
                args = typing.get_args(self.returns)
                if len(args) >= 2 and Ellipsis not in args:
                    types = tuple(args)
            cached = self.__dict__["_outputs_of"] = (self.returns, types)
        return cached[1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from openlearner.flow.workflow import current_trace

        trace = current_trace()
        if trace is not None:
            return trace.call(self, args, kwargs)
        _log, token = collect_metrics()
        try:
            return self.fn(*args, **kwargs)
        finally:
            stop_collecting(token)

    def check_findable(self, *, fresh: bool = False) -> None:
        """Refuse an operator that worker processes cannot find by name: one defined in a
        function, or with ``fresh`` (workers started anew, as for GPU operators) one whose
        module a new process cannot import (a notebook's, ``python -c``'s, a file loaded by path)."""
        if "<locals>" in self.qualname.split("."):
            raise Invalid(
                f"operator {self.qualname} is defined inside a function, so worker processes "
                "cannot find it by name; define it at the top level of a module, or run with "
                "executor='thread'"
            )
        if fresh and not _main_rerunnable():
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            raise Invalid(
                f"operator {self.qualname} asks for a GPU, so it runs in a newly started worker "
                f"process, which first re-runs this program's main script, {main!r}, and that is "
                "no file; start the program from a script file (or a notebook)"
            )
        if fresh and not _importable_anew(self.module, self.file):
            raise Invalid(
                f"operator {self.qualname} asks for a GPU, so it runs in a newly started worker "
                f"process, which cannot import its module {self.module!r}; define it in a module "
                "on the Python path or a workflow file (or in the script you run, under "
                "if __name__ == '__main__':)"
            )

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes find the operator by name in its module (no code is pickled).
        self.check_findable()
        return (_operator_by_name, (self.module, self.qualname, self.file))

    def __repr__(self) -> str:
        return f"<operator {self.name}>"


def _main_rerunnable() -> bool:
    """Whether ``spawn`` can prepare a new process: it re-runs the main script from its
    ``__file__`` when there is one (none for a notebook or ``python -c``), so that must be a
    file (``python -`` names it ``<stdin>``)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True  # python -m: re-imported by name
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)


def _importable_anew(module: str, file: str | None) -> bool:
    """Whether a newly started process finds ``module``: the main script (``spawn`` re-runs it
    from its file, but not a package's ``__main__`` run with ``python -m``), a module with a
    source file (loaded from it when its name is not importable), or one a finder on the path
    knows by name."""
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name.endswith("__main__"):
            return False
        return bool(getattr(main, "__file__", None))
    if file is not None and os.path.isfile(file):
        return True
    top = module.split(".")[0]
    for finder in sys.meta_path:  # not importlib.util.find_spec: it answers from sys.modules
        find = getattr(finder, "find_spec", None)
        if find is not None and find(top, None) is not None:
            return True
    return False


def load_file_module(name: str, path: str | os.PathLike[str]) -> ModuleType:
    """Run the Python file ``path`` as module ``name`` (registered in ``sys.modules`` first, as
    an import does): how a workflow file is loaded, by the driver and by a new worker."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _operator_by_name(module: str, qualname: str, file: str | None = None) -> Operator[Any]:
    """The operator ``qualname`` of ``module`` in this (worker) process; a module that cannot be
    imported by name (a workflow file loaded by path) is loaded from ``file`` under its name."""
    target: Any = sys.modules.get(module)
    if target is None:
        try:
            target = import_module(module)
        except ModuleNotFoundError:
            if file is None or not os.path.isfile(file):
                raise
            target = load_file_module(module, file)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not isinstance(target, Operator):
        raise Invalid(f"{module}:{qualname} is not an operator")
    return target


@overload
def operator(fn: F) -> Operator[Any]: ...


@overload
def operator(
    fn: None = None,
    *,
    name: str | None = None,
    resources: Resources | None = None,
    retries: int | RetryPolicy = 0,
    backoff: float = 1.0,
    timeout: float | str | None = None,
    cache: bool = True,
) -> Callable[[F], Operator[Any]]: ...


def operator(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    resources: Resources | None = None,
    retries: int | RetryPolicy = 0,
    backoff: float = 1.0,
    timeout: float | str | None = None,
    cache: bool = True,
) -> Operator[Any] | Callable[[Callable[..., Any]], Operator[Any]]:
    """Make a function an operator: ``@operator`` or ``@operator(resources=..., retries=2, timeout="1h")``.

    ``retries`` failed attempts are retried after ``backoff``, ``2*backoff``, ... seconds;
    ``cache=False`` always re-runs it.
    """
    if resources is not None and not isinstance(resources, Resources):
        raise Invalid(f"resources must be a Resources(cpu=..., gpu=..., memory=...), not {resources!r}")
    policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries, backoff=backoff)
    seconds = parse_duration(timeout)

    def wrap(f: Callable[..., Any]) -> Operator[Any]:
        return Operator(f, name=name, resources=resources, retry=policy, timeout=seconds, cache=cache)

    return wrap(fn) if fn is not None else wrap
