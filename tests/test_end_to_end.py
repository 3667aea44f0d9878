"""The demo path end to end: what the predictor serves over HTTP equals the model offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openlearner import Workspace
from openlearner.demo import CONTEXT, DemoConfig, run_demo, served_probabilities
from openlearner.predictor.server import PredictorProcess

pytestmark = pytest.mark.slow


def test_demo_path_serves_what_the_model_predicts_offline(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    config = DemoConfig(days=3, impressions_per_day=4000, requests=50, seed=3, num_trees=30)
    messages: list[str] = []
    summary = run_demo(ws, config, progress=messages.append)

    assert summary.rows == 12_000 and summary.test_rows + summary.train_rows == 12_000
    assert summary.serving_max_diff < 1e-5
    assert summary.parity_max_diff < 1e-5
    assert 0 < summary.ne < 1.0  # better than predicting the base rate
    assert 0.5 < summary.auc <= 1.0
    assert 0 < summary.p50_ms < 1000  # measured, and not absurd
    assert any("materialized" in m for m in messages)

    version = ws.registry.get("ads_ctr", alias="production")
    assert version.version == summary.version and version.run_id == summary.run_id
    assert ws.flow.get(summary.run_id).status == "succeeded"
    assert version.feature_service is not None and version.signature.serving is not None

    # Independently of the demo: rows of the last day, served over HTTP one at a time, against
    # the registered graph on features computed offline by DuckDB as of the materialization
    # time — so a difference between online and offline features (skew) would show here.
    events = pq.read_table(ws.settings.data_dir / "ads_events" / "events.parquet")
    rows = events.slice(events.num_rows - 40).select(["user_id", "ad_id", *CONTEXT])
    end = ws.features.catalog.last_materialization("user_stats")
    assert end is not None
    spine = rows.append_column(
        "event_time", pa.array([end.end] * rows.num_rows, pa.timestamp("us", tz="UTC"))
    )
    offline_rows = ws.features.training_set(spine, version.feature_service)
    columns = version.signature.columns
    with PredictorProcess(ws.root) as server:
        served, _ = served_probabilities(server.url, rows)
        body = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]}
        unknown = httpx.post(f"{server.url}/v2/models/nope/infer", json=body)
        malformed = httpx.post(f"{server.url}/v2/models/ads_ctr/infer", content=b"{not json")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    matrix = np.column_stack(
        [offline_rows.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False) for c in columns]
    ).astype(np.float32)
    session = ort.InferenceSession(ws.registry.read_graph(version), providers=["CPUExecutionProvider"])
    offline = session.run(["probability"], {"input": matrix})[0]
    np.testing.assert_allclose(served, offline, atol=1e-6)
    ws.close()


def test_learner_demo_prints_the_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openlearner.cli.main",
            "--home",
            str(tmp_path / "ws"),
            "demo",
            "--days",
            "2",
            "--impressions-per-day",
            "3000",
            "--requests",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for phrase in (
        "OpenLearner demo summary",
        "NE ",
        "calibration",
        "AUC",
        "version 1 (alias production)",
        "p50",
        "p99",
    ):
        assert phrase in out
