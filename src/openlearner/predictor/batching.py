"""Dynamic batching: concurrent requests for one model version coalesce into one run.

Each loaded model version has one :class:`DynamicBatcher` with one worker thread. A request
is queued with its rows; the worker takes the oldest request and waits for company until
the batch holds ``max_batch_size`` rows or ``max_delay`` has passed since that request
arrived (a worker that was busy meanwhile finds its batch already waiting, so under load
batches form without any added delay). For requests from transports that announce their
arrivals (``adaptive``), given ``arriving`` (how many requests have been started but not
yet queued), the worker waits only while some are on their way: a lone request runs at
once instead of waiting ``max_delay`` for nobody. The queue is bounded: when it is full a request is
refused at once with :class:`Overloaded` (503 with ``Retry-After``) instead of waiting
behind a backlog that only grows.

Callers get a :class:`concurrent.futures.Future`, so threads (``future.result()``) and event
loops (``asyncio.wrap_future``) share the same batches.

Announced requests on an event loop take a shorter road while the model is cheap (its
recent batches ran in under :data:`INLINE_BUDGET`): :meth:`DynamicBatcher.gather` adds
the request to the batch of the loop's current iteration, and that batch runs on the loop
itself once the iteration's other callbacks are done: every request read in the same
iteration joins it, at no added delay and with no thread hop, which for a model that runs
in tens of microseconds costs more than the model. While announced requests are still
on their way the batch waits for them, up to ``max_delay``, as the worker does; a batch
that already has company holds for two more iterations so that the requests read
meanwhile join it; the same queue bound applies. A request that finds no batch gathering,
nothing else due in the loop's iteration and nobody on the way runs at once, inside
:meth:`~DynamicBatcher.gather` itself. Requests that were not announced (an asyncio
transport that cannot tell when requests are on their way) are gathered on their loop too,
but patiently: their batch waits ``max_delay`` for company
(or until it is full) and then runs on the loop. A model whose batches take longer goes
through the worker thread, so the event loop keeps reading requests while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid, Unavailable
from openlearner.predictor.threads import normal_policy

__all__ = [
    "COMPANY_ITERATIONS",
    "INLINE_BUDGET",
    "BatchResult",
    "BatchSettings",
    "CallEnded",
    "DynamicBatcher",
    "Handoff",
    "Overloaded",
    "wait_for",
]

log = logging.getLogger("openlearner.predictor")

Tensors = dict[str, npt.NDArray[Any]]
_POLL = 0.0002
"""Seconds between looks at the arriving count while a batch waits for company."""
COMPANY_ITERATIONS = 2
"""Loop iterations a gathered batch that already has company holds for more (see :meth:`DynamicBatcher.gather`)."""
INLINE_BUDGET = 0.002
"""Seconds: a model whose recent batches ran faster than this runs its batches on the event loop."""


class Overloaded(Unavailable):
    """The model's queue is full: retry after ``retry_after`` seconds (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BatchSettings:
    """How requests to one model version are batched."""

    max_batch_size: int = 64
    """Rows one run may take (a single larger request still runs, alone)."""
    max_delay: float = 0.001
    """Seconds the oldest queued request waits for others before its batch runs."""
    max_queue: int = 256
    """Requests that may wait; one more is refused with 503 and ``Retry-After``."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise Invalid(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        if not 0 <= self.max_delay <= 1:
            raise Invalid(f"max_delay is in seconds, between 0 and 1, not {self.max_delay}")
        if self.max_queue < 1:
            raise Invalid(f"max_queue must be at least 1, not {self.max_queue}")


@dataclass
class BatchResult:
    """One request's share of a batch run: its rows of each output, and of the model input."""

    outputs: Tensors
    matrix: npt.NDArray[Any] | None
    """The joined feature rows (feature-store models), for the prediction log."""
    missing: dict[int, str] = field(default_factory=dict)
    """This request's rows (numbered from 0) that had no fresh online values."""
    batch_rows: int = 0


RunBatch = Callable[[Tensors, int], tuple[Tensors, "npt.NDArray[Any] | None", dict[int, str]]]
"""Runs the model on merged tensors: outputs, joined matrix (or None), rows without features."""


class Handoff:
    """A request's batch result, handed to its callbacks by the code that finishes the batch.

    For callers on the event loop that only add callbacks (the HTTP fast road): an asyncio
    future would run each callback in its own later step of the loop. Answers what such a
    future answers to ``done``, ``cancelled``, ``result`` and ``add_done_callback``; a
    callback that raises is logged, and the others still run.
    """

    __slots__ = ("_callbacks", "_done", "_exception", "_result", "_traceback")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Handoff], Any]] = []
        self._done = False
        self._result: BatchResult | None = None
        self._exception: BaseException | None = None
        self._traceback: TracebackType | None = None

    def done(self) -> bool:
        """Whether the batch has run (or failed)."""
        return self._done

    def cancelled(self) -> bool:
        """Never: nobody cancels a handoff."""
        return False

    def result(self) -> BatchResult:
        """The result; raises the batch's error. Only once :meth:`done`."""
        if not self._done:
            raise asyncio.InvalidStateError("the batch has not run yet")
        if self._exception is not None:  # every request of a batch shares it: keep its traceback as set
            raise self._exception.with_traceback(self._traceback)
        assert self._result is not None
        return self._result

    def add_done_callback(self, callback: Callable[[Handoff], Any]) -> None:
        """Call ``callback(self)`` once done: at once if it is already (then what it raises
        reaches the caller)."""
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def set_result(self, result: BatchResult) -> None:
        self._finish(result, None)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(None, exc)

    def _finish(self, result: BatchResult | None, exc: BaseException | None) -> None:
        if self._done:
            raise asyncio.InvalidStateError("the batch's result was handed over already")
        self._result, self._exception = result, exc
        self._traceback = None if exc is None else exc.__traceback__
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:  # as asyncio does for a callback: the batch's other requests go on
                log.exception("answering a request of a finished batch failed")


@dataclass
class _Item:
    tensors: Tensors
    rows: int
    future: Future[BatchResult] | asyncio.Future[BatchResult] | Handoff
    arrived: float
    adaptive: bool = False


@dataclass
class _Tick:
    """The batch gathering on one event loop."""

    deadline: float
    items: list[_Item] = field(default_factory=list)
    rows: int = 0
    extra: int = 0
    timer: asyncio.TimerHandle | None = None
    """For a patient batch (see :meth:`DynamicBatcher.gather`), what runs it at its deadline."""


class CallEnded(Exception):
    """The caller's call ended before its request's batch ran (see :func:`wait_for`)."""


def wait_for(
    future: Future[BatchResult], call_ends: Callable[[Callable[[], object]], bool] | None = None
) -> BatchResult:
    """Block until ``future``'s batch has run, and return its share.

    ``call_ends`` registers a callback to run when the caller's call ends, and answers False
    when it has already ended (gRPC's ``ServicerContext.add_callback``). A call that ends
    before its batch starts (the client cancelled it, or its deadline passed) cancels its
    request: the batch leaves it out, the queue forgets it, and this raises
    :class:`CallEnded` at once instead of holding the caller's thread until the batch runs.
    """
    if call_ends is not None and not call_ends(future.cancel):
        future.cancel()
    try:
        return future.result()
    except CancelledError:
        if future.cancelled():
            raise CallEnded("the call ended before its batch ran") from None
        raise  # (the model's own run raised it: an error like any other)


class DynamicBatcher:
    """Queues requests for one model version and runs them in batches on a worker thread."""

    def __init__(
        self,
        run: RunBatch,
        settings: BatchSettings | None = None,
        *,
        name: str = "model",
        on_batch: Callable[[int], Any] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        self.run = run
        self.arriving = arriving
        self.settings = settings or BatchSettings()
        self.name = name
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._ticks: dict[asyncio.AbstractEventLoop, _Tick] = {}
        self._gathered: dict[asyncio.AbstractEventLoop, int] = {}
        """Requests in batches gathering on each loop (each loop's thread counts its own)."""
        self.recent = 0.0
        """Seconds the recent batches took (a moving average)."""
        self._closed = False
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Requests waiting right now."""
        # (A loop closed with a batch still gathering, its calls cancelled, waits for nobody.)
        return len(self._queue) + sum(n for loop, n in list(self._gathered.items()) if not loop.is_closed())

    @property
    def cheap(self) -> bool:
        """Whether recent batches ran in under :data:`INLINE_BUDGET`: event loops run them themselves."""
        return self.recent < INLINE_BUDGET

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (queued requests are still answered)."""
        return self._closed

    def submit(self, tensors: Tensors, rows: int, *, adaptive: bool = False) -> Future[BatchResult]:
        """Queue one request's tensors (first dimension = ``rows``); its future gets its share.

        ``adaptive``: the request came through a transport that announces arrivals, so when
        it is the oldest its batch waits only while ``arriving()`` says others are coming;
        otherwise it waits the whole ``max_delay`` for company.
        """
        future: Future[BatchResult] = Future()
        item = _Item(tensors, rows, future, time.monotonic(), adaptive)
        with self._condition:
            if not self._closed:
                if len(self._queue) >= self.settings.max_queue:
                    self._forget_ended(everywhere=True)  # full: first forget those nobody waits for
                if len(self._queue) >= self.settings.max_queue:
                    raise Overloaded(
                        f"model {self.name} has {len(self._queue)} requests waiting, its limit; "
                        "retry in a second"
                    )
                self._queue.append(item)
                self._queued_rows += rows
                # Wake the worker only when it has something to do: a first request, a full batch,
                # or (for announced requests) an arrival it watches for. Waking it on every request
                # of a batch gathering company costs two thread switches a request, for nothing.
                if len(self._queue) == 1 or adaptive or self._queued_rows >= self.settings.max_batch_size:
                    self._condition.notify()
                return future
        # Retired while this request was on its way: answer it anyway, never fail it.
        self._run_batch([item])
        return future

    def gather(
        self, tensors: Tensors, rows: int, *, handoff: bool = False, patient: bool = False
    ) -> asyncio.Future[BatchResult] | Handoff:
        """Add a request to the batch gathering on the running event loop.

        The batch runs on the loop when the iteration's other callbacks are done, or, while
        announced requests are on their way, when they have joined or ``max_delay`` has
        passed. A batch that already holds several requests (they are coming together)
        holds for :data:`COMPANY_ITERATIONS` more iterations, within ``max_delay``, so the
        requests the loop reads meanwhile join it. A lone request never waits: when no
        batch is gathering, no other callback is due in this iteration (servers start one
        task per request, so requests read together are all due) and nobody is on the way,
        it runs here and the future returned is already done. Several calls from one
        callback therefore do not form one batch. The check reads the ready queue of
        asyncio's own loop; on another loop (uvloop, say) the request joins a batch as
        above. Raises :class:`Overloaded` when ``max_queue`` requests already wait.
        ``handoff``: answer with a :class:`Handoff` instead of an asyncio future (for callers
        that only add callbacks).

        ``patient``: the request was not announced (its transport cannot tell when requests
        are on their way, and may hand the loop one request per iteration, so the requests
        of one iteration are rarely more than one). It never runs at once: a batch
        it starts waits ``max_delay`` for company, as the worker thread would have it wait,
        or until ``max_batch_size`` rows fill it, and then runs on the loop, with no thread
        hop. An announced request that joins such a batch lets it run by the rules above.
        """
        loop = asyncio.get_running_loop()
        waiting = len(self._queue) + sum(self._gathered.values())  # (depth, without its rare case)
        if (
            waiting >= self.settings.max_queue
            and not self._closed
            and (waiting := self.depth) >= self.settings.max_queue
        ):
            raise Overloaded(
                f"model {self.name} has {waiting} requests waiting, its limit; retry in a second"
            )
        tick = self._ticks.get(loop)
        if not patient and tick is None and not getattr(loop, "_ready", True) and not self._coming():
            # Alone: no other callback is due in this iteration, and nobody is on the way.
            return self._now(loop, tensors, rows, handoff)
        limit = self.settings.max_batch_size
        if tick is None or tick.rows + rows > limit:
            if tick is not None:
                self._hurry(loop, tick)  # full: it runs from the next iteration on
            tick = self._ticks[loop] = _Tick(loop.time() + self.settings.max_delay)
            if patient:
                tick.timer = loop.call_later(self.settings.max_delay, self._flush, loop, tick)
            else:
                loop.call_soon(self._flush, loop, tick)
        elif not patient:
            self._hurry(loop, tick)
        future = Handoff() if handoff else loop.create_future()
        tick.items.append(_Item(tensors, rows, future, 0.0, True))
        tick.rows += rows
        self._gathered[loop] = self._gathered.get(loop, 0) + 1
        if tick.rows >= limit:
            self._hurry(loop, tick)
        return future

    def _hurry(self, loop: asyncio.AbstractEventLoop, tick: _Tick) -> None:
        """Let a patient batch run by the usual rules (from the next iteration) instead of at its deadline."""
        if tick.timer is not None:
            tick.timer.cancel()
            tick.timer = None
            loop.call_soon(self._flush, loop, tick)

    def _coming(self) -> bool:
        return self.arriving is not None and self.arriving() > 0

    def _now(
        self, loop: asyncio.AbstractEventLoop, tensors: Tensors, rows: int, handoff: bool = False
    ) -> asyncio.Future[BatchResult] | Handoff:
        """Run a lone request's batch at once; the future returned is done."""
        future = Handoff() if handoff else loop.create_future()
        try:
            [result] = self._compute([_Item(tensors, rows, future, 0.0, True)])
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop, tick: _Tick) -> None:
        if tick.timer is not None:  # it fired (maybe a tick early): _hurry must not run it again
            tick.timer.cancel()
            tick.timer = None
        if (
            tick.rows < self.settings.max_batch_size and loop.time() < tick.deadline and self._coming()
        ):  # someone is on the way: let them join, and look again shortly
            loop.call_later(_POLL, self._flush, loop, tick)
            return
        if (
            len(tick.items) > 1
            and tick.extra < COMPANY_ITERATIONS
            and tick.rows < self.settings.max_batch_size
            and loop.time() < tick.deadline
        ):  # requests are coming together: those read in the next iterations join this batch
            tick.extra += 1
            loop.call_soon(self._flush, loop, tick)
            return
        if self._ticks.get(loop) is tick:
            del self._ticks[loop]
        left = self._gathered[loop] - len(tick.items)
        if left:
            self._gathered[loop] = left
        else:
            del self._gathered[loop]  # (no reference kept to a loop that may close)
        live = [item for item in tick.items if not item.future.done()]  # cancelled: the client went away
        if not live:
            return
        try:
            results = self._compute(live)
        except Exception as exc:
            for item in live:
                if not item.future.done():  # (a handoff's callback may have cancelled another's future)
                    item.future.set_exception(exc)
            return
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def close(self) -> None:
        """Stop taking new batches once every queued request is answered (drain)."""
        with self._condition:
            self._closed = True
            self._condition.notify()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to finish draining."""
        self._worker.join(timeout)

    def _take(self) -> list[_Item] | None:
        limit, delay = self.settings.max_batch_size, self.settings.max_delay
        with self._condition:
            while True:
                self._forget_ended()
                if self._queue:
                    break
                if self._closed:
                    return None
                self._condition.wait()
            deadline = self._queue[0].arrived + delay
            while self._queued_rows < limit and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.arriving is None or not self._queue[0].adaptive:
                    self._condition.wait(remaining)
                elif self.arriving() > 0:  # someone is on the way: look again shortly
                    self._condition.wait(min(remaining, _POLL))
                else:
                    break
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= limit:
                item = self._queue.popleft()
                rows += item.rows
                batch.append(item)
            self._queued_rows -= rows
        return batch

    def _forget_ended(self, everywhere: bool = False) -> None:
        """Drop the queued requests whose callers stopped waiting (their futures cancelled, see
        :func:`wait_for`) from the head of the queue, or from all of it: they no longer count
        against ``max_queue`` nor make a batch wait for company. (Under the condition.)"""
        queue = self._queue
        if not everywhere:
            while queue and queue[0].future.cancelled():
                self._queued_rows -= queue.popleft().rows
            return
        kept: deque[_Item] = deque()
        for item in queue:
            if item.future.cancelled():
                self._queued_rows -= item.rows
            else:
                kept.append(item)
        self._queue = kept

    def _work(self) -> None:
        normal_policy()  # (started by a gRPC thread, it would run under that thread's policy)
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]  # type: ignore[union-attr]
        if not live:
            return
        try:
            results = self._compute(live)
        except BaseException as exc:  # every waiting request learns why; the worker keeps serving
            if not isinstance(exc, Exception):
                raise
            for item in live:
                item.future.set_exception(exc)
            return
        for item, result in zip(live, results, strict=True):
            item.future.set_result(result)

    def _compute(self, live: list[_Item]) -> list[BatchResult]:
        """Run the model once over ``live``'s rows and cut its outputs into each request's share."""
        total = sum(item.rows for item in live)
        began = time.perf_counter()
        if len(live) == 1:
            merged = live[0].tensors
        else:
            merged = {name: np.concatenate([item.tensors[name] for item in live]) for name in live[0].tensors}
        outputs, matrix, missing = self.run(merged, total)
        self.recent = 0.8 * self.recent + 0.2 * (time.perf_counter() - began)
        if self.on_batch is not None:
            self.on_batch(total)
        if len(live) == 1:  # a lone request: its share is the whole run
            return [BatchResult(outputs, matrix, missing, total)]
        results = []
        start = 0
        for item in live:
            end = start + item.rows
            share = {
                name: value[start:end] if value.ndim and value.shape[0] == total else value
                for name, value in outputs.items()
            }
            own = {row - start: why for row, why in missing.items() if start <= row < end}
            results.append(BatchResult(share, None if matrix is None else matrix[start:end], own, total))
            start = end
        return results
