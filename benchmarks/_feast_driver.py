"""Feast's side of ``feature_store.py``, run with the peer venv's python (never imported by us).

Usage: ``benchmarks/.peers/feast/bin/python benchmarks/_feast_driver.py REQUEST.json``. The
request names the Parquet files (events, spine, online keys), the feature views to define
and what to measure; the driver writes results as JSON (and result tables as Parquet) to the
paths the request gives. It uses only Feast's public Python API. The leading underscore
keeps ``run_all.py`` from running it as a benchmark.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.types import Float64, Int64

DTYPES = {"float64": Float64, "int64": Int64}


def peak_mb() -> float:
    """Peak RSS of this process in MiB: VmHWM, not ru_maxrss, which keeps the parent's across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_store(req: dict[str, Any], online: dict[str, Any]) -> tuple[FeatureStore, list[str]]:
    """A Feast store over the request's views, applied; returns it and the feature refs."""
    repo = Path(online["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    if online["type"] == "sqlite":
        online_config: dict[str, Any] = {"type": "sqlite", "path": str(repo / "online.db")}
    else:
        online_config = {"type": "redis", "connection_string": online["connection_string"]}
    config = RepoConfig(
        project=online.get("project", "olbench"),
        provider="local",
        registry=str(repo / "registry.db"),
        offline_store={"type": "file"},
        online_store=online_config,
        entity_key_serialization_version=3,
        repo_path=str(repo),
    )
    store = FeatureStore(config=config)
    source = FileSource(path=req["events"], timestamp_field="event_time", name="events")
    objects: list[Any] = []
    refs: list[str] = []
    for view in req["views"]:
        key = view["key"]
        entity = Entity(name=view["entity"], join_keys=[key], value_type=ValueType.INT64)
        schema = [Field(name=key, dtype=Int64)] + [
            Field(name=f["name"], dtype=DTYPES[f["dtype"]]) for f in view["features"]
        ]
        objects += [
            entity,
            FeatureView(
                name=view["name"],
                entities=[entity],
                ttl=timedelta(seconds=view["ttl_s"]),
                schema=schema,
                source=source,
                online=True,
            ),
        ]
        refs += [f"{view['name']}:{f['name']}" for f in view["features"]]
    store.apply(objects)
    return store, refs


def training(store: FeatureStore, refs: list[str], case: dict[str, Any]) -> dict[str, Any]:
    spine = pq.read_table(case["spine"]).to_pandas()
    spine = spine.rename(columns={"event_time": "event_timestamp"})
    setup_mb = peak_mb()
    times: list[float] = []
    result = None
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        result = store.get_historical_features(
            entity_df=spine, features=refs, full_feature_names=True
        ).to_df()
        times.append(time.perf_counter() - start)
    assert result is not None
    columns = ["row_id", *[r.replace(":", "__") for r in refs]]
    pq.write_table(pa.Table.from_pandas(result[columns], preserve_index=False), case["out"])
    return {"times": times, "rows": len(result), "setup_mb": setup_mb}


def read_batches(keys: list[dict[str, int]], batch: int, reads: int) -> list[list[dict[str, int]]]:
    """``reads`` batches of ``batch`` entity rows, walking round the key list (as feature_store.py)."""
    return [[keys[(i * batch + j) % len(keys)] for j in range(batch)] for i in range(reads)]


def online(store: FeatureStore, refs: list[str], req: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """Materialize (timed), then time ``get_online_features`` per batch size."""
    start = datetime.fromisoformat(case["materialize"]["start"])
    end = datetime.fromisoformat(case["materialize"]["end"])
    events = pq.read_table(req["events"])
    in_range = pc.and_(
        pc.greater_equal(
            events.column("event_time"), pa.scalar(start, events.schema.field("event_time").type)
        ),
        pc.less_equal(events.column("event_time"), pa.scalar(end, events.schema.field("event_time").type)),
    )
    rows = sum(len(pc.unique(events.filter(in_range).column(v["key"]))) for v in req["views"])
    del events
    times = []
    for _ in range(case["materialize_repeats"]):
        begin = time.perf_counter()
        store.materialize(start_date=start, end_date=end)
        times.append(time.perf_counter() - begin)
    all_keys = pq.read_table(case["keys"]).to_pylist()
    keys = all_keys[: case["key_count"]]
    latencies: dict[str, list[float]] = {}
    for batch in case["batches"]:
        batches = read_batches(keys, batch, case["reads"])
        for rows_ in batches[: case["warmup"]]:
            store.get_online_features(features=refs, entity_rows=rows_, full_feature_names=True).to_dict()
        timed = []
        for rows_ in batches:
            begin = time.perf_counter()
            store.get_online_features(features=refs, entity_rows=rows_, full_feature_names=True).to_dict()
            timed.append(time.perf_counter() - begin)
        latencies[str(batch)] = timed
    # The values for every key (fresh and stale), so the caller can compare them with its own.
    check = store.get_online_features(features=refs, entity_rows=all_keys, full_feature_names=True).to_dict()
    pq.write_table(pa.table(check), case["out"])
    return {"materialize": times, "materialized_rows": rows, "latencies": latencies}


def main() -> None:
    warnings.filterwarnings("ignore")
    req = json.loads(Path(sys.argv[1]).read_text())
    import feast

    report: dict[str, Any] = {"feast": feast.__version__, "pandas": pd.__version__, "cases": {}}
    for name, case in req["cases"].items():
        store, refs = open_store(req, case["store"])
        if case["kind"] == "training":
            report["cases"][name] = training(store, refs, case)
        elif case["kind"] == "online":
            report["cases"][name] = online(store, refs, req, case)
        if case["store"].get("teardown"):
            store.teardown()
    report["peak_rss_mb"] = peak_mb()
    report["finished"] = datetime.now(UTC).isoformat()
    Path(req["report"]).write_text(json.dumps(report))
    sys.stdout.flush()
    os._exit(0)  # skip dask's thread-pool shutdown at exit, which can hang


if __name__ == "__main__":
    main()
