"""The executor seam: every way of running operators implements these three methods."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from openlearner.errors import Invalid

if TYPE_CHECKING:
    from openlearner.config import Settings
    from openlearner.flow.operator import Resources
    from openlearner.flow.task import Task, TaskResult

__all__ = ["EXECUTORS", "Executor", "open_executor"]

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
