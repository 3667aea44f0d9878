"""Run each operator as a Ray task with ``num_cpus``/``num_gpus``/``memory`` from its ``Resources``.

Connects to ``address`` (``OPENLEARNER_RAY_ADDRESS``) or starts Ray on this machine when
none is set; a Ray already initialised in this process is reused. A request larger than
every node of the cluster is refused at once instead of waiting forever. Workers read
and write the workspace's artifact store, so on a cluster it must be shared storage.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from typing import Any

from openlearner.errors import Invalid, Unavailable
from openlearner.flow.operator import Resources
from openlearner.flow.task import InputRef, Task, TaskResult, execute

__all__ = ["RayExecutor"]

_REMOTES: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _to_json(value: Any) -> Any:
    if isinstance(value, InputRef):
        return {"$input": value.ref}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$input"}:
            return InputRef(value["$input"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _runner(task: Task) -> Any:
    """A task body bound to one operator: Ray ships its code, signature and types once, not with every task.

    Each call then takes and returns one JSON string, which Ray moves without pickling.
    """
    fn = getattr(task.function, "fn", task.function)
    signature, returns, name = task.signature, task.returns, task.name

    def run_operator(payload: str) -> str:
        node, kwargs, artifact_uri, timeout = json.loads(payload)
        result = execute(
            Task(node, name, fn, signature, returns, _from_json(kwargs), artifact_uri, timeout=timeout)
        )
        return json.dumps([result.outputs, result.metrics, result.error, result.seconds])

    run_operator.__qualname__ = run_operator.__name__ = f"flow_{name}"
    return run_operator


def _settle(outer: Future[TaskResult], inner: Any) -> None:
    try:
        outputs, metrics, error, seconds = json.loads(inner.result())
    except BaseException as exc:  # the task or its worker failed; the engine records it
        outer.set_exception(exc)
        return
    outer.set_result(TaskResult(outputs, [tuple(m) for m in metrics], error, seconds))


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
        self.check(task.resources)
        options: dict[str, Any] = {"num_cpus": task.resources.cpu, "num_gpus": task.resources.gpu}
        if task.resources.memory_bytes:
            options["memory"] = task.resources.memory_bytes
        remote = _remote(task, options)
        payload = json.dumps([task.node, _to_json(task.kwargs), task.artifact_uri, task.timeout])
        outer: Future[TaskResult] = Future()
        remote.remote(payload).future().add_done_callback(lambda inner: _settle(outer, inner))
        return outer

    def shutdown(self) -> None:
        """Nothing to release: Ray itself stays up for the next run in this process."""
