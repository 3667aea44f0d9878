"""Prometheus metrics of one predictor (``GET /metrics``), in a registry of its own.

Each :class:`PredictorMetrics` keeps its own ``CollectorRegistry``, so several data planes
in one process (tests, library mode next to a server) never share or clash on counters.
"""

from __future__ import annotations

import contextlib
import threading
import time
from bisect import bisect_left
from collections import Counter as CounterType
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "PredictorMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class PredictorMetrics:
    """Requests, errors, latency, batch sizes, queue depth, feature misses and load failures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "version"]
        self._served: dict[tuple[str, str], Served] = {}
        self._served_lock = threading.Lock()
        self.registry.register(_Requests(self._served))
        self.errors = Counter(
            "openlearner_predictor_errors",
            "Requests answered with an error, per model, version ('' when unresolved) and status.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.registry.register(_Latency(self._served))
        self.batch_size = Histogram(
            "openlearner_predictor_batch_rows",
            "Rows per model run after dynamic batching.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "openlearner_predictor_queue_depth",
            "Requests waiting in a model version's batching queue.",
            labels,
            registry=self.registry,
        )
        self.feature_misses = _Misses()
        self.registry.register(self.feature_misses)
        self.load_failures = Counter(
            "openlearner_predictor_load_failures",
            "Attempts to load a model version that failed (corrupt or missing artifact, gone features).",
            labels,
            registry=self.registry,
        )
        self.shadow = Counter(
            "openlearner_predictor_shadow_requests",
            "Requests mirrored to a shadow version, per shadow model version and outcome.",
            [*labels, "outcome"],
            registry=self.registry,
        )

    def served(self, model: str, version: str) -> Served:
        """Where requests answered by ``model`` ``version`` are counted
        (``openlearner_predictor_requests_total`` and ``openlearner_predictor_request_seconds``)."""
        with self._served_lock:
            return self._served.setdefault((model, version), Served())

    def watch_queue(self, model: str, version: str, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the queue depth of ``model`` ``version`` at each scrape."""
        self.queue_depth.labels(model, version).set_function(depth)

    def forget_queue(self, model: str, version: str) -> None:
        """Stop reporting a retired version's queue."""
        with contextlib.suppress(KeyError):
            self.queue_depth.remove(model, version)

    def watch_misses(self, model: str, version: str, misses: Callable[[], Mapping[str, int]]) -> None:
        """Report ``misses()`` (feature → rows served its default, so far) at each scrape.

        The feature join counts its misses itself, so a batch pays for no metric updates. A
        retired version keeps being reported, since its counts only ever grow; a version
        loaded again adds its new join's counts to the old ones (the feature join of each
        load is kept, not the model).
        """
        watched = self.feature_misses.sources.setdefault((model, version), (time.time(), []))
        watched[1].append(misses)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class Served:
    """One version's answered requests and their latency histogram.

    A request costs one call here and one lock, not the label checks, locks and per-bucket
    calls of ``prometheus_client``'s ``Counter.inc`` and ``Histogram.observe`` (about three
    microseconds, a twentieth of a batched request's whole cost); the exposition at a scrape
    is theirs, sample for sample.
    """

    __slots__ = ("buckets", "created", "lock", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        """Requests per latency bucket (not cumulative), the last one past every bound (+Inf)."""
        self.total = 0.0
        self.created = time.time()
        self.lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Count a request answered ``seconds`` after it was decoded."""
        at = bisect_left(_LATENCY_BUCKETS, seconds)  # a bound is its bucket's own (le)
        with self.lock:
            self.buckets[at] += 1
            self.total += seconds

    def read(self) -> tuple[list[int], float]:
        """The bucket counts and the sum, as of one instant."""
        with self.lock:
            return list(self.buckets), self.total


def _created_series() -> bool:
    """Whether ``_created`` samples are exposed (``PROMETHEUS_DISABLE_CREATED_SERIES`` unset),
    as prometheus_client's own counters and histograms decide."""
    return bool(getattr(_prometheus_metrics, "_use_created", True))


class _Collector:
    """A metric family made at each scrape from counts the predictor keeps itself."""

    name: str
    help: str

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]


class _FromServed(_Collector):
    """A family made from every version's :class:`Served` counts."""

    def __init__(self, served: dict[tuple[str, str], Served]) -> None:
        self.served = served


class _Requests(_FromServed):
    """``openlearner_predictor_requests_total`` from the :class:`Served` counts."""

    name = "openlearner_predictor_requests"
    help = "Inference requests answered, per model and version."

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.help, labels=["model", "version"])

    def collect(self) -> list[Metric]:
        family = self._family()
        for (model, version), served in list(self.served.items()):
            buckets, _ = served.read()
            created = served.created if _created_series() else None
            family.add_metric([model, version], float(sum(buckets)), created=created)
        return [family]


class _Latency(_FromServed):
    """``openlearner_predictor_request_seconds`` from the :class:`Served` counts."""

    name = "openlearner_predictor_request_seconds"
    help = "Time from a decoded request to its answer (queueing, batching, features, model)."

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.help, labels=["model", "version"])

    def collect(self) -> list[Metric]:
        family = self._family()
        bounds = [*(floatToGoString(b) for b in _LATENCY_BUCKETS), "+Inf"]
        for (model, version), served in list(self.served.items()):
            counts, total = served.read()
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric([model, version], cumulative, total)
            if _created_series():
                family.samples.append(
                    Sample(f"{self.name}_created", {"model": model, "version": version}, served.created)
                )
        return [family]


class _Misses(_Collector):
    """The feature-miss counters, read from each version's feature join when scraped."""

    name = "openlearner_predictor_feature_misses"
    help = "Rows served a feature's default because the online store had no fresh value."

    def __init__(self) -> None:
        self.sources: dict[tuple[str, str], tuple[float, list[Callable[[], Mapping[str, int]]]]] = {}
        """(model, version) → when first watched, and the miss counts of each of its loads."""

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.help, labels=["model", "version", "feature"])

    def collect(self) -> list[Metric]:
        family = self._family()
        for (model, version), (created, loads) in list(self.sources.items()):
            total: CounterType[str] = CounterType()
            for misses in list(loads):
                total.update(misses())
            for feature, count in sorted(total.items()):
                family.add_metric([model, version, feature], count, created=created)
        return [family]
