"""The driver of one run: walks the DAG, reuses cached results, submits the rest, retries failures.

Nodes start as soon as their inputs exist, so independent branches run in parallel and
keep running after another branch failed; a node whose input failed is ``skipped``.
A node's cache key is the hash of its operator's name and code version, its constant
parameters and the digests of its inputs.

On an executor that chains (Ray), a node that needs no cache lookup, and neither it nor
an input still running has a timeout, is handed over as soon as its inputs are *being
made*, on the futures of the tasks making them, so a stretch of the DAG runs without a round trip through the driver per operator.
A task whose dependants are all chained on it is deferred: the executor may report it late,
with others, since only the run's records wait on it.
The engine still settles nodes in dependency order: a chained node's result is used only
once all its inputs have succeeded; if one fails or is retried, the chained node is
withdrawn and waits like any other.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import queue
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from openlearner.flow.executors.base import Chaining, Executor
from openlearner.flow.runs import RunRecorder, RunTracker
from openlearner.flow.task import InputRef, Task, TaskResult, Upstream
from openlearner.flow.values import stored
from openlearner.flow.workflow import Graph, Node, Output
from openlearner.storage.artifacts.base import ArtifactStore

__all__ = ["Engine", "NodeState", "cache_key", "settled_heap"]

WRITE_SETTLED = 200
"""Finished operators the engine writes at once while others run (the rest at the run's end)."""


@dataclass
class NodeState:
    """Where one node of a run stands."""

    status: str = "pending"
    attempts: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    cache_key: str | None = None


def _marker(value: Any, done: dict[str, NodeState], as_digest: bool) -> Any:
    if isinstance(value, Output):
        state = done[value.node]
        if state.status != "succeeded":  # still being made: only a chained task takes this
            return Upstream(value.node, value.index)
        ref = state.outputs[value.index]
        return {"$digest": ref["digest"]} if as_digest else InputRef(ref)
    if isinstance(value, list | tuple):
        return type(value)(_marker(v, done, as_digest) for v in value)
    if isinstance(value, dict):
        return {k: _marker(v, done, as_digest) for k, v in value.items()}
    return value


def _digests(value: Any, done: dict[str, NodeState]) -> list[str]:
    if isinstance(value, Output):
        outputs = done[value.node].outputs
        return [outputs[value.index]["digest"]] if len(outputs) > value.index else []
    if isinstance(value, list | tuple):
        return [d for v in value for d in _digests(v, done)]
    if isinstance(value, dict):
        return [d for v in value.values() for d in _digests(v, done)]
    return []


def cache_key(node: Node, done: dict[str, NodeState]) -> str:
    """Hash of the operator (name and code version), constant parameters and input digests."""
    op = node.operator
    material = [op.name, op.code_version, repr(op.returns), _marker(node.kwargs, done, True)]
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def settled_heap() -> Iterator[None]:
    """Keep the objects that exist before a run out of the garbage collector's full passes while it runs.

    A run makes tens of objects per operator, which age into the collector's oldest
    generation and soon set off full passes over the whole heap (Ray, SQLAlchemy, the
    caller's data: ~100 ms each for 160k objects, one every couple of 1,000-operator runs).
    Frozen objects are skipped by those passes and handed back to the collector after the
    run: reference counting frees them as usual meanwhile; only a reference cycle among them
    that became garbage waits for the collector until the run ends. A process that froze
    objects itself, or runs with the collector off, is left alone.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Engine:
    """Runs one traced graph on an executor, recording each node."""

    def __init__(
        self,
        graph: Graph,
        executor: Executor,
        store: ArtifactStore,
        artifact_uri: str,
        tracker: RunTracker,
        recorder: RunRecorder,
        *,
        use_cache: bool = True,
        reuse: dict[str, list[dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph, self.executor, self.store, self.artifact_uri = graph, executor, store, artifact_uri
        self.tracker, self.recorder, self.use_cache = tracker, recorder, use_cache
        self.reuse = reuse or {}
        self.clock = clock
        self.states = {n: NodeState() for n in graph.nodes}
        self._children = graph.children()
        self._waiting = {n: len(set(node.deps)) for n, node in graph.nodes.items()}
        self._ready: deque[str] = deque(n for n, c in self._waiting.items() if c == 0)
        self._inflight: dict[str, Future[TaskResult]] = {}
        self._completed: queue.SimpleQueue[tuple[str, Future[TaskResult]]] = queue.SimpleQueue()
        self._deadlines: dict[str, tuple[float, Future[TaskResult]]] = {}
        self._retries: list[tuple[float, str]] = []
        self._resources: dict[str, dict[str, Any]] = {}
        self._described: set[str] = set()
        self._inputs: dict[str, list[str]] = {}  # input digests of nodes described, until they succeed
        chaining = executor if isinstance(executor, Chaining) else None
        self._chain = chaining.chain if chaining is not None else None
        self._defer = chaining.defer if chaining is not None else None
        self._chained: set[str] = set()  # handed over before all inputs succeeded
        self._parked: dict[str, Future[TaskResult]] = {}  # finished before an input was settled
        # Deferred futures, held weakly: holding them would keep this engine alive through
        # their done-callbacks after the run (a reference cycle).
        self._unwatched: weakref.WeakSet[Future[TaskResult]] = weakref.WeakSet()
        self._write_settled = True  # off after a failed write, so a struggling database is not hammered

    def run(self) -> dict[str, NodeState]:
        """Run every node that can run; returns each node's final state."""
        while self._ready or self._inflight or self._retries:
            if self._ready:
                self._start_ready()
                continue
            now = self.clock()
            while self._retries and self._retries[0][0] <= now:
                self._submit(heapq.heappop(self._retries)[1])
            if not self._inflight:
                if self._retries:
                    time.sleep(max(0.0, self._retries[0][0] - self.clock()))
                continue
            horizon = [due for due, _ in self._retries[:1]] + [d for d, _ in self._deadlines.values()]
            timeout = max(0.0, min(horizon) - now) if horizon else None
            try:
                finished = [self._completed.get(timeout=timeout)]
                while True:
                    finished.append(self._completed.get_nowait())
            except queue.Empty:
                pass
            for node, future in finished:
                if node in self._chained:  # settled once its inputs are
                    if self._inflight.get(node) is future:
                        self._parked[node] = future
                    continue
                if self._inflight.get(node) is future:  # not given up on after a timeout meanwhile
                    del self._inflight[node]
                    self._deadlines.pop(node, None)
                    self._finished(node, future)
            self._expire()
            if self._write_settled and self.recorder.settled >= WRITE_SETTLED and self._completed.empty():
                try:
                    self.recorder.flush_settled()  # while others run, so the run's last write is short
                except Exception:  # still buffered: the heartbeat and the run's last write try again
                    self._write_settled = False
        for node_id, state in self.states.items():
            if state.status == "pending":
                state.status = "skipped"
                self._record(self.graph.nodes[node_id], status="skipped", cache_hit=False)
        return self.states

    def _start_ready(self) -> None:
        batch = []
        while self._ready:
            batch.append(self._ready.popleft())
        fresh = []
        for node_id in batch:
            state = self.states[node_id]
            if node_id in self.reuse and all(stored(r, self.store) for r in self.reuse[node_id]):
                state.status, state.outputs = "succeeded", self.reuse[node_id]
                self._release(node_id)
                continue
            state.cache_key = cache_key(self.graph.nodes[node_id], self.states)
            fresh.append(node_id)
        wanted = [self.states[n].cache_key for n in fresh if self.graph.nodes[n].operator.cache]
        hits = self.tracker.cached([k for k in wanted if k]) if self.use_cache and wanted else {}
        usable = {key: hit for key, hit in hits.items() if all(stored(r, self.store) for r in hit[0])}
        logged = (
            self.tracker.node_metrics([(run, node) for _, run, node in usable.values()]) if usable else {}
        )
        for node_id in fresh:
            node, state = self.graph.nodes[node_id], self.states[node_id]
            hit = usable.get(state.cache_key or "") if node.operator.cache else None
            if hit is None:
                self._submit(node_id)
                continue
            outputs, source_run, source_node = hit
            now = datetime.now(UTC)
            self._record(
                node, status="succeeded", cache_hit=True, outputs=outputs, started_at=now, ended_at=now
            )
            if logged.get((source_run, source_node)):
                self.recorder.metrics(node_id, logged[(source_run, source_node)])
            self._succeeded(node_id, outputs)

    def _record(self, node: Node, **values: Any) -> None:
        # What does not change between attempts, given once its inputs are known.
        if node.id not in self._described and node.id not in self._chained:
            op = node.operator
            resources = self._resources.get(op.name)
            if resources is None:
                resources = self._resources[op.name] = op.resources.to_dict()
            self._described.add(node.id)
            inputs = self._inputs[node.id] = _digests(node.kwargs, self.states)  # final once described
            values.update(operator=op.name, resources=resources, inputs=inputs)
        self.recorder.node(
            node.id,
            cache_key=self.states[node.id].cache_key,
            attempts=self.states[node.id].attempts,
            **values,
        )

    def _submit(self, node_id: str, upstream: dict[str, Future[TaskResult]] | None = None) -> bool:
        """Hand ``node_id`` to the executor (chained on ``upstream`` when given); False if it would not chain."""
        node, state = self.graph.nodes[node_id], self.states[node_id]
        op = node.operator
        task = Task(
            node=node_id,
            name=op.name,
            function=op,
            signature=op.signature,
            returns=op.output_types(),
            kwargs=_marker(node.kwargs, self.states, False),
            artifact_uri=self.artifact_uri,
            resources=op.resources,
            timeout=op.timeout,
        )
        future: Future[TaskResult] | None
        try:
            if upstream and self._chain is not None:
                future = self._chain(task, upstream)
                if future is None:
                    return False
                self._chained.add(node_id)
            else:
                future = self.executor.submit(task)
        except Exception as exc:
            if upstream:
                return False
            future = Future()
            future.set_exception(exc)
        state.attempts += 1
        state.status = "running"
        self._record(node, status="running", cache_hit=False, started_at=datetime.now(UTC), error=None)
        self._inflight[node_id] = future
        future.add_done_callback(lambda done: self._completed.put((node_id, done)))
        if op.timeout is not None:
            # Workers stop an operator at its timeout; the driver gives up a little later in case one cannot.
            self._deadlines[node_id] = (self.clock() + op.timeout + 5.0, future)
        if self._chain is not None:
            self._chain_children(node_id)
            for waited in (node_id, *(upstream or ())):
                self._defer_if_unwatched(waited)
        return True

    def _defer_if_unwatched(self, node_id: str) -> None:
        """Tell the executor when only the records wait on ``node_id``: every dependant is chained on it."""
        future = self._inflight.get(node_id)
        if (
            self._defer is not None
            and future is not None
            and future not in self._unwatched
            and all(c in self._chained for c in self._children[node_id])
        ):
            self._unwatched.add(future)
            self._defer(future)

    def _chain_children(self, node_id: str) -> None:
        """Hand over each dependant of ``node_id`` whose inputs all exist or are being made."""
        for child in self._children[node_id]:
            node, state = self.graph.nodes[child], self.states[child]
            op = node.operator
            if state.status != "pending" or child in self._inflight or child in self.reuse:
                continue
            if op.timeout is not None or (self.use_cache and op.cache):  # needs its inputs' digests first
                continue
            upstream = {}
            for dep in node.deps:
                if self.states[dep].status == "succeeded":
                    continue
                future = self._inflight.get(dep)
                if future is None or self.states[dep].status != "running":
                    break
                if self.graph.nodes[dep].operator.timeout is not None:
                    # The driver may give up on it while its task still finishes: never chain on it.
                    break
                upstream[dep] = future
            else:
                self._submit(child, upstream)

    def _withdraw(self, node_id: str) -> None:
        """An input of the dependants chained on ``node_id`` failed: take them back, to wait or be skipped."""
        for child in self._children[node_id]:
            if child in self._chained:
                self._chained.discard(child)
                self._parked.pop(child, None)
                self._inflight.pop(child, None)
                state = self.states[child]
                state.status, state.attempts = "pending", state.attempts - 1
                self._record(self.graph.nodes[child], status="pending", started_at=None)
                self._withdraw(child)

    def _expire(self) -> None:
        now = self.clock()
        for node_id, (deadline, _future) in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[node_id]
                self._inflight.pop(node_id, None)
                timeout = self.graph.nodes[node_id].operator.timeout
                self._failed(
                    node_id, f"TimeoutError: operator {node_id} ran past its timeout of {timeout:g} s"
                )

    def _finished(self, node_id: str, future: Future[TaskResult]) -> None:
        try:
            result = future.result()
        except BaseException as exc:
            self._failed(node_id, "".join(traceback.format_exception(exc)))
            return
        node = self.graph.nodes[node_id]
        if result.metrics:
            self.recorder.metrics(node_id, result.metrics)
        if result.error is not None:
            self._failed(node_id, result.error)
            return
        self._record(node, status="succeeded", outputs=result.outputs, ended_at=datetime.now(UTC))
        self._succeeded(node_id, result.outputs)

    def _succeeded(self, node_id: str, outputs: list[dict[str, Any]]) -> None:
        state = self.states[node_id]
        state.status, state.outputs, state.error = "succeeded", outputs, None
        inputs = self._inputs.pop(node_id, None)
        if inputs is None:
            inputs = _digests(self.graph.nodes[node_id].kwargs, self.states)
        self.recorder.artifacts(node_id, outputs, inputs)  # the same list as its record's: one JSON text
        self._release(node_id)

    def _release(self, node_id: str) -> None:
        for child in self._children[node_id]:
            self._waiting[child] -= 1
            if self._waiting[child] == 0:
                if child in self._chained:  # already handed over: settle it, now that its inputs are
                    self._chained.discard(child)
                    self.states[child].cache_key = cache_key(self.graph.nodes[child], self.states)
                    if child in self._parked:
                        self._completed.put((child, self._parked.pop(child)))
                else:
                    self._ready.append(child)

    def _failed(self, node_id: str, error: str) -> None:
        node, state = self.graph.nodes[node_id], self.states[node_id]
        policy = node.operator.retry
        state.error = error
        self._withdraw(node_id)
        if state.attempts <= policy.retries:
            state.status = "retrying"
            self._record(node, status="retrying", error=error)
            heapq.heappush(self._retries, (self.clock() + policy.delay(state.attempts), node_id))
            return
        state.status = "failed"
        self._record(node, status="failed", error=error, ended_at=datetime.now(UTC))
