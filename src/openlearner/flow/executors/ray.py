"""Run each operator as a Ray task with ``num_cpus``/``num_gpus``/``memory`` from its ``Resources``.

Connects to ``address`` (``OPENLEARNER_RAY_ADDRESS``) or starts Ray on this machine when
none is set; a Ray already initialised in this process is reused. A request larger than
every node of the cluster is refused at once instead of waiting forever. Workers read
and write the workspace's artifact store, so on a cluster it must be shared storage.

``chain`` passes the ObjectRefs of upstream tasks straight to Ray, so a stretch of the DAG
runs without a round trip through the driver between operators: Ray starts each task
when the results it takes exist, and a task whose upstream failed returns at once
without running its operator.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from openlearner.errors import Invalid, Unavailable
from openlearner.flow.operator import Resources
from openlearner.flow.task import InputRef, Task, TaskResult, Upstream, execute

__all__ = ["RayExecutor"]

_REMOTES: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()
_UPSTREAM_FAILED = "not run: an upstream operator failed"


class _RayFuture(Future[TaskResult]):
    """The future of one Ray task, holding the ObjectRef that dependants chain on."""

    def __init__(self, ref: Any) -> None:
        super().__init__()
        self.ref = ref
        self.deferred = False  # only the run's records wait on it


def _to_plain(value: Any, upstream: Mapping[str, int]) -> Any:
    if isinstance(value, InputRef):
        return {"$input": value.ref}
    if isinstance(value, Upstream):
        return {"$upstream": [upstream[value.node], value.index]}
    if isinstance(value, list | tuple):
        return [_to_plain(v, upstream) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v, upstream) for k, v in value.items()}
    return value


def _from_plain(value: Any, upstream: Sequence[Any]) -> Any:
    if isinstance(value, list):
        return [_from_plain(v, upstream) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            if "$input" in value:
                return InputRef(value["$input"])
            if "$upstream" in value:
                position, index = value["$upstream"]
                return InputRef(upstream[position][0][index])
        return {k: _from_plain(v, upstream) for k, v in value.items()}
    return value


def _runner(task: Task) -> Any:
    """A task body bound to one operator: Ray ships its code, signature and types once, not with every task.

    Each call then takes one list of plain values (node, arguments with their refs,
    artifact store, timeout), followed by the results of the upstream tasks it was chained
    on, and returns its own result as plain values: Ray moves those as MessagePack, with no
    pickling and no JSON text to build or parse on either side.
    """
    fn = getattr(task.function, "fn", task.function)
    signature, returns, name = task.signature, task.returns, task.name

    def run_operator(payload: list[Any], *upstream: list[Any]) -> list[Any]:
        node, kwargs, artifact_uri, timeout = payload
        if any(r[2] is not None for r in upstream):
            return [[], [], _UPSTREAM_FAILED, 0.0]
        kwargs = _from_plain(kwargs, upstream)
        result = execute(Task(node, name, fn, signature, returns, kwargs, artifact_uri, timeout=timeout))
        # Lists, not tuples: Ray packs lists as MessagePack but hands tuples to pickle.
        return [result.outputs, [list(m) for m in result.metrics], result.error, result.seconds]

    run_operator.__qualname__ = run_operator.__name__ = f"flow_{name}"
    return run_operator


def _settle(outer: Future[TaskResult], result: Sequence[Any]) -> None:
    outputs, metrics, error, seconds = result
    outer.set_result(TaskResult(outputs, [tuple(m) for m in metrics], error, seconds))


class _Collector:
    """One thread that settles the futures of finished Ray tasks, many per ``ray.wait``.

    A callback per ObjectRef costs Ray more than the tasks here do; one wait over every
    task in flight, which returns what finished within a couple of milliseconds, does not.
    When every task in flight is deferred (the engine waits on none of them: their dependants
    are chained on them in Ray), the waits are longer, since each costs CPU the tasks could
    use; not much longer, since a task the engine does wait on, submitted meanwhile, is first
    looked at when the wait ends.
    """

    WINDOW = 0.002  # the most a finished task waits for others finishing with it
    PATIENCE = 0.005  # the same when every task in flight is deferred
    OLDEST = 128
    """Tasks one wait looks at: the oldest in flight (which tend to finish first), since a wait
    over a thousand costs Ray half a millisecond; when none of them finished, the next wait
    looks at every task."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._cv = threading.Condition()
        self._new: list[_RayFuture] = []
        self._stopped = False
        self._asleep = False
        self._thread: threading.Thread | None = None

    def add(self, future: _RayFuture) -> None:
        with self._cv:
            self._new.append(future)
            if self._thread is None or not self._thread.is_alive():
                self._stopped = False
                self._thread = threading.Thread(target=self._loop, name="flow-ray-collector", daemon=True)
                self._thread.start()
            if self._asleep:  # otherwise it takes the new futures at its next wait, unprompted
                self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _loop(self) -> None:
        ray = self._ray
        waiting: dict[Any, _RayFuture] = {}  # in the order submitted
        everything = False
        while True:
            with self._cv:
                while not waiting and not self._new and not self._stopped:
                    self._asleep = True
                    self._cv.wait()
                    self._asleep = False
                if self._stopped:
                    return
                waiting.update((f.ref, f) for f in self._new)
                self._new.clear()
            refs = list(waiting) if everything else list(itertools.islice(waiting, self.OLDEST))
            hurry = not all(f.deferred for f in waiting.values())
            try:
                ready, _ = ray.wait(
                    refs, num_returns=len(refs), timeout=self.WINDOW if hurry else self.PATIENCE
                )
            except BaseException as exc:  # Ray itself went away: fail what is in flight, not hang
                for future in waiting.values():
                    future.set_exception(exc)
                waiting.clear()
                continue
            everything = not ready and len(refs) < len(waiting)
            if not ready:
                continue
            try:
                values = list(zip(ready, ray.get(ready), strict=True))
            except BaseException:  # one failed: take them one by one
                values = []
                for ref in ready:
                    try:
                        values.append((ref, ray.get(ref)))
                    except BaseException as exc:  # the task or its worker failed; the engine records it
                        waiting.pop(ref).set_exception(exc)
            for ref, value in values:
                future = waiting.pop(ref)
                try:
                    _settle(future, value)
                except BaseException as exc:
                    future.set_exception(exc)


def _remote(task: Task, options: dict[str, Any]) -> Any:
    import ray

    fn = getattr(task.function, "fn", task.function)
    key = (id(fn), tuple(sorted(options.items())))
    with _LOCK:
        remote = _REMOTES.get(key)
        if remote is None:
            remote = _REMOTES[key] = ray.remote(max_retries=0, **options)(_runner(task))
    return remote


class RayExecutor:
    """Ray tasks on a local Ray or the cluster at ``address``."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ModuleNotFoundError as exc:
            raise Unavailable("the ray executor needs Ray: pip install 'openlearner[ray]'") from exc
        self._ray = ray
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:
                raise Unavailable(f"cannot reach the Ray cluster at {address}: {exc}") from exc
        self._nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        self._collector = _Collector(ray)
        self._remotes: dict[tuple[Any, Resources], Any] = {}  # checked, per operator and resources

    def check(self, resources: Resources) -> None:
        """Refuse a request that no node of the cluster can give."""
        wanted = {"CPU": resources.cpu, "GPU": resources.gpu, "memory": resources.memory_bytes}
        if any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in self._nodes):
            return
        largest = {k: max((node.get(k, 0) for node in self._nodes), default=0) for k in wanted}
        raise Invalid(
            f"no Ray node can give {resources.cpu:g} CPUs, {resources.gpu:g} GPUs and "
            f"{resources.memory_bytes / 1e9:.1f} GB; the largest node has {largest['CPU']:g} CPUs, "
            f"{largest['GPU']:g} GPUs and {largest['memory'] / 1e9:.1f} GB"
        )

    def submit(self, task: Task) -> Future[TaskResult]:
        """Start ``task`` as a Ray task; its code travels by value, its data by reference."""
        return self._start(task, {})

    def chain(self, task: Task, upstream: Mapping[str, Future[TaskResult]]) -> Future[TaskResult] | None:
        """Start ``task`` on the ObjectRefs of ``upstream``: Ray runs it once they exist."""
        if not all(isinstance(f, _RayFuture) for f in upstream.values()):
            return None
        return self._start(task, upstream)

    def _start(self, task: Task, upstream: Mapping[str, Future[TaskResult]]) -> _RayFuture:
        fn = getattr(task.function, "fn", task.function)
        remote = self._remotes.get((fn, task.resources))
        if remote is None:
            self.check(task.resources)
            options: dict[str, Any] = {"num_cpus": task.resources.cpu, "num_gpus": task.resources.gpu}
            if task.resources.memory_bytes:
                options["memory"] = task.resources.memory_bytes
            remote = self._remotes[(fn, task.resources)] = _remote(task, options)
        positions = {node: i for i, node in enumerate(upstream)}
        payload = [task.node, _to_plain(task.kwargs, positions), task.artifact_uri, task.timeout]
        ref = remote.remote(payload, *(f.ref for f in upstream.values() if isinstance(f, _RayFuture)))
        outer = _RayFuture(ref)
        self._collector.add(outer)
        return outer

    def defer(self, future: Future[TaskResult]) -> None:
        """Settle ``future`` at leisure: the collector waits longer while every task in flight is deferred."""
        if isinstance(future, _RayFuture):
            future.deferred = True  # read by the collector at its next wait

    def shutdown(self) -> None:
        """Stop settling futures; Ray itself stays up for the next run in this process."""
        self._collector.stop()
