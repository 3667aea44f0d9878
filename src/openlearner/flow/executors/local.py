"""Run operators on this machine: worker processes (default) or threads, never more than the cores.

Each task holds its ``Resources`` (CPU cores, GPUs, memory) from the moment it starts until
it ends; a task waits while what it asks for is taken, so the machine is never
oversubscribed. Worker processes are forked, so operators are found by name in modules
already imported by the driver (define operators at module level).

A forked child cannot use CUDA once its parent has touched it (even
``torch.cuda.is_available()`` does). So an operator that asks for a GPU
(``Resources(gpu=...)``) runs in workers started fresh (``spawn``), which import the
operator's module; ``Operator.check_findable(fresh=True)`` refuses, before the run, one a
fresh process could not import (defined in a notebook, say). A script's own operators are
found by re-importing the script, whose work must sit under ``if __name__ == "__main__":``.

GPUs are handed out by device, as Ray does: a task asking for ``gpu=1`` (or 2, ...) gets
whole devices to itself, one asking for a fraction shares a device with others whose
fractions fit beside it, and its worker sees only its devices (``CUDA_VISIBLE_DEVICES``, set
before CUDA starts there; one pool of spawned workers per set of devices). So two
``gpu=1`` operators on a two-GPU machine train on different GPUs, each as ``cuda:0``. (A
module that starts CUDA as it is imported, before the worker's initializer runs, would see
every device.) In
``thread`` mode devices are counted the same way but not hidden (one process, one
environment).
"""

from __future__ import annotations

import glob
import math
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

__all__ = ["LocalExecutor", "gpu_devices", "machine_resources"]


def gpu_devices() -> list[str]:
    """The NVIDIA GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them: the
    entries of that variable when it is set (at most as many as there are devices), else the
    numbers of ``/dev/nvidia<N>``."""
    present = sorted(int(p.removeprefix("/dev/nvidia")) for p in glob.glob("/dev/nvidia[0-9]*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()][: len(present)]
    return [str(n) for n in present]


def machine_resources() -> tuple[float, int, int]:
    """Cores this process may use, physical memory in bytes, and NVIDIA GPUs it may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        memory = 0
    return float(cores), int(memory), len(gpu_devices())


def _pin(devices: str) -> None:
    """A GPU worker's initializer: it sees only its devices (before anything starts CUDA)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices


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
        if gpus is not None and (type(gpus) is not int or gpus < 0):
            raise Invalid(f"LocalExecutor gpus is a count of devices (0 or more), not {gpus!r}")
        cores, total_memory, _ = machine_resources()
        self.mode = mode
        self.name = "local" if mode == "process" else "thread"
        self.cpus = float(cpus if cpus is not None else cores)
        self.memory = int(memory if memory is not None else total_memory)
        found = gpu_devices()
        # ``gpus`` given: that many devices, named as the machine names them where it has them.
        self.devices = found if gpus is None else (found + [str(n) for n in range(len(found), gpus)])[:gpus]
        self.gpus = len(self.devices)
        self._free = [self.cpus, float(self.memory)]  # cores and bytes not taken
        self._device_free = [1.0] * self.gpus  # the share of each device not taken
        self._queue: deque[tuple[Task, Future[TaskResult]]] = deque()
        self._changed = threading.Condition()
        self._pool: PoolExecutor | None = None
        self._gpu_pools: dict[tuple[int, ...], PoolExecutor] = {}  # spawned, per set of devices
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
        return self._place(resources) is not None

    def _place(self, resources: Resources) -> tuple[int, ...] | None:
        """The devices a task asking for ``resources`` would get now (none when it asks for no
        GPU), or None when it must wait for cores, memory or devices."""
        cpu, memory = self._free
        if resources.cpu > cpu + 1e-9 or resources.memory_bytes > memory:
            return None
        return self._devices_for(resources.gpu)

    def _devices_for(self, gpu: float) -> tuple[int, ...] | None:
        """The devices a task asking for ``gpu`` would get now (indices), or None if it must wait:
        a fraction goes to the first device with that much left, whole GPUs to free devices."""
        if gpu <= 0:
            return ()
        if gpu < 1:
            for index, left in enumerate(self._device_free):
                if left >= gpu - 1e-9:
                    return (index,)
            return None
        free = [i for i, left in enumerate(self._device_free) if left >= 1 - 1e-9]
        wanted = math.ceil(gpu - 1e-9)
        return tuple(free[:wanted]) if len(free) >= wanted else None

    def _take(self, resources: Resources, sign: int, devices: tuple[int, ...] = ()) -> None:
        self._free[0] -= sign * resources.cpu
        self._free[1] -= sign * resources.memory_bytes
        share = resources.gpu if resources.gpu < 1 else 1.0
        for index in devices:
            self._device_free[index] -= sign * share

    def _ensure_pool(self, task: Task, devices: tuple[int, ...]) -> PoolExecutor:
        workers = max(1, int(self.cpus + 0.999))
        if self.mode == "process" and task.resources.gpu > 0:
            pool = self._gpu_pools.get(devices)
            if pool is None:
                pool = self._gpu_pools[devices] = ProcessPoolExecutor(
                    max_workers=workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_pin,
                    initargs=(",".join(self.devices[i] for i in devices),),
                )
            return pool
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
                started: list[tuple[Task, Future[TaskResult], tuple[int, ...]]] = []
                while not started:
                    if self._closed and not self._queue:
                        return
                    for item in list(self._queue):
                        devices = self._place(item[0].resources)
                        if devices is not None:
                            self._queue.remove(item)
                            self._take(item[0].resources, +1, devices)
                            started.append((*item, devices))
                    if not started:
                        self._changed.wait()
                chosen: list[
                    tuple[Task, Future[TaskResult], tuple[int, ...], PoolExecutor | None, Exception | None]
                ] = []
                for task, outer, devices in started:
                    try:
                        chosen.append((task, outer, devices, self._ensure_pool(task, devices), None))
                    except Exception as exc:  # no pool (out of file handles, say): the task fails
                        chosen.append((task, outer, devices, None, exc))
            for task, outer, devices, pool, error in chosen:
                if pool is None:
                    self._finish(None, task, outer, None, error, devices)
                else:
                    self._start(pool, task, outer, devices)

    def _start(
        self, pool: PoolExecutor, task: Task, outer: Future[TaskResult], devices: tuple[int, ...]
    ) -> None:
        try:
            inner = pool.submit(execute, task)  # may start a worker process, which may fail
        except Exception as exc:
            self._finish(pool, task, outer, None, exc, devices)
            return
        inner.add_done_callback(lambda f: self._finish(pool, task, outer, f, None, devices))

    def _finish(
        self,
        pool: PoolExecutor | None,
        task: Task,
        outer: Future[TaskResult],
        inner: Future[TaskResult] | None,
        error: BaseException | None,
        devices: tuple[int, ...] = (),
    ) -> None:
        if inner is not None:
            error = (
                CancelledError("the executor was shut down before this task ran")
                if inner.cancelled()
                else inner.exception()
            )
        with self._changed:
            self._take(task.resources, -1, devices)
            if isinstance(error, BrokenProcessPool):  # a worker died; the next task gets a new pool
                if self._pool is pool:
                    self._pool = None
                for key, gpu_pool in list(self._gpu_pools.items()):
                    if gpu_pool is pool:
                        del self._gpu_pools[key]
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
            pools = [p for p in (self._pool, *self._gpu_pools.values()) if p is not None]
            self._pool = None
            self._gpu_pools = {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
