"""Executors behind one seam: ``submit(task) -> future``, ``check(resources)``, ``shutdown()``."""

from openlearner.flow.executors.base import Executor, open_executor
from openlearner.flow.executors.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "open_executor"]


def __getattr__(name: str) -> object:
    if name == "RayExecutor":  # Ray is imported only when it is used
        from openlearner.flow.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'openlearner.flow.executors' has no attribute {name!r}")
