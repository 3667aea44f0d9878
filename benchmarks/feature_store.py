"""Feature Store vs Feast and vs hand-written DuckDB: training sets, online reads, materialization.

Every case runs both sides in this run on the same data and the same features, and checks that
they computed the same values before it reports a time. Feast runs in its own virtualenv
(``bash benchmarks/peers.sh`` creates it) through ``_feast_driver.py``; data goes through
Parquet files and results come back as JSON and Parquet. Each training-set measurement runs in
a fresh process, so its peak RSS (VmHWM) is that side's alone.

Cases (features: :func:`latest_views` and :func:`windowed_views`):

* training set, 10 latest-value features (two views, 30-day TTL) over a spine of N rows and
  an event log of 10·N rows: OpenLearner, Feast's file offline store and a hand-written DuckDB
  ASOF join (the floor). Feast keeps ``event_time <= t`` and drops a spine row whose key has
  events but none in ``[t - ttl, t]``; OpenLearner keeps ``event_time < t`` and returns every
  row (nulls). The spine's times are odd microseconds and the events' even ones, so ``<`` and
  ``<=`` select the same events; values are compared on the rows both return.
* both training sets again for the last day of the log only (the spine's rows of that day,
  about N / 42), up to ``--feast-max``: a recent slice of a long log, as when a model is
  evaluated on yesterday's traffic.
* training set, 10 features with 1h/1d/7d/30d windows and latest values: OpenLearner vs a
  hand-written DuckDB query (running totals per entity, ASOF-joined at ``t`` and ``t - w``);
  Feast's file offline store has no windowed aggregates.
* materialization (offline → online, the latest-value views) in rows per second.
* online read of the 10 latest-value features for 1 and 100 entity rows (a user and an ad
  each), p50/p99, SQLite; and Redis when OpenLearner's ``online_store="redis"`` works.

Run: ``.venv/bin/python benchmarks/feature_store.py`` (``--help`` for sizes and repeats).
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openlearner import Aggregate, Entity, FeatureView, Field, Settings, Source, Workspace
from openlearner.datasets import simulate_ads

HERE = Path(__file__).resolve().parent
FEAST_PYTHON = HERE / ".peers" / "feast" / "bin" / "python"
DRIVER = HERE / "_feast_driver.py"
DAYS = 42
TTL = timedelta(days=30)
LATEST = ["price", "hour", "device", "position", "clicked"]  # per view: 5 + 5 = 10 features
KEYS = {"user": "user_id", "ad": "ad_id"}


# -- data and definitions -----------------------------------------------------------------------
def _unique(us: np.ndarray, parity: int) -> np.ndarray:
    """Sorted microseconds made strictly increasing, all even (parity 0) or all odd (1)."""
    us = us // 2 * 2
    step = 2 * np.arange(us.size, dtype=np.int64)
    return np.maximum.accumulate(us - step) + step + parity


def _with_times(table: pa.Table, us: np.ndarray) -> pa.Table:
    times = pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("event_time"), "event_time", times)
    hours = pa.array((us // 3_600_000_000) % 24)
    return table.set_column(table.schema.get_field_index("hour"), "hour", hours)


def make_data(spine_rows: int, folder: Path, end: datetime) -> dict[str, Any]:
    """An ads event log of about 10·``spine_rows`` rows over DAYS days ending at ``end``, and a spine."""
    events_n = 10 * spine_rows
    start = end - timedelta(days=DAYS)
    sizes = {"start": start, "num_users": max(50, events_n // 20), "num_ads": max(20, events_n // 50)}
    events = simulate_ads(DAYS, events_n // DAYS, seed=0, **sizes)
    events = _with_times(events, _unique(events.column("event_time").cast(pa.int64()).to_numpy(), 0))
    price = np.round(np.random.default_rng(0).lognormal(0.0, 0.5, events.num_rows), 4)
    events = events.append_column("price", pa.array(price))
    spine = simulate_ads(DAYS, max(1, spine_rows // DAYS), seed=1, **sizes)
    spine = _with_times(spine, _unique(spine.column("event_time").cast(pa.int64()).to_numpy(), 1))
    spine = spine.select(["event_time", "user_id", "ad_id", "clicked"])
    spine = spine.append_column("row_id", pa.array(np.arange(spine.num_rows, dtype=np.int64)))
    paths = {"events": folder / "events.parquet", "spine": folder / "spine.parquet"}
    pq.write_table(events, paths["events"])
    pq.write_table(spine, paths["spine"])
    return {
        "events": str(paths["events"]),
        "spine": str(paths["spine"]),
        "event_rows": events.num_rows,
        "spine_rows": spine.num_rows,
        "start": start,
        "end": end,
    }


def latest_views(source: Source) -> list[Any]:
    """Two views of latest values (user, ad), five features each, 30-day TTL: what Feast can do."""
    out: list[Any] = []
    for name, key in KEYS.items():
        entity = Entity(name, join_keys=[key])
        fields = [Field(c) for c in LATEST]
        out += [
            entity,
            FeatureView(f"{name}_latest", entities=[entity], source=source, features=fields, ttl="30d"),
        ]
    return out


def windowed_views(source: Source) -> list[Any]:
    """Two views with 1h/1d/7d/30d aggregates and a latest value each: 10 features."""
    out: list[Any] = []
    for (name, key), last in zip(KEYS.items(), ["device", "position"], strict=True):
        entity = Entity(name, join_keys=[key])
        features = [
            Aggregate("clicked", "sum", window="1h", name="clicks_1h"),
            Aggregate("clicked", "mean", window="1d", name="ctr_1d"),
            Aggregate("clicked", "mean", window="7d", name="ctr_7d"),
            Aggregate("clicked", "count", window="30d", name="impressions_30d"),
            Field(last),
        ]
        out += [
            entity,
            FeatureView(f"{name}_stats", entities=[entity], source=source, features=features, ttl="30d"),
        ]
    return out


def refs(views: list[Any]) -> list[str]:
    return [f"{v.name}:{f.name}" for v in views if isinstance(v, FeatureView) for f in v.features]


def feast_views() -> list[dict[str, Any]]:
    """The latest-value views as the Feast driver defines them (same names, columns and TTL)."""
    dtype = {"price": "float64"}
    return [
        {
            "name": f"{name}_latest",
            "entity": name,
            "key": key,
            "ttl_s": int(TTL.total_seconds()),
            "features": [{"name": c, "dtype": dtype.get(c, "int64")} for c in LATEST],
        }
        for name, key in KEYS.items()
    ]


# -- hand-written DuckDB floor ------------------------------------------------------------------
def _ttl_case(alias: str, column: str, view: str) -> str:
    ttl_us = TTL // timedelta(microseconds=1)
    return (
        f"CASE WHEN s.event_time - {alias}.event_time <= INTERVAL ({ttl_us}) MICROSECOND "
        f"THEN {alias}.{column} END AS {view}__{column}"
    )


def floor_latest(events: str, spine: str) -> str:
    """ASOF join per view: the latest event strictly before each spine row, null past the TTL."""
    cols = [_ttl_case(a, c, f"{n}_latest") for n, a in (("user", "u"), ("ad", "a")) for c in LATEST]
    return f"""
    SELECT s.row_id, {", ".join(cols)}
    FROM read_parquet('{spine}') s
    ASOF LEFT JOIN read_parquet('{events}') u ON s.user_id = u.user_id AND s.event_time > u.event_time
    ASOF LEFT JOIN read_parquet('{events}') a ON s.ad_id = a.ad_id AND s.event_time > a.event_time
    ORDER BY s.row_id"""


WINDOWS = {
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


def floor_windowed(events: str, spine: str) -> str:
    """Running totals per entity, ASOF-joined at ``t`` and at ``t - w`` for each window ``w``.

    A windowed count or sum over ``(t - w, t)`` is the running total just before ``t`` minus the
    one at ``t - w``; the event just before ``t`` also carries the latest value. (Exact here
    because no two events share a time; mean is sum / count.)
    """

    def view(name: str, key: str, last: str, alias: str) -> tuple[list[str], list[str]]:
        us = {w: d // timedelta(microseconds=1) for w, d in WINDOWS.items()}
        joins = [
            f"ASOF LEFT JOIN {alias}c {alias} ON s.{key} = {alias}.{key} AND s.event_time > {alias}.event_time"
        ]
        joins += [
            f"ASOF LEFT JOIN {alias}c {alias}{w} ON s.{key} = {alias}{w}.{key} "
            f"AND s.event_time - INTERVAL ({us[w]}) MICROSECOND >= {alias}{w}.event_time"
            for w in WINDOWS
        ]

        def count(w: str) -> str:
            return f"(coalesce({alias}.n, 0) - coalesce({alias}{w}.n, 0))"

        def clicks(w: str) -> str:
            return f"({alias}.c - coalesce({alias}{w}.c, 0))"

        columns = [
            f"CASE WHEN {count('1h')} > 0 THEN {clicks('1h')} END AS {name}__clicks_1h",
            f"CAST({clicks('1d')} AS DOUBLE) / nullif({count('1d')}, 0) AS {name}__ctr_1d",
            f"CAST({clicks('7d')} AS DOUBLE) / nullif({count('7d')}, 0) AS {name}__ctr_7d",
            f"{count('30d')} AS {name}__impressions_30d",
            _ttl_case(alias, last, name),
        ]
        return columns, joins

    user_cols, user_joins = view("user_stats", "user_id", "device", "u")
    ad_cols, ad_joins = view("ad_stats", "ad_id", "position", "a")
    running = "count(*) OVER w AS n, sum(clicked) OVER w AS c"
    return f"""
    WITH ev AS (SELECT event_time, user_id, ad_id, clicked, device, position FROM read_parquet('{events}')),
    uc AS (SELECT user_id, event_time, device, {running} FROM ev
           WINDOW w AS (PARTITION BY user_id ORDER BY event_time ROWS UNBOUNDED PRECEDING)),
    ac AS (SELECT ad_id, event_time, position, {running} FROM ev
           WINDOW w AS (PARTITION BY ad_id ORDER BY event_time ROWS UNBOUNDED PRECEDING))
    SELECT s.row_id, {", ".join(user_cols + ad_cols)}
    FROM read_parquet('{spine}') s
    {" ".join(user_joins + ad_joins)}
    ORDER BY s.row_id"""


# -- one measured side per fresh process ---------------------------------------------------------
def _peak_mb() -> float:
    """Peak RSS of this process in MiB: VmHWM, not ru_maxrss, which keeps the parent's across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _repeat(fn: Callable[[], pa.Table], repeats: int) -> tuple[list[float], pa.Table]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return times, result


def side_openlearner(data: dict[str, Any], which: str, home: str, out: str, repeats: int) -> dict[str, Any]:
    """OpenLearner's training set (in a fresh process): times, peak RSS; result written to ``out``."""
    ws = Workspace.init(settings=Settings(home=Path(home)))
    source = Source.parquet(data["events"], timestamp="event_time", name="events")
    definitions = latest_views(source) if which == "latest" else windowed_views(source)
    ws.features.apply(definitions)
    spine = pq.read_table(data["spine"])
    before = _peak_mb()
    times, result = _repeat(lambda: ws.features.training_set(spine, refs(definitions)), repeats)
    pq.write_table(result.drop_columns(["event_time", "clicked"]), out)
    ws.close()
    return {"times": times, "rows": result.num_rows, "peak_mb": _peak_mb(), "setup_mb": before}


def side_floor(data: dict[str, Any], which: str, out: str, repeats: int) -> dict[str, Any]:
    """The hand-written DuckDB query (in a fresh process)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    query = (floor_latest if which == "latest" else floor_windowed)(data["events"], data["spine"])
    before = _peak_mb()
    times, result = _repeat(lambda: con.sql(query).to_arrow_table(), repeats)
    pq.write_table(result, out)
    return {"times": times, "rows": result.num_rows, "peak_mb": _peak_mb(), "setup_mb": before}


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_feast(request: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run the Feast driver on ``request`` in the peer venv; its JSON report."""
    request = {**request, "report": str(folder / f"feast-{uuid.uuid4().hex}.json")}
    path = folder / f"request-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(request, default=str))
    done = subprocess.run(
        [str(FEAST_PYTHON), str(DRIVER), str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not Path(request["report"]).exists():
        raise SystemExit(f"the Feast driver failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(Path(request["report"]).read_text())
    return report


# -- value checks ----------------------------------------------------------------------------------
def _floats(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=float)


def check_equal(ours: pa.Table, other: pa.Table, columns: list[str], what: str) -> None:
    """Refuse to report times unless both tables hold the same values, row for row."""
    if ours.num_rows != other.num_rows:
        raise SystemExit(f"{what}: {ours.num_rows} rows vs {other.num_rows}; refusing to report times")
    for column in columns:
        if not np.allclose(_floats(ours, column), _floats(other, column), equal_nan=True):
            raise SystemExit(f"{what}: results differ in {column}; refusing to report times")


def check_against_feast(ours: pa.Table, feast: pa.Table, columns: list[str], events: str) -> dict[str, int]:
    """Compare on the rows Feast returns; the rows it drops must be exactly those it should drop.

    Feast's file store drops a spine row when, for some view, the key has events but none in
    ``[t - ttl, t]``: here that is a row whose key is in the log and whose view is all null.
    """
    feast = feast.sort_by("row_id")
    kept = pc.is_in(ours.column("row_id"), feast.column("row_id"))
    check_equal(ours.filter(kept).sort_by("row_id"), feast, ["row_id", *columns], "OpenLearner vs Feast")
    log = pq.read_table(events, columns=list(KEYS.values()))
    expected = pa.array(np.zeros(ours.num_rows, dtype=bool))
    for name, key in KEYS.items():
        known = pc.is_in(ours.column(key), pc.unique(log.column(key)))
        expected = pc.or_(expected, pc.and_(known, pc.is_null(ours.column(f"{name}_latest__price"))))
    if not pc.all(pc.equal(pc.invert(kept), expected)).as_py():
        raise SystemExit(
            "Feast dropped other spine rows than its documented semantics predict; refusing to report"
        )
    return {"dropped": ours.num_rows - feast.num_rows}


# -- cases ---------------------------------------------------------------------------------------------
def median(times: list[float]) -> float:
    return statistics.median(times)


def last_day(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` with a spine of its last day only (about N / DAYS rows): a training set for a
    recent slice of a long event log, the case where reading only what the spine can see pays."""
    spine = pq.read_table(data["spine"])
    cutoff = pa.scalar(data["end"] - timedelta(days=1), pa.timestamp("us", tz="UTC"))
    day = spine.filter(pc.greater_equal(spine.column("event_time"), cutoff))
    path = folder / "spine-last-day.parquet"
    pq.write_table(day, path)
    return {
        **data,
        "spine": str(path),
        "spine_rows": day.num_rows,
        "label": f"{day.num_rows:,} (last day of {data['spine_rows']:,})",
    }


def training_case(
    data: dict[str, Any], folder: Path, args: argparse.Namespace, feast: bool
) -> dict[str, Any]:
    n = data["spine_rows"]
    r: dict[str, Any] = {
        "spine_rows": n,
        "event_rows": data["event_rows"],
        "label": data.get("label", f"{n:,}"),
    }
    names = [
        r_.replace(":", "__")
        for r_ in refs(latest_views(Source.parquet(data["events"], timestamp="event_time")))
    ]
    out = {k: str(folder / f"{k}-{n}.parquet") for k in ("ol", "floor", "feast", "olw", "floorw")}
    r["ol"] = in_fresh_process(
        side_openlearner, data, "latest", str(folder / f"ws-{n}"), out["ol"], args.repeats
    )
    r["floor"] = in_fresh_process(side_floor, data, "latest", out["floor"], args.repeats)
    ours = pq.read_table(out["ol"])
    check_equal(ours, pq.read_table(out["floor"]), ["row_id", *names], "OpenLearner vs floor (latest values)")
    if feast:
        request = {
            "events": data["events"],
            "views": feast_views(),
            "cases": {
                "training": {
                    "kind": "training",
                    "spine": data["spine"],
                    "repeats": args.feast_repeats,
                    "out": out["feast"],
                    "store": {"type": "sqlite", "repo": str(folder / f"feast-train-{n}")},
                }
            },
        }
        report = run_feast(request, folder)
        r["feast"] = {**report["cases"]["training"], "peak_mb": report["peak_rss_mb"]}
        r["feast_version"] = report["feast"]
        r["feast"].update(check_against_feast(ours, pq.read_table(out["feast"]), names, data["events"]))
    r["olw"] = in_fresh_process(
        side_openlearner, data, "windowed", str(folder / f"wsw-{n}"), out["olw"], args.repeats
    )
    r["floorw"] = in_fresh_process(side_floor, data, "windowed", out["floorw"], args.repeats)
    wide = pq.read_table(out["olw"])
    wide_names = [c for c in wide.column_names if "__" in c]
    check_equal(wide, pq.read_table(out["floorw"]), ["row_id", *wide_names], "OpenLearner vs floor (windows)")
    return r


def read_batches(keys: list[dict[str, int]], batch: int, reads: int) -> list[list[dict[str, int]]]:
    """``reads`` batches of ``batch`` entity rows, walking round the key list (both sides use this)."""
    return [[keys[(i * batch + j) % len(keys)] for j in range(batch)] for i in range(reads)]


def online_keys(data: dict[str, Any], count: int) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """Entity rows whose user and ad both had events in the last 20 days; and rows past the TTL."""
    con = duckdb.connect()
    last = "SELECT {k} AS k, max(event_time) AS t FROM read_parquet('{p}') GROUP BY {k}"
    recent, stale = {}, {}
    for key in KEYS.values():
        table = con.sql(last.format(k=key, p=data["events"])).to_arrow_table()
        t = table.column("t").cast(pa.int64()).to_numpy()
        ids = table.column("k").to_numpy()
        end_us = int(data["end"].timestamp() * 1e6)
        recent[key] = np.sort(ids[t > end_us - 20 * 86_400_000_000])
        stale[key] = np.sort(ids[t < end_us - 32 * 86_400_000_000])
    rng = np.random.default_rng(7)
    rows = [{k: int(rng.choice(recent[k])) for k in KEYS.values()} for _ in range(count)]
    olds = [
        {k: int(rng.choice(stale[k]) if stale[k].size else recent[k][0]) for k in KEYS.values()}
        for _ in range(20)
    ]
    return rows, olds


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def openlearner_online(
    settings: Settings,
    data: dict[str, Any],
    keys: list[dict[str, int]],
    olds: list[dict[str, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Materialize the latest-value views and time online reads, in this process."""
    ws = Workspace.init(settings=settings)
    try:
        definitions = latest_views(Source.parquet(data["events"], timestamp="event_time", name="events"))
        ws.features.apply(definitions)
        features = refs(definitions)
        # Every entity, every time (as Feast's materialize(start, end) does): full=True where
        # materialize is incremental.
        full = {"full": True} if "full" in inspect.signature(ws.features.materialize).parameters else {}
        times, written = [], {}
        for _ in range(args.materialize_repeats):
            start = time.perf_counter()
            written = ws.features.materialize(end=data["now"], views=["user_latest", "ad_latest"], **full)
            times.append(time.perf_counter() - start)
        out: dict[str, Any] = {"materialize": times, "rows": sum(written.values()), "latencies": {}}
        for batch in args.batches:
            rows = read_batches(keys, batch, args.reads)
            as_columns = [{k: [r[k] for r in b] for k in KEYS.values()} for b in rows]
            for cols in as_columns[: args.warmup]:
                ws.features.online(features, cols)
            latencies = []
            for cols in as_columns:
                start = time.perf_counter()
                ws.features.online(features, cols)
                latencies.append(time.perf_counter() - start)
            out["latencies"][str(batch)] = latencies
        everything = [*keys, *olds]
        out["values"] = ws.features.online(features, {k: [r[k] for r in everything] for k in KEYS.values()})
        for view in ("user_latest", "ad_latest"):
            ws.features.online_store.delete(view)
        return out
    finally:
        ws.close()


def online_case(data: dict[str, Any], folder: Path, args: argparse.Namespace, feast: bool) -> dict[str, Any]:
    keys, olds = online_keys(data, args.keys)
    keys_path = folder / "online-keys.parquet"
    pq.write_table(pa.Table.from_pylist([*keys, *olds]), keys_path)
    names = [f"{v}_latest__{c}" for v in KEYS for c in LATEST]
    results: dict[str, Any] = {}
    stores: dict[str, tuple[Settings, dict[str, Any]]] = {
        "sqlite": (
            Settings(home=folder / "ws-online"),
            {"type": "sqlite", "repo": str(folder / "feast-online")},
        ),
    }
    namespace = f"olbench:{uuid.uuid4().hex[:8]}"
    redis_settings = Settings(home=folder / "ws-redis", online_store="redis", redis_namespace=namespace)
    try:
        Workspace.init(settings=redis_settings).close()
        stores["redis"] = (
            redis_settings,
            {
                "type": "redis",
                "repo": str(folder / "feast-redis"),
                "connection_string": "127.0.0.1:6379",
                "project": f"olbench_{uuid.uuid4().hex[:8]}",
                "teardown": True,
            },
        )
    except Exception as exc:  # any failure: the backend is not there yet
        print(
            f"> Redis case skipped: OpenLearner's online_store='redis' is not available ({type(exc).__name__}: {exc})"
        )
    for store, (settings, feast_store) in stores.items():
        ours = openlearner_online(settings, data, keys, olds, args)
        r: dict[str, Any] = {"ol": ours}
        if feast:
            request = {
                "events": data["events"],
                "views": feast_views(),
                "cases": {
                    "online": {
                        "kind": "online",
                        "store": feast_store,
                        "materialize": {"start": data["start"] - timedelta(seconds=1), "end": data["now"]},
                        "materialize_repeats": args.materialize_repeats,
                        "keys": str(keys_path),
                        "key_count": len(keys),
                        "batches": args.batches,
                        "reads": args.reads,
                        "warmup": args.warmup,
                        "out": str(folder / f"feast-online-{store}.parquet"),
                    }
                },
            }
            r["feast"] = run_feast(request, folder)["cases"]["online"]
            if r["feast"]["materialized_rows"] != ours["rows"]:
                raise SystemExit(
                    f"{store}: Feast materialized {r['feast']['materialized_rows']} rows, OpenLearner "
                    f"{ours['rows']}; refusing to compare their rates"
                )
            values = pq.read_table(folder / f"feast-online-{store}.parquet")
            r["ttl"] = check_online(ours["values"], values, names, len(keys))
        results[store] = r
    return results


def check_online(ours: pa.Table, feast: pa.Table, names: list[str], fresh: int) -> dict[str, int]:
    """Same values for keys with recent events; count the stale keys Feast still serves."""
    check_equal(ours.slice(0, fresh), feast.slice(0, fresh), names, "online values, OpenLearner vs Feast")
    stale_ours, stale_feast = ours.slice(fresh), feast.slice(fresh)
    theirs = stale_feast.column("user_latest__price").to_pylist()
    status = stale_ours.column("user_latest__price__status").to_pylist()
    served = sum(
        1 for value, state in zip(theirs, status, strict=True) if value is not None and state == "expired"
    )
    return {"stale_keys": stale_ours.num_rows, "stale_served_by_feast": served}


# -- report ---------------------------------------------------------------------------------------
def feast_ready() -> str | None:
    """None when the Feast venv imports; otherwise the message saying how to create it."""
    if FEAST_PYTHON.exists():
        done = subprocess.run([str(FEAST_PYTHON), "-c", "import feast"], capture_output=True, check=False)
        if done.returncode == 0:
            return None
    return (
        f"Feast's virtualenv is missing or broken ({FEAST_PYTHON.parent.parent}). Create it with "
        "`bash benchmarks/peers.sh` (installs feast[redis]==0.67.* from PyPI into benchmarks/.peers/), "
        "or pass --skip-feast to measure OpenLearner and the hand-written floor alone."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="spine rows N (events: 10·N)"
    )
    parser.add_argument("--feast-max", type=int, default=100_000, help="largest N that Feast is run at")
    parser.add_argument("--online-size", type=int, default=100_000, help="N of the data behind online reads")
    parser.add_argument("--repeats", type=int, default=3, help="training-set runs per side (median)")
    parser.add_argument("--feast-repeats", type=int, default=3)
    parser.add_argument("--materialize-repeats", type=int, default=3)
    parser.add_argument("--reads", type=int, default=2000, help="timed online reads per batch size")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 100], help="entity rows per online read"
    )
    parser.add_argument("--keys", type=int, default=2000, help="distinct entity rows the reads walk through")
    parser.add_argument("--skip-feast", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every raw timing to this file")
    args = parser.parse_args()
    feast = not args.skip_feast
    if feast and (problem := feast_ready()):
        raise SystemExit(problem)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory(prefix="olbench-") as tmp:
        folder = Path(tmp)
        training = []
        online: dict[str, Any] = {}
        for n in args.sizes:
            sub = folder / f"n{n}"
            sub.mkdir()
            data = make_data(n, sub, end)
            training.append(training_case(data, sub, args, feast and n <= args.feast_max))
            print(f"> training sets at N={n:,} done", file=sys.stderr, flush=True)
            if n <= args.feast_max:  # the same log, asked about its last day only
                day = last_day(data, sub)
                training.append(training_case(day, sub, args, feast))
                print(f"> training sets for the last day of N={n:,} done", file=sys.stderr, flush=True)
        sub = folder / "online"
        sub.mkdir()
        data = {**make_data(args.online_size, sub, end), "now": datetime.now(UTC)}
        online = online_case(data, sub, args, feast)
    print_report(training, online, args)
    if args.json:
        for r in online.values():
            r["ol"].pop("values", None)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"training": training, "online": online}, indent=1, default=str))


def _s(side: dict[str, Any] | None) -> str:
    return f"{median(side['times']):.2f} s" if side else "—"


def _mb(side: dict[str, Any] | None) -> str:
    return f"{side['peak_mb']:,.0f}" if side else "—"


def print_report(training: list[dict[str, Any]], online: dict[str, Any], args: argparse.Namespace) -> None:
    version = next((t["feast_version"] for t in training if "feast_version" in t), None)
    print(f"Feast {version}" if version else "Feast not run")
    print("\n### Training set, 10 latest-value features (median; peak RSS in MiB)\n")
    print(
        "| spine N | events | Feast | OpenLearner | DuckDB floor | Feast / OL | OL / floor | peak RSS Feast / OL / floor | rows Feast / OL |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in training:
        ol, fl, fe = t["ol"], t["floor"], t.get("feast")
        speedup = f"{median(fe['times']) / median(ol['times']):.1f}×" if fe else "—"
        rows = f"{fe['rows']:,} / {ol['rows']:,}" if fe else f"— / {ol['rows']:,}"
        print(
            f"| {t['label']} | {t['event_rows']:,} | {_s(fe)} | {_s(ol)} | {_s(fl)} | {speedup} | "
            f"{median(ol['times']) / median(fl['times']):.2f}× | {_mb(fe)} / {_mb(ol)} / {_mb(fl)} | {rows} |"
        )
    print("\n### Training set, 10 features with 1h/1d/7d/30d windows and latest values (median)\n")
    print("| spine N | events | OpenLearner | DuckDB floor | OL / floor | peak RSS OL / floor |")
    print("|---:|---:|---:|---:|---:|---:|")
    for t in training:
        ol, fl = t["olw"], t["floorw"]
        print(
            f"| {t['label']} | {t['event_rows']:,} | {_s(ol)} | {_s(fl)} | "
            f"{median(ol['times']) / median(fl['times']):.2f}× | {_mb(ol)} / {_mb(fl)} |"
        )
    print(f"\n### Online read of the 10 latest-value features ({args.reads} reads each, ms)\n")
    print("| store | entity rows | OL p50 | OL p99 | Feast p50 | Feast p99 | Feast / OL (p50) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for store, r in online.items():
        for batch in args.batches:
            ours = _percentiles(r["ol"]["latencies"][str(batch)])
            theirs = _percentiles(r["feast"]["latencies"][str(batch)]) if "feast" in r else None
            feast_cols = (
                f"{theirs['p50']:.3f} | {theirs['p99']:.3f} | {theirs['p50'] / ours['p50']:.1f}×"
                if theirs
                else "— | — | —"
            )
            print(f"| {store} | {batch} | {ours['p50']:.3f} | {ours['p99']:.3f} | {feast_cols} |")
    print("\n### Materialization of the latest-value views (median)\n")
    print("| store | rows | OL | OL rows/s | Feast | Feast rows/s | OL / Feast (rows/s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for store, r in online.items():
        ol_s = median(r["ol"]["materialize"])
        rows = r["ol"]["rows"]
        line = f"| {store} | {rows:,} | {ol_s:.2f} s | {rows / ol_s:,.0f} | "
        if "feast" in r:
            fe_s = median(r["feast"]["materialize"])
            line += f"{fe_s:.2f} s | {rows / fe_s:,.0f} | {fe_s / ol_s:.1f}× |"
        else:
            line += "— | — | — |"
        print(line)
    notes = []
    for t in training:
        setup = " / ".join(f"{t[k]['setup_mb']:,.0f}" if k in t else "—" for k in ("feast", "ol", "floor"))
        notes.append(
            f"spine {t['label']}: RSS before the timed runs (imports, definitions, spine), MiB, Feast / OL / floor: {setup}"
        )
        if "feast" in t:
            notes.append(
                f"spine {t['label']}: Feast dropped {t['feast']['dropped']:,} spine rows (a key with events, "
                "none in [t - ttl, t]); OpenLearner returned them with nulls; values equal on the rest"
            )
    for store, r in online.items():
        if "ttl" in r:
            notes.append(
                f"{store}: of {r['ttl']['stale_keys']} entity rows whose user's last event is older than the TTL, "
                f"Feast served a value for {r['ttl']['stale_served_by_feast']}, OpenLearner marked them expired (null)"
            )
    if notes:
        print("\n" + "\n".join(f"- {n}" for n in notes))


if __name__ == "__main__":
    main()
