"""The executor seam: every way of running operators implements these three methods.

An executor may also offer ``chain(task, upstream)``: start ``task`` before its inputs
exist, on the futures of the tasks that make them, and ``defer(future)``: settle a result
nothing waits on at leisure (see :class:`Chaining`). The engine uses them, when it can, to
hand a whole stretch of the DAG to the executor at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from openlearner.errors import Invalid

if TYPE_CHECKING:
    from openlearner.config import Settings
    from openlearner.flow.operator import Resources
    from openlearner.flow.task import Task, TaskResult

__all__ = ["EXECUTORS", "Chaining", "Executor", "open_executor"]

EXECUTORS = ("local", "thread", "ray")


@runtime_checkable
class Executor(Protocol):
    """Runs tasks somewhere, each with the resources it asks for."""

    name: str

    def check(self, resources: Resources) -> None:
        """Raise ``Invalid`` if no worker can ever give ``resources`` (instead of waiting forever)."""
        ...

    def submit(self, task: Task) -> Future[TaskResult]:
        """Start ``task`` when its resources are free; the future resolves to its result."""
        ...

    def shutdown(self) -> None:
        """Release workers; tasks still running are waited for."""
        ...


@runtime_checkable
class Chaining(Protocol):
    """An executor that can start a task whose inputs are still being made."""

    def chain(self, task: Task, upstream: Mapping[str, Future[TaskResult]]) -> Future[TaskResult] | None:
        """Start ``task`` once the tasks behind ``upstream`` (node → the future ``submit`` or
        ``chain`` gave) finish; its ``Upstream`` inputs name those nodes.

        The task must not run its operator if an upstream task failed (its result is then
        discarded by the engine). ``None`` when these futures cannot be chained on.
        """
        ...

    def defer(self, future: Future[TaskResult]) -> None:
        """The engine needs this result only for its records (every dependant is chained on it):
        the executor may settle it later, together with others, to spend less on watching it."""
        ...


def open_executor(name: str, settings: Settings | None = None) -> Executor:
    """The executor called ``name``: ``local`` (processes), ``thread`` (threads) or ``ray``."""
    from openlearner.flow.executors.local import LocalExecutor

    if name == "local":
        return LocalExecutor()
    if name == "thread":
        return LocalExecutor(mode="thread")
    if name == "ray":
        from openlearner.flow.executors.ray import RayExecutor

        return RayExecutor(address=settings.ray_address if settings is not None else None)
    raise Invalid(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
