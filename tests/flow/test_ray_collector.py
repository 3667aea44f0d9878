"""The Ray executor's collector and task body, without Ray: a fake ``ray`` module records each wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from openlearner import Workspace
from openlearner.flow import operator
from openlearner.flow.executors.ray import _Collector, _RayFuture, _runner
from openlearner.flow.operator import log_metric
from openlearner.flow.task import Task, Upstream
from openlearner.flow.values import save_value


class FakeRay:
    """``wait`` and ``get`` over refs that tests finish by hand."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.values: dict[str, Any] = {}
        self.lock = threading.Lock()

    def finish(self, ref: str, value: Any) -> None:
        with self.lock:
            self.values[ref] = value

    def wait(self, refs: list[str], num_returns: int, timeout: float) -> tuple[list[str], list[str]]:
        self.timeouts.append(timeout)
        time.sleep(timeout)
        with self.lock:
            ready = [r for r in refs if r in self.values]
        return ready, [r for r in refs if r not in ready]

    def get(self, refs: Any) -> Any:
        with self.lock:
            return [self.values[r] for r in refs] if isinstance(refs, list) else self.values[refs]


def _until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_collector_waits_longer_only_while_every_task_is_deferred() -> None:
    ray = FakeRay()
    collector = _Collector(ray)
    try:
        chained = _RayFuture("chained")
        chained.deferred = True  # what RayExecutor.defer does
        collector.add(chained)
        _until(lambda: len(ray.timeouts) >= 3)
        assert set(ray.timeouts) == {_Collector.PATIENCE}
        waited_on = _RayFuture("waited-on")  # the engine needs this one: short waits again
        collector.add(waited_on)
        seen = len(ray.timeouts)
        _until(lambda: len(ray.timeouts) >= seen + 3)
        assert ray.timeouts[-1] == _Collector.WINDOW
        ray.finish("waited-on", [[{"kind": "json", "digest": "d", "value": 1}], [], None, 0.5])
        result = waited_on.result(timeout=5)
        assert result.outputs[0]["value"] == 1 and result.error is None and result.seconds == 0.5
        seen = len(ray.timeouts)
        _until(lambda: len(ray.timeouts) >= seen + 3)
        assert ray.timeouts[-1] == _Collector.PATIENCE  # only the deferred one is left
        ray.finish("chained", [[], [["loss", 0.25, 1, 0.0]], None, 0.1])
        assert chained.result(timeout=5).metrics == [("loss", 0.25, 1, 0.0)]
    finally:
        collector.stop()


@operator(cache=False)
def scaled(x: int, factor: int = 2) -> int:
    log_metric("scaled", x * factor, step=0)
    return x * factor


def test_a_ray_task_body_takes_and_returns_plain_lists(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    try:
        upstream = [[save_value(3, ws.flow.artifacts)], [], None, 0.0]
        task = Task(
            "scaled", scaled.name, scaled, scaled.signature, scaled.output_types(), {}, ws.flow.artifact_uri
        )
        body = _runner(task)
        payload = ["scaled", {"x": {"$upstream": [0, 0]}, "factor": 5}, ws.flow.artifact_uri, None]
        outputs, metrics, error, seconds = result = body(payload, upstream)
        assert seconds >= 0
        # Lists all the way down, which Ray moves as MessagePack; a tuple would go to pickle.
        assert type(result) is list and type(metrics) is list and all(type(m) is list for m in metrics)
        assert error is None and outputs[0]["value"] == 15 and metrics[0][:3] == ["scaled", 15, 0]
        failed = [[], [], "Traceback ...", 0.0]
        assert body(payload, failed)[2] == "not run: an upstream operator failed"
    finally:
        ws.close()


def test_upstream_markers_resolve_to_the_named_output() -> None:
    from openlearner.flow.executors.ray import _from_plain, _to_plain

    kwargs = {"a": Upstream("n1", 1), "b": [Upstream("n2", 0), 4], "c": {"k": "v"}}
    plain = _to_plain(kwargs, {"n1": 0, "n2": 1})
    assert plain == {"a": {"$upstream": [0, 1]}, "b": [{"$upstream": [1, 0]}, 4], "c": {"k": "v"}}
    results = [[[{"digest": "x0"}, {"digest": "x1"}]], [[{"digest": "y0"}]]]
    back = _from_plain(plain, results)
    assert (
        back["a"].ref == {"digest": "x1"} and back["b"][0].ref == {"digest": "y0"} and back["c"] == {"k": "v"}
    )
