"""Dynamic batching: coalescing, splitting answers back, the bounded queue, draining and errors.

The batcher runs a plain function that records the batches it is given; the worker thread
and queue are the real ones. No timing asserts: where a test needs requests to wait
together, ``max_delay`` is long and the batch is filled, which flushes it at once.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from openlearner.errors import Invalid
from openlearner.predictor import DataPlane
from openlearner.predictor.batching import (
    BatchResult,
    BatchSettings,
    CallEnded,
    DynamicBatcher,
    Handoff,
    Overloaded,
    wait_for,
)
from openlearner.predictor.rest import create_app


class Recorder:
    """Doubles its input; remembers each batch's row count; can be held until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, tensors: dict[str, np.ndarray], rows: int) -> Any:
        self.started.set()
        self.release.wait(30)
        self.batches.append(rows)
        x = tensors["x"]
        if np.any(x < 0):
            raise Invalid("negative input")
        return (
            {"y": x * 2, "total": np.array(rows)},
            None,
            {r: "no features" for r in range(rows) if x[r] == 7},
        )


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32)}


def test_concurrent_requests_run_as_one_batch_and_each_gets_its_own_rows() -> None:
    import time

    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=6, max_delay=1.0))
    began = time.monotonic()
    futures = [batcher.submit(rows(1, 2), 2), batcher.submit(rows(3), 1), batcher.submit(rows(4, 5, 6), 3)]
    results = [f.result(10) for f in futures]
    assert run.batches == [6] and time.monotonic() - began < 0.5  # full: the worker is woken, no max_delay
    assert [r.outputs["y"].tolist() for r in results] == [[2, 4], [6], [8, 10, 12]]
    assert all(r.batch_rows == 6 for r in results)
    assert results[0].outputs["total"].tolist() == 6  # an output without a batch dimension is shared
    batcher.close()


def test_a_request_alone_in_its_run_gets_what_it_gets_in_company() -> None:
    """A lone request's share is its run's whole result, as its slice of a shared run would be."""
    batcher = DynamicBatcher(Recorder(), BatchSettings(max_batch_size=6, max_delay=1.0))
    alone = batcher.submit(rows(7, 2), 2).result(10)
    first, second = batcher.submit(rows(7, 2), 2), batcher.submit(rows(3), 1)
    together = first.result(10)
    assert second.result(10).outputs["y"].tolist() == [6]
    assert alone.outputs["y"].tolist() == together.outputs["y"].tolist() == [14, 4]
    assert alone.missing == together.missing == {0: "no features"}
    assert (alone.batch_rows, together.batch_rows) == (2, 3)
    batcher.close()


def test_a_lone_request_runs_once_max_delay_has_passed() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=100, max_delay=0.01))
    assert batcher.submit(rows(1), 1).result(10).outputs["y"].tolist() == [2]
    assert run.batches == [1]
    batcher.close()


def test_batches_never_exceed_max_batch_size_but_a_larger_request_runs_alone() -> None:
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=3, max_delay=0))
    first = batcher.submit(rows(0), 1)
    assert run.started.wait(10)  # the worker is busy: the next requests queue up
    rest = [batcher.submit(rows(1, 1), 2), batcher.submit(rows(2), 1), batcher.submit(rows(*range(5)), 5)]
    run.release.set()
    for f in [first, *rest]:
        f.result(10)
    assert run.batches == [1, 3, 5]
    batcher.close()


def test_a_full_queue_refuses_at_once_and_recovers() -> None:
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=1, max_delay=0, max_queue=2), name="m:1")
    running = batcher.submit(rows(1), 1)
    assert run.started.wait(10)
    queued = [batcher.submit(rows(2), 1), batcher.submit(rows(3), 1)]
    assert batcher.depth == 2
    with pytest.raises(Overloaded, match="m:1 has 2 requests waiting") as refused:
        batcher.submit(rows(4), 1)
    assert refused.value.retry_after == 1
    assert refused.value.http_status == 503
    run.release.set()
    assert [f.result(10).outputs["y"].tolist() for f in [running, *queued]] == [[2], [4], [6]]
    assert batcher.submit(rows(5), 1).result(10).outputs["y"].tolist() == [10]
    batcher.close()


def test_requests_whose_callers_stopped_waiting_are_forgotten_and_never_run() -> None:
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=4, max_delay=0, max_queue=2), name="m:1")
    running = batcher.submit(rows(1), 1)
    assert run.started.wait(10)
    for future in [batcher.submit(rows(2), 1), batcher.submit(rows(3), 1)]:
        with pytest.raises(CallEnded):  # a call that has ended already (gRPC's add_callback says False)
            wait_for(future, lambda end: False)
    # The queue is full of requests nobody waits for: they are forgotten, not counted.
    waiting = batcher.submit(rows(4), 1)
    assert batcher.depth == 1
    run.release.set()
    assert wait_for(running).outputs["y"].tolist() == [2]
    assert wait_for(waiting).outputs["y"].tolist() == [8]
    assert run.batches == [1, 1]  # neither ended request's row ran
    batcher.close()


def test_a_request_nobody_waits_for_does_not_hold_the_next_batch_for_company() -> None:
    import time

    # A request whose caller stopped waiting, at the head of the queue, would make the batch
    # behind it wait for company until its deadline (max_delay after it arrived); forgotten, the
    # announced request behind it runs as soon as nobody is on the way.
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=4, max_delay=1.0), arriving=lambda: 0)
    running = batcher.submit(rows(1), 1, adaptive=True)
    assert run.started.wait(10)
    with pytest.raises(CallEnded):
        wait_for(batcher.submit(rows(2), 1), lambda end: False)  # not announced: it would wait
    waiting = batcher.submit(rows(3), 1, adaptive=True)
    released = time.monotonic()
    run.release.set()
    assert wait_for(running).outputs["y"].tolist() == [2]
    assert wait_for(waiting).outputs["y"].tolist() == [6]
    assert time.monotonic() - released < 0.7  # not the second it would have waited
    assert run.batches == [1, 1]
    batcher.close()


def test_a_request_whose_call_ends_after_its_batch_started_gets_its_answer() -> None:
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=1, max_delay=0))
    future = batcher.submit(rows(1), 1)
    assert run.started.wait(10)
    ends: list[Callable[[], object]] = []
    answers: list[BatchResult] = []
    waiter = threading.Thread(
        target=lambda: answers.append(wait_for(future, lambda end: ends.append(end) or True))
    )
    waiter.start()
    while not ends:
        waiter.join(0.01)
    assert ends[0]() is False  # the call ends while its batch runs: too late to leave it
    run.release.set()
    waiter.join(10)
    assert [a.outputs["y"].tolist() for a in answers] == [[2]]
    batcher.close()


def test_an_error_reaches_every_request_of_its_batch_and_the_worker_goes_on() -> None:
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=2, max_delay=1.0))
    bad = [batcher.submit(rows(-1), 1), batcher.submit(rows(1), 1)]
    run.release.set()
    for future in bad:
        with pytest.raises(Invalid, match="negative"):
            future.result(10)
    assert batcher.submit(rows(3), 1).result(10).outputs["y"].tolist() == [6]
    batcher.close()


def test_rows_without_features_are_reported_per_request() -> None:
    batcher = DynamicBatcher(Recorder(), BatchSettings(max_batch_size=4, max_delay=1.0))
    first, second = batcher.submit(rows(7, 1), 2), batcher.submit(rows(1, 7), 2)
    assert first.result(10).missing == {0: "no features"}
    assert second.result(10).missing == {1: "no features"}
    batcher.close()


def test_close_drains_the_queue_and_later_requests_are_still_answered() -> None:
    run = Recorder(hold=True)
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=1, max_delay=0))
    futures = [batcher.submit(rows(i), 1) for i in range(4)]
    assert run.started.wait(10)
    batcher.close()
    late = threading.Thread(target=lambda: futures.append(batcher.submit(rows(9), 1)))
    run.release.set()
    late.start()
    late.join(10)
    assert [f.result(10).outputs["y"].tolist() for f in futures] == [[0], [2], [4], [6], [18]]
    batcher.join(10)
    assert batcher.closed


def test_a_batch_waits_for_announced_requests_only() -> None:
    run = Recorder()
    arriving = [0]
    batcher = DynamicBatcher(
        run, BatchSettings(max_batch_size=3, max_delay=1.0), arriving=lambda: arriving[0]
    )
    assert batcher.submit(rows(1), 1, adaptive=True).result(10).batch_rows == 1  # nobody coming: at once
    arriving[0] = 2  # two on their way: the first waits for them (the batch fills, so no timing here)
    futures = [batcher.submit(rows(v), 1, adaptive=True) for v in (1, 2, 3)]
    assert [f.result(10).batch_rows for f in futures] == [3, 3, 3]
    assert run.batches == [1, 3]
    batcher.close()


@pytest.mark.parametrize(
    "settings",
    [{"max_batch_size": 0}, {"max_delay": -0.001}, {"max_delay": 2.0}, {"max_queue": 0}],
    ids=str,
)
def test_settings_are_checked(settings: dict[str, float]) -> None:
    with pytest.raises(Invalid):
        BatchSettings(**settings)  # type: ignore[arg-type]


def test_rest_answers_503_with_retry_after_when_a_model_s_queue_is_full(served: Any) -> None:
    """One request waits for company (max_delay 1 s) in a queue of one; the other is refused at once.

    A third request is announced and never comes, so the first keeps waiting for it.
    """
    plane = DataPlane(
        served.ws.registry,
        served.ws.features,
        batching=BatchSettings(max_batch_size=64, max_delay=1.0, max_queue=1),
    )
    plane.route("raw_ctr", None, _empty())  # loaded and warm before the race
    plane.announce()
    responses = sorted(asyncio.run(_posted_together(plane, 2)), key=lambda r: r.status_code)
    assert [r.status_code for r in responses] == [200, 503]
    assert responses[1].headers["retry-after"] == "1"
    assert "requests waiting" in responses[1].json()["error"]
    assert plane.arriving() == 1  # the two that came are settled, answered or refused
    metrics = plane.metrics.render().decode()
    assert 'openlearner_predictor_errors_total{model="raw_ctr",status="503",version="1"} 1.0' in metrics
    plane.close()


async def _posted_together(plane: DataPlane, count: int) -> list[httpx.Response]:
    """``count`` single-row requests to ``raw_ctr``, sent at once through the REST app."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    transport = httpx.ASGITransport(app=create_app(plane))
    async with httpx.AsyncClient(transport=transport, base_url="http://predictor") as client:
        return list(
            await asyncio.gather(*(client.post("/v2/models/raw_ctr/infer", json=body) for _ in range(count)))
        )


def _empty() -> Any:
    from openlearner.predictor.protocol import InferenceRequest

    return InferenceRequest([])


# -- gathering on the event loop (cheap models, announced requests) ---------------------------------


def _requests(batcher: DynamicBatcher, *batches: dict[str, np.ndarray]) -> list[asyncio.Task[Any]]:
    """One task per request, as a server starts them: their first steps run in one loop iteration."""

    async def request(tensors: dict[str, np.ndarray]) -> Any:
        return await batcher.gather(tensors, len(tensors["x"]))

    return [asyncio.create_task(request(tensors)) for tensors in batches]


def _watch(batcher: DynamicBatcher, run: Recorder) -> tuple[list[str], list[int]]:
    """Have ``batcher`` run ``run``, noting each batch's thread and the depth it left."""
    threads: list[str] = []
    depths: list[int] = []

    def recording(tensors: dict[str, np.ndarray], n: int) -> Any:
        threads.append(threading.current_thread().name)
        depths.append(batcher.depth)
        return run(tensors, n)

    batcher.run = recording
    return threads, depths


def test_requests_gathered_in_one_loop_iteration_run_as_one_batch_on_the_loop() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=4, max_delay=1.0))
    threads, depths = _watch(batcher, run)

    async def go() -> list[Any]:
        # Five rows do not fit one batch of four, so the last two rows start another.
        return list(await asyncio.gather(*_requests(batcher, rows(1), rows(2, 3), rows(4, 5))))

    results = asyncio.run(go())
    assert sorted(run.batches) == [2, 3]  # the one with company holds a little longer, so runs second
    assert [r.outputs["y"].tolist() for r in results] == [[2], [4, 6], [8, 10]]
    assert [r.batch_rows for r in results] == [3, 3, 2]
    assert threads == [threading.main_thread().name] * 2  # on the loop itself, no thread hop
    assert depths == [2, 0]  # the last request's batch ran first, while the other two waited for company
    assert batcher.depth == 0 and batcher.cheap
    batcher.close()


def test_a_batch_with_company_takes_in_requests_read_in_the_next_iterations_and_a_lone_one_does_not_wait() -> (
    None
):
    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=8, max_delay=1.0))

    async def go() -> None:
        together = _requests(batcher, rows(1), rows(2))
        await asyncio.sleep(0)  # their first steps: they gather
        together += _requests(batcher, rows(3))  # read one iteration later: joins the batch with company
        assert [r.batch_rows for r in await asyncio.gather(*together)] == [3, 3, 3]
        lone = batcher.gather(rows(4), 1)  # nothing else in this iteration and nobody on the way
        assert lone.done()  # ran at once, inside gather
        assert (await lone).batch_rows == 1

    asyncio.run(go())
    assert run.batches == [3, 1]
    batcher.close()


def test_handoffs_are_answered_by_the_batch_that_finishes_them(caplog: pytest.LogCaptureFixture) -> None:
    """A caller that only adds callbacks (the HTTP fast road) asks for handoffs: the run that
    finishes the batch calls them, in the same step of the loop; one that raises is logged."""
    batcher = DynamicBatcher(Recorder(), BatchSettings(max_batch_size=8, max_delay=1.0))
    answered: list[tuple[str, Any]] = []

    def answer(name: str) -> Callable[[Handoff], None]:
        def record(done: Handoff) -> None:
            try:
                answered.append((name, done.result().outputs["y"].tolist()))
            except Invalid as exc:
                answered.append((name, str(exc)))
            if name == "b":
                raise RuntimeError("a reply that could not be written")

        return record

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: None)  # something else is due: the requests gather, none runs alone
        handoffs = [batcher.gather(rows(v), 1, handoff=True) for v in (1, 2, 3)]
        assert all(isinstance(h, Handoff) and not h.done() for h in handoffs)
        with pytest.raises(asyncio.InvalidStateError):
            handoffs[0].result()
        for name, handoff in zip("abc", handoffs, strict=True):
            handoff.add_done_callback(answer(name))
        steps = 0
        while len(answered) < 3:
            await asyncio.sleep(0)
            steps += 1
        assert answered == [("a", [2]), ("b", [4]), ("c", [6])]  # all at once, "b"'s error notwithstanding
        # Asyncio futures of the same batch would be answered one step of the loop later.
        loop.call_soon(lambda: None)
        futures = [batcher.gather(rows(v), 1) for v in (1, 2, 3)]
        called: list[int] = []
        for future in futures:
            assert isinstance(future, asyncio.Future)
            future.add_done_callback(lambda _: called.append(1))
        future_steps = 0
        while len(called) < 3:
            await asyncio.sleep(0)
            future_steps += 1
        assert steps == future_steps - 1
        assert handoffs[1].done() and not handoffs[1].cancelled()
        late: list[Any] = []
        handoffs[0].add_done_callback(lambda done: late.append(done.result().batch_rows))
        assert late == [3]  # added once done: called at once
        failing = batcher.gather(rows(-1), 1, handoff=True)  # alone now: runs inside gather
        assert failing.done()
        with pytest.raises(Invalid, match="negative"):
            failing.result()

    with caplog.at_level("ERROR", logger="openlearner.predictor"):
        asyncio.run(go())
    assert "answering a request of a finished batch failed" in caplog.text
    batcher.close()


def test_a_handoff_is_handed_over_once_and_keeps_its_error_as_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handoff = Handoff()
    called: list[str] = []

    def cancelled(_: Handoff) -> None:
        called.append("first")
        raise asyncio.CancelledError  # not an Exception: still logged, and the next still runs

    handoff.add_done_callback(cancelled)
    handoff.add_done_callback(lambda _: called.append("second"))
    try:
        raise Invalid("the batch failed")
    except Invalid as exc:
        with caplog.at_level("ERROR", logger="openlearner.predictor"):
            handoff.set_exception(exc)
    assert called == ["first", "second"] and "finished batch failed" in caplog.text
    depths = []
    for _ in range(5):  # every request of a batch asks: the traceback does not grow with each
        with pytest.raises(Invalid) as raised:
            handoff.result()
        depths.append(len(traceback.extract_tb(raised.value.__traceback__)))
    assert len(set(depths)) == 1
    with pytest.raises(asyncio.InvalidStateError):
        handoff.set_result(BatchResult({}, None))


def test_a_lone_request_that_fails_gets_its_error_at_once() -> None:
    batcher = DynamicBatcher(Recorder(), BatchSettings(max_batch_size=8, max_delay=1.0))

    async def go() -> None:
        lone = batcher.gather(rows(-1), 1)
        assert lone.done()  # ran inside gather
        with pytest.raises(Invalid, match="negative"):
            await lone
        assert batcher.depth == 0
        assert (await batcher.gather(rows(2), 1)).outputs["y"].tolist() == [4]  # the next is served

    asyncio.run(go())
    batcher.close()


def test_a_gathered_batch_waits_for_announced_requests_then_runs_without_them_at_max_delay() -> None:
    run = Recorder()
    arriving = [1]
    batcher = DynamicBatcher(
        run, BatchSettings(max_batch_size=8, max_delay=0.05), arriving=lambda: arriving[0]
    )

    async def go() -> list[Any]:
        loop = asyncio.get_running_loop()
        first = batcher.gather(rows(1), 1)

        async def late() -> Any:  # the announced request arrives a few iterations later
            await asyncio.sleep(0.005)
            arriving[0] = 0
            return await batcher.gather(rows(2), 1)

        began = loop.time()
        both = await asyncio.gather(first, late())
        waited = loop.time() - began
        arriving[0] = 1  # announced, and never comes: the batch runs at max_delay without it
        alone = await batcher.gather(rows(3), 1)
        return [*both, alone, waited]

    first, second, alone, waited = asyncio.run(go())
    assert run.batches == [2, 1]
    assert first.batch_rows == second.batch_rows == 2 and alone.batch_rows == 1
    assert waited < 1.0
    batcher.close()


def test_patient_requests_gather_over_iterations_until_max_delay_and_run_on_the_loop() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=8, max_delay=0.05))
    threads, depths = _watch(batcher, run)

    async def go() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        lone = batcher.gather(rows(1), 1, patient=True)
        assert not lone.done()  # alone, yet it does not run at once: gRPC cannot say who is coming
        later = []
        for value in (2, 3):  # one a few iterations later, as grpc.aio hands them over
            for _ in range(3):
                await asyncio.sleep(0)
            later.append(batcher.gather(rows(value), 1, patient=True))
        assert batcher.depth == 3 and not run.batches
        results = [await lone, *[await f for f in later]]
        return results, loop.time() - began

    results, waited = asyncio.run(go())
    assert run.batches == [3] and [r.outputs["y"].tolist() for r in results] == [[2], [4], [6]]
    assert waited >= 0.04  # it waited for company (timers may fire up to a clock tick early)
    assert threads == [threading.main_thread().name] and depths == [0]  # on the loop, no thread hop
    assert batcher.depth == 0 and not batcher._gathered  # no loop is kept
    batcher.close()


def test_a_patient_batch_runs_once_full_or_when_an_announced_request_joins_it() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=3, max_delay=1.0))

    async def go() -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        full = [batcher.gather(rows(v), 1, patient=True) for v in (1, 2, 3)]
        over = batcher.gather(rows(4, 5), 2, patient=True)  # does not fit: starts the next batch
        assert [r.batch_rows for r in await asyncio.gather(*full)] == [3, 3, 3]
        joined = batcher.gather(rows(6), 1)  # announced: the batch runs by the usual rules
        assert [r.outputs["y"].tolist() for r in await asyncio.gather(over, joined)] == [[8, 10], [12]]
        assert loop.time() - began < 0.5  # neither waited for its max_delay of a second

    asyncio.run(go())
    assert run.batches == [3, 3]
    batcher.close()


def test_a_patient_batch_whose_timer_fires_early_runs_once() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, BatchSettings(max_batch_size=3, max_delay=0.05))

    errors: list[dict[str, Any]] = []

    async def go() -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        first = [batcher.gather(rows(v), 1, patient=True) for v in (1, 2)]
        tick = batcher._ticks[loop]
        tick.deadline = loop.time() + 5  # as on a loop whose timers fire early: it holds for company
        batcher._flush(loop, tick)  # what its timer does
        last = batcher.gather(rows(3), 1)  # fills it, while it holds
        answered = list(await asyncio.gather(*first, last))
        for _ in range(5):  # a second flush, had one been scheduled, runs meanwhile
            await asyncio.sleep(0)
        return answered

    results = asyncio.run(go())
    assert not errors  # (a batch flushed twice fails in a loop callback)
    assert run.batches == [3] and [r.outputs["y"].tolist() for r in results] == [[2], [4], [6]]
    assert batcher.depth == 0 and not batcher._gathered
    batcher.close()


def test_gathering_refuses_past_the_queue_bound_and_reports_errors_to_each_request() -> None:
    batcher = DynamicBatcher(Recorder(), BatchSettings(max_batch_size=8, max_delay=1.0, max_queue=2))

    async def go() -> list[Any]:
        return list(
            await asyncio.gather(*_requests(batcher, rows(-1), rows(1), rows(2)), return_exceptions=True)
        )

    first, second, third = asyncio.run(go())
    assert isinstance(third, Overloaded) and "2 requests waiting" in str(third)
    assert all(isinstance(o, Invalid) and "negative" in str(o) for o in (first, second))
    batcher.close()


def test_a_slow_model_is_not_cheap_and_its_requests_go_through_the_worker() -> None:
    import time

    from openlearner.predictor.batching import INLINE_BUDGET

    def slow(tensors: dict[str, np.ndarray], n: int) -> Any:
        time.sleep(INLINE_BUDGET * 3)
        return {"y": tensors["x"]}, None, {}

    batcher = DynamicBatcher(slow, BatchSettings(max_batch_size=1, max_delay=0))
    for _ in range(5):
        batcher.submit(rows(1), 1).result(10)
    assert batcher.recent > INLINE_BUDGET and not batcher.cheap
    batcher.close()


def test_rest_batches_concurrent_requests_of_a_cheap_model_on_the_loop(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features, batching=BatchSettings(max_batch_size=64))
    plane.route("raw_ctr", None, _empty())  # loaded and warm before the burst
    responses = asyncio.run(_posted_together(plane, 6))
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.content for r in responses}) == 1
    metrics = plane.metrics.render().decode()
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('openlearner_predictor_batch_rows_count{model="raw_ctr"')
    )
    assert count < 6  # fewer model runs than requests: they were batched
    plane.close()
