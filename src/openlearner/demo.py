"""The thin end-to-end path on simulated ads traffic, as ``learner demo`` runs it.

Events → Feature Store (point-in-time training set in DuckDB) → GBDT (LightGBM) → ONNX with
a parity gate → registry version aliased ``production`` → online materialization →
predictor over OIP v2 → timed single-row HTTP requests. Each step uses its pillar's public
API; this module only strings them together.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openlearner.datasets import simulate_ads
from openlearner.errors import Invalid, Unavailable
from openlearner.features.definitions import Aggregate, Entity, FeatureService, FeatureView, Source
from openlearner.flow import Dataset, ModelArtifact, Resources, log_metric, operator, workflow
from openlearner.models.metrics import auc, calibration, log_loss, normalized_entropy
from openlearner.storage.files import write_atomically
from openlearner.workspace import Workspace

__all__ = [
    "CONTEXT",
    "DemoConfig",
    "DemoSummary",
    "ads_ctr_training",
    "ads_definitions",
    "run_demo",
    "served_probabilities",
]

MODEL_NAME = "ads_ctr"
SERVICE = "ads_ctr_v1"
SERVING_TOLERANCE = 1e-5
"""Largest accepted gap between served and offline probabilities for the same rows."""
CONTEXT = ["hour", "device", "position"]


@dataclass(frozen=True)
class DemoConfig:
    """Size of the demo run."""

    days: int = 7
    impressions_per_day: int = 100_000
    requests: int = 1000
    seed: int = 0
    num_trees: int = 200

    def __post_init__(self) -> None:
        if not 2 <= self.days <= 366:
            raise Invalid(
                "the demo needs 2 to 366 days: it trains on all but the last and evaluates on the last"
            )
        if not 1_000 <= self.impressions_per_day <= 2_000_000:
            raise Invalid("impressions per day must be between 1,000 (enough to learn from) and 2,000,000")
        if self.days * self.impressions_per_day > 20_000_000:
            raise Invalid(
                "the demo simulates at most 20 million impressions; lower --days or --impressions-per-day"
            )
        if not 1 <= self.requests <= 100_000:
            raise Invalid("requests must be between 1 and 100,000")
        if self.seed < 0:
            raise Invalid("the seed must be a non-negative integer")
        if self.num_trees < 1:
            raise Invalid("num_trees must be at least 1")


@dataclass(frozen=True)
class DemoSummary:
    """What the demo measured."""

    rows: int
    train_rows: int
    test_rows: int
    ne: float
    calibration: float
    auc: float
    log_loss: float
    model: str
    version: int
    run_id: str
    parity_max_diff: float
    serving_max_diff: float
    p50_ms: float
    p99_ms: float
    workspace: str
    seconds: float

    def render(self) -> str:
        """The summary as printed by ``learner demo``."""
        return "\n".join(
            [
                "OpenLearner demo summary",
                f"  data              {self.rows:,} simulated impressions ({self.train_rows:,} train, "
                f"{self.test_rows:,} held-out last day)",
                f"  held-out quality  NE {self.ne:.4f}  calibration {self.calibration:.4f}  "
                f"AUC {self.auc:.4f}  log loss {self.log_loss:.5f}",
                f"  registered        {self.model} version {self.version} (alias production), run {self.run_id}",
                f"  ONNX parity       max |Δp| {self.parity_max_diff:.1e} vs LightGBM on held-out rows",
                f"  serving parity    max |Δp| {self.serving_max_diff:.1e} HTTP vs offline, same rows and features",
                f"  latency           p50 {self.p50_ms:.2f} ms  p99 {self.p99_ms:.2f} ms "
                "(single-row HTTP requests, loopback)",
                f"  workspace         {self.workspace}  (try: learner --home {self.workspace} models show {self.model})",
                f"  took              {self.seconds:.1f} s",
            ]
        )


def ads_definitions(events: Source) -> tuple[Entity, Entity, FeatureView, FeatureView, FeatureService]:
    """Users, ads, their trailing click-through rates and the service the CTR model reads."""
    user = Entity("user", join_keys=["user_id"], description="a person who sees ads")
    ad = Entity("ad", join_keys=["ad_id"], description="an ad creative")
    user_stats = FeatureView(
        "user_stats",
        entities=[user],
        source=events,
        features=[
            Aggregate("clicked", "mean", window="1d", name="ctr_1d"),
            Aggregate("clicked", "mean", window="7d", name="ctr_7d"),
            Aggregate("clicked", "count", window="7d", name="impressions_7d"),
        ],
        ttl="30d",
        owner="ads",
        tags=["ctr"],
        description="how often a user clicked recently",
    )
    ad_stats = FeatureView(
        "ad_stats",
        entities=[ad],
        source=events,
        features=[
            Aggregate("clicked", "mean", window="7d", name="ctr_7d"),
            Aggregate("clicked", "count", window="7d", name="impressions_7d"),
        ],
        ttl="30d",
        owner="ads",
        tags=["ctr"],
        description="how often an ad was clicked recently",
    )
    service = FeatureService(
        SERVICE,
        features=[
            "user_stats:ctr_1d",
            "user_stats:ctr_7d",
            "user_stats:impressions_7d",
            "ad_stats:ctr_7d",
            "ad_stats:impressions_7d",
        ],
        description="features of the ads click-through model",
    )
    return user, ad, user_stats, ad_stats, service


def _digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


@operator(resources=Resources(cpu=1))
def build_training_set(home: str, events: str, events_sha256: str) -> Dataset:
    """Point-in-time features for every impression in ``events`` (``events_sha256`` keys the cache)."""
    with Workspace.open(home, create=False) as ws:
        spine = pq.read_table(events, columns=["event_time", "user_id", "ad_id", *CONTEXT, "clicked"])
        return Dataset(ws.features.training_set(spine, ws.features.service(SERVICE)))


@operator
def split_last_day(table: Dataset, split_at: str) -> tuple[Dataset, Dataset]:
    """Rows before ``split_at`` (ISO time) to train on, the rest held out."""
    rows = table.table
    split = pa.scalar(datetime.fromisoformat(split_at), pa.timestamp("us", tz="UTC"))
    is_test = pc.greater_equal(rows.column("event_time"), split)
    return Dataset(rows.filter(pc.invert(is_test))), Dataset(rows.filter(is_test))


@operator(resources=Resources(cpu=1))
def train_gbdt(train: Dataset, columns: list, num_trees: int = 200, seed: int = 0) -> ModelArtifact:
    """LightGBM with early stopping on the most recent 15 % of the training rows (events are in time order)."""
    from openlearner.models.gbdt import GBDTClassifier

    rows = train.table
    cut = int(rows.num_rows * 0.85)
    fit_rows, valid_rows = rows.slice(0, cut), rows.slice(cut)
    model = GBDTClassifier(
        num_trees=num_trees,
        num_leaves=31,
        learning_rate=0.05,
        min_child_samples=100,
        early_stopping_rounds=20,
        seed=seed,
    )
    model.fit(
        fit_rows.select(columns),
        fit_rows.column("clicked"),
        eval_set=(valid_rows.select(columns), valid_rows.column("clicked")),
    )
    log_metric("trees", model.booster_.num_trees())
    log_metric("fit_rows", fit_rows.num_rows)
    return ModelArtifact(model)


@operator
def evaluate(model: ModelArtifact, train: Dataset, test: Dataset, columns: list) -> dict:
    """Held-out NE (against the training base rate), calibration, AUC and log loss."""
    y_test = test.table.column("clicked").to_numpy()
    p_test = model.model.predict_proba(test.table.select(columns))[:, 1]
    base_rate = float(np.mean(train.table.column("clicked").to_numpy()))
    metrics = {
        "ne": normalized_entropy(y_test, p_test, base_rate=base_rate),
        "calibration": calibration(y_test, p_test),
        "auc": auc(y_test, p_test),
        "log_loss": log_loss(y_test, p_test),
    }
    for name, value in metrics.items():
        log_metric(name, value)
    return metrics


@workflow
def ads_ctr_training(
    home: str,
    events: str,
    events_sha256: str,
    split_at: str,
    columns: list,
    num_trees: int = 200,
    seed: int = 0,
) -> dict:
    """The demo's training path: training set → split → GBDT → held-out evaluation."""
    train, test = split_last_day(build_training_set(home, events, events_sha256), split_at)
    model = train_gbdt(train, columns, num_trees=num_trees, seed=seed)
    return {"model": model, "metrics": evaluate(model, train, test, columns), "train": train, "test": test}


def served_probabilities(url: str, rows: pa.Table, model: str = MODEL_NAME) -> tuple[np.ndarray, list[float]]:
    """Send each row of ``rows`` (keys + context) as its own OIP v2 request; probabilities and latencies (ms)."""
    import httpx

    columns = {name: rows.column(name).to_pylist() for name in ["user_id", "ad_id", *CONTEXT]}
    probabilities, latencies = [], []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for i in range(rows.num_rows):
            body = {
                "inputs": [
                    {"name": n, "shape": [1], "datatype": "INT64", "data": [columns[n][i]]} for n in columns
                ]
            }
            begin = time.perf_counter()
            response = client.post(f"/v2/models/{model}/infer", json=body)
            latencies.append((time.perf_counter() - begin) * 1000)
            if response.status_code != 200:
                raise Invalid(f"the predictor answered {response.status_code}: {response.text}")
            outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
            probabilities.append(outputs["probability"][0])
    return np.asarray(probabilities, dtype=np.float64), latencies


def run_demo(ws: Workspace, config: DemoConfig, progress: Callable[[str], Any] = print) -> DemoSummary:
    """Run the whole path in ``ws`` and return what it measured; the workspace is left to explore."""
    from openlearner.predictor.server import PredictorProcess

    began = time.monotonic()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=config.days)

    progress(f"simulating {config.days} days × {config.impressions_per_day:,} ad impressions")
    events = simulate_ads(config.days, config.impressions_per_day, config.seed, start=start)
    folder = ws.settings.data_dir / "ads_events"
    write_atomically(folder / "events.parquet", lambda handle: pq.write_table(events, handle))
    source = Source.parquet(folder / "*.parquet", timestamp="event_time", name="ads_events")

    user, ad, user_stats, ad_stats, service = ads_definitions(source)
    ws.features.apply([user, ad, source, user_stats, ad_stats, service])
    progress("applied entities user, ad and feature views user_stats, ad_stats")

    columns = [*service.columns, *CONTEXT]
    digest = hashlib.sha256((folder / "events.parquet").read_bytes()).hexdigest()
    params = {
        "home": str(ws.root),
        "events": str(folder / "events.parquet"),
        "events_sha256": digest,
        "split_at": (start + timedelta(days=config.days - 1)).isoformat(),
        "columns": columns,
        "num_trees": config.num_trees,
        "seed": config.seed,
    }
    t0 = time.monotonic()
    run = ws.flow.run(ads_ctr_training, params, tags={"source": "demo"})
    if run.status != "succeeded":
        raise Unavailable(f"the training workflow failed: {run.error}; see `learner runs show {run.id}`")
    steps = ws.flow.operators(run.id)
    cached = [o.node for o in steps if o.cache_hit]
    model = run.outputs["model"].model
    train, test = run.outputs["train"].table, run.outputs["test"].table
    metrics = {k: float(v) for k, v in run.outputs["metrics"].items()}
    progress(
        f"ran Flow workflow ads_ctr_training ({len(steps)} operators"
        + (f", {len(cached)} from cache" if cached else "")
        + f") in {time.monotonic() - t0:.1f} s: training set of {train.num_rows + test.num_rows:,} rows × "
        f"{len(service.features)} features (DuckDB), LightGBM with {model.booster_.num_trees()} trees, run {run.id}"
    )
    progress(
        f"held-out day: NE {metrics['ne']:.4f}, calibration {metrics['calibration']:.4f}, AUC {metrics['auc']:.4f}"
    )

    rng = np.random.default_rng(config.seed)
    sample = test.take(rng.choice(test.num_rows, size=min(5000, test.num_rows), replace=False))
    version = ws.registry.register(
        MODEL_NAME,
        model,
        sample=sample.select(columns),
        features=service,
        metrics=metrics,
        run_id=run.id,
        tags={"team": "ads", "source": "demo"},
        training_set_digest=_digest(train),
    )
    ws.registry.set_alias(MODEL_NAME, "production", version.version)
    progress(
        f"registered {MODEL_NAME} version {version.version} ({version.parity['rows']} parity rows, "
        f"max |Δp| {version.parity['max_abs_diff']:.1e}) and set alias production"
    )

    as_of = datetime.now(UTC)
    written = ws.features.materialize(end=as_of)
    progress("materialized online features: " + ", ".join(f"{v} {n:,} entities" for v, n in written.items()))

    requests = test.take(
        rng.choice(test.num_rows, size=config.requests, replace=config.requests > test.num_rows)
    )
    requests = requests.select(["user_id", "ad_id", *CONTEXT])
    # The same rows offline: features as of the materialization time, straight from DuckDB.
    offline = ws.features.training_set(
        requests.append_column(
            "event_time", pa.array([as_of] * requests.num_rows, pa.timestamp("us", tz="UTC"))
        ),
        service,
    )
    expected = model.predict_proba(offline.select(columns))[:, 1]
    with PredictorProcess(ws.root) as server:
        progress(f"predictor serving on {server.url}; sending {config.requests:,} single-row requests")
        served, latencies = served_probabilities(server.url, requests)
    serving_diff = float(np.max(np.abs(served - expected)))
    if serving_diff > SERVING_TOLERANCE:
        raise Unavailable(
            f"served predictions differ from offline ones by up to {serving_diff:.2e} "
            f"(tolerance {SERVING_TOLERANCE:.0e}): training/serving skew; compare "
            "`learner features get` with the training set"
        )
    lat = np.asarray(latencies)
    return DemoSummary(
        rows=events.num_rows,
        train_rows=train.num_rows,
        test_rows=test.num_rows,
        ne=metrics["ne"],
        calibration=metrics["calibration"],
        auc=metrics["auc"],
        log_loss=metrics["log_loss"],
        model=MODEL_NAME,
        version=version.version,
        run_id=run.id,
        parity_max_diff=float(version.parity["max_abs_diff"]),
        serving_max_diff=serving_diff,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        workspace=str(ws.root),
        seconds=time.monotonic() - began,
    )
