"""Point-in-time training set: OpenLearner's Feature Store vs a hand-written DuckDB query.

The floor is the query an engineer would write by hand for this one case (the spine *is*
the event log, so no union is needed): window functions over the events themselves. Both
compute the same five trailing-window features; the script checks the results are equal
before it reports any time. Run: ``make bench`` or ``.venv/bin/python benchmarks/training_set.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlearner import Settings, Workspace
from openlearner.datasets import simulate_ads
from openlearner.demo import CONTEXT, ads_definitions
from openlearner.features.definitions import Source

FLOOR = """
SELECT
  avg(clicked) OVER (PARTITION BY user_id ORDER BY event_time RANGE BETWEEN
      INTERVAL 86399999999 MICROSECOND PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS user_stats__ctr_1d,
  avg(clicked) OVER uw AS user_stats__ctr_7d,
  count(clicked) OVER uw AS user_stats__impressions_7d,
  avg(clicked) OVER aw AS ad_stats__ctr_7d,
  count(clicked) OVER aw AS ad_stats__impressions_7d,
  row AS __row
FROM (SELECT *, row_number() OVER () AS row FROM read_parquet('{path}'))
WINDOW
  uw AS (PARTITION BY user_id ORDER BY event_time RANGE BETWEEN
         INTERVAL 604799999999 MICROSECOND PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING),
  aw AS (PARTITION BY ad_id ORDER BY event_time RANGE BETWEEN
         INTERVAL 604799999999 MICROSECOND PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING)
ORDER BY __row
"""


def timed(fn: Callable[[], pa.Table], repeats: int) -> tuple[float, pa.Table]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


def run(rows_per_day: int, days: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        events = simulate_ads(days, rows_per_day, seed=0)
        path = Path(tmp) / "events.parquet"
        pq.write_table(events, path)
        ws = Workspace.init(settings=Settings(home=Path(tmp) / "ws"))
        source = Source.parquet(path, timestamp="event_time", name="ads_events")
        *definitions, service = ads_definitions(source)
        ws.features.apply([*definitions, service])
        spine = pq.read_table(path).select(["event_time", "user_id", "ad_id", *CONTEXT, "clicked"])

        ours_s, ours = timed(lambda: ws.features.training_set(spine, service), repeats)
        con = duckdb.connect()
        floor_s, floor = timed(lambda: con.sql(FLOOR.format(path=path)).to_arrow_table(), repeats)
        for column in service.columns:
            a = ours.column(column).to_numpy(zero_copy_only=False).astype(float)
            b = floor.column(column).to_numpy(zero_copy_only=False).astype(float)
            if not np.allclose(a, b, equal_nan=True):
                raise SystemExit(f"results differ in {column}; refusing to report times")
        ws.close()
    return {"rows": float(events.num_rows), "ours_s": ours_s, "floor_s": floor_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100_000 // 7, 1_000_000 // 7],
        help="events per day for each case",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        "| events = spine rows | OpenLearner training_set (median) | hand-written DuckDB floor (median) | ratio |"
    )
    print("|---:|---:|---:|---:|")
    for per_day in args.sizes:
        r = run(per_day, args.days, args.repeats)
        print(
            f"| {int(r['rows']):,} | {r['ours_s']:.2f} s | {r['floor_s']:.2f} s | {r['ours_s'] / r['floor_s']:.2f}× |"
        )


if __name__ == "__main__":
    main()
