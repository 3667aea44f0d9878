"""The predictor's own request counts expose what prometheus_client's Counter and Histogram would."""

from __future__ import annotations

import random
import re
import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from openlearner.predictor.metrics import _LATENCY_BUCKETS, PredictorMetrics


def _without_created(text: str) -> list[str]:
    """The exposition's lines with the values of its ``_created`` samples blanked (each metric
    notes when it was made) and the metrics that only one of the two registries has left out."""
    lines = [re.sub(r"(_created\{.*\}) .*", r"\1", line) for line in text.splitlines()]
    return [line for line in lines if "openlearner_predictor_requests" in line or "request_seconds" in line]


def test_requests_and_latency_are_exposed_sample_for_sample_as_prometheus_client_would() -> None:
    metrics = PredictorMetrics()
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "openlearner_predictor_requests",
        "Inference requests answered, per model and version.",
        ["model", "version"],
        registry=registry,
    )
    latency = Histogram(
        "openlearner_predictor_request_seconds",
        "Time from a decoded request to its answer (queueing, batching, features, model).",
        ["model", "version"],
        buckets=_LATENCY_BUCKETS,
        registry=registry,
    )
    rng = random.Random(7)
    seconds = [*_LATENCY_BUCKETS, 0.0, 7.5, *(rng.expovariate(1 / 0.003) for _ in range(500))]  # bounds too
    for model, version, values in (("ads", "1", seconds), ("ads", "2", seconds[:40]), ("mlp", "1", [0.02])):
        served = metrics.served(model, version)
        assert metrics.served(model, version) is served  # one per version
        for value in values:
            served.add(value)
            requests.labels(model, version).inc()
            latency.labels(model, version).observe(value)
    ours, theirs = (
        _without_created(metrics.render().decode()),
        _without_created(generate_latest(registry).decode()),
    )
    assert ours == theirs and len(ours) > 40


def test_counts_from_many_threads_are_all_kept() -> None:
    served = PredictorMetrics().served("ads", "1")

    def count() -> None:
        for _ in range(20_000):
            served.add(0.0003)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between nearly any two bytecodes
    try:
        threads = [threading.Thread(target=count) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    buckets, total = served.read()
    assert sum(buckets) == 80_000 and buckets[2] == 80_000
    assert abs(total - 80_000 * 0.0003) < 1e-6
