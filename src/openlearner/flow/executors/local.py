"""Run operators on this machine: worker processes (default) or threads, never more than the cores.

Each task holds its ``Resources`` (CPU cores, GPUs, memory) from the moment it starts until
it ends; a task waits while what it asks for is taken, so the machine is never
oversubscribed. Worker processes are forked, so operators are found by name in modules
already imported by the driver (define operators at module level).

A forked child cannot use CUDA once its parent has touched it (even
``torch.cuda.is_available()`` does). So an operator that asks for a GPU
(``Resources(gpu=...)``) runs in a second pool of workers started fresh (``spawn``), which
import the operator's module; ``Operator.check_findable(fresh=True)`` refuses, before the
run, one a fresh process could not import (defined in a notebook, say). A script's own
operators are found by re-importing the script, whose work must sit under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import Executor as PoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Literal

from openlearner.errors import Invalid
from openlearner.flow.operator import Resources
from openlearner.flow.task import Task, TaskResult, execute

__all__ = ["LocalExecutor", "machine_resources"]


def machine_resources() -> tuple[float, int, int]:
    """Cores this process may use, physical memory in bytes, and NVIDIA GPUs present."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        memory = 0
    gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    return float(cores), int(memory), gpus


class LocalExecutor:
    """Processes (``mode="process"``) or threads (``mode="thread"``) on this machine."""

    def __init__(
        self,
        *,
        mode: Literal["process", "thread"] = "process",
        cpus: float | None = None,
        memory: int | None = None,
        gpus: int | None = None,
    ) -> None:
        if mode not in ("process", "thread"):
            raise Invalid(f"LocalExecutor mode is 'process' or 'thread', not {mode!r}")
        cores, total_memory, total_gpus = machine_resources()
        self.mode = mode
        self.name = "local" if mode == "process" else "thread"
        self.cpus = float(cpus if cpus is not None else cores)
        self.memory = int(memory if memory is not None else total_memory)
        self.gpus = int(gpus if gpus is not None else total_gpus)
        self._free = [self.cpus, float(self.memory), float(self.gpus)]
        self._queue: deque[tuple[Task, Future[TaskResult]]] = deque()
        self._changed = threading.Condition()
        self._pool: PoolExecutor | None = None
        self._fresh_pool: PoolExecutor | None = None  # spawned workers: operators that use a GPU
        self._closed = False
        self._dispatcher: threading.Thread | None = None

    def check(self, resources: Resources) -> None:
        """Refuse requests larger than this machine."""
        if resources.cpu > self.cpus:
            raise Invalid(f"an operator asks for {resources.cpu:g} CPUs; this machine has {self.cpus:g}")
        if resources.gpu > self.gpus:
            raise Invalid(
                f"an operator asks for {resources.gpu:g} GPUs; this machine has {self.gpus} "
                "(run it with --executor ray on a cluster with GPUs)"
            )
        if self.memory and resources.memory_bytes > self.memory:
            raise Invalid(
                f"an operator asks for {resources.memory_bytes / 1e9:.1f} GB of memory; "
                f"this machine has {self.memory / 1e9:.1f} GB"
            )

    def submit(self, task: Task) -> Future[TaskResult]:
        """Queue ``task``; it starts when its resources are free."""
        self.check(task.resources)
        outer: Future[TaskResult] = Future()
        with self._changed:
            if self._closed:
                raise Invalid("this executor is shut down")
            self._queue.append((task, outer))
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="flow-local", daemon=True)
                self._dispatcher.start()
            self._changed.notify_all()
        return outer

    def _fits(self, resources: Resources) -> bool:
        cpu, memory, gpu = self._free
        return (
            resources.cpu <= cpu + 1e-9 and resources.gpu <= gpu + 1e-9 and resources.memory_bytes <= memory
        )

    def _take(self, resources: Resources, sign: int) -> None:
        self._free[0] -= sign * resources.cpu
        self._free[1] -= sign * resources.memory_bytes
        self._free[2] -= sign * resources.gpu

    def _ensure_pool(self, task: Task) -> PoolExecutor:
        workers = max(1, int(self.cpus + 0.999))
        if self.mode == "process" and task.resources.gpu > 0:
            if self._fresh_pool is None:
                self._fresh_pool = ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn")
                )
            return self._fresh_pool
        if self._pool is None:
            if self.mode == "thread":
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flow-op")
            else:
                self._pool = ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("fork")
                )
        return self._pool

    def _dispatch(self) -> None:
        while True:
            with self._changed:
                started: list[tuple[Task, Future[TaskResult]]] = []
                while not started:
                    if self._closed and not self._queue:
                        return
                    for item in list(self._queue):
                        if self._fits(item[0].resources):
                            self._queue.remove(item)
                            self._take(item[0].resources, +1)
                            started.append(item)
                    if not started:
                        self._changed.wait()
                chosen: list[tuple[Task, Future[TaskResult], PoolExecutor | None, Exception | None]] = []
                for task, outer in started:
                    try:
                        chosen.append((task, outer, self._ensure_pool(task), None))
                    except Exception as exc:  # no pool (out of file handles, say): the task fails
                        chosen.append((task, outer, None, exc))
            for task, outer, pool, error in chosen:
                if pool is None:
                    self._finish(None, task, outer, None, error)
                else:
                    self._start(pool, task, outer)

    def _start(self, pool: PoolExecutor, task: Task, outer: Future[TaskResult]) -> None:
        try:
            inner = pool.submit(execute, task)  # may start a worker process, which may fail
        except Exception as exc:
            self._finish(pool, task, outer, None, exc)
            return
        inner.add_done_callback(lambda f: self._finish(pool, task, outer, f, None))

    def _finish(
        self,
        pool: PoolExecutor | None,
        task: Task,
        outer: Future[TaskResult],
        inner: Future[TaskResult] | None,
        error: BaseException | None,
    ) -> None:
        if inner is not None:
            error = (
                CancelledError("the executor was shut down before this task ran")
                if inner.cancelled()
                else inner.exception()
            )
        with self._changed:
            self._take(task.resources, -1)
            if isinstance(error, BrokenProcessPool):  # a worker died; the next task gets a new pool
                if self._pool is pool:
                    self._pool = None
                if self._fresh_pool is pool:
                    self._fresh_pool = None
            self._changed.notify_all()
        if error is not None:
            outer.set_exception(error)
        else:
            assert inner is not None
            outer.set_result(inner.result())

    def shutdown(self) -> None:
        """Wait for running tasks and stop the workers."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join()  # it starts what is queued, maybe on a new pool: join it first
        with self._changed:
            pools = [p for p in (self._pool, self._fresh_pool) if p is not None]
            self._pool = self._fresh_pool = None
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
