"""Flow overhead: a 1,000-node DAG of trivial operators against plain calls and raw Ray tasks, and a cached rerun.

    .venv/bin/python benchmarks/flow.py                  # local, thread and Ray; ~3 min on 2 cores
    .venv/bin/python benchmarks/flow.py --no-ray --nodes 500 --repeats 5 --json out.json

The DAG has ``layers`` layers of equal width; each node adds one to a node of the layer
before, so every value is a small JSON int passed by reference. Each side runs the same
DAG in the same process (the two Ray sides interleaved): plain Python calls in topological order (the floor of the work
itself), raw Ray tasks chained by ObjectRefs (the Ray floor), and ``ws.flow.run`` with
caching off on the local process executor, the thread executor and Ray. Overhead per
operator = (Flow time - floor time) / nodes. The last figure is a rerun of the demo's
training workflow (``openlearner.demo.ads_ctr_training``) where every operator comes from
the cache. Medians of ``--repeats`` runs after one warm-up run of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openlearner import Workspace
from openlearner.flow import operator, workflow


@operator(cache=False)
def inc(x: int) -> int:
    return x + 1


def plain_inc(x: int) -> int:
    return x + 1


@workflow
def layered(layers: int = 10, width: int = 100) -> int:
    previous = [inc(i) for i in range(width)]
    for _ in range(layers - 1):
        previous = [inc(previous[i]) for i in range(width)]
    return previous[-1]


def plain(layers: int, width: int) -> int:
    previous = [plain_inc(i) for i in range(width)]
    for _ in range(layers - 1):
        previous = [plain_inc(previous[i]) for i in range(width)]
    return previous[-1]


def raw_ray(layers: int, width: int) -> int:
    import ray

    remote = ray.remote(plain_inc)
    previous = [remote.remote(i) for i in range(width)]
    for _ in range(layers - 1):
        previous = [remote.remote(previous[i]) for i in range(width)]
    ray.get(previous)
    return int(ray.get(previous[-1]))


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()  # warm-up: imports, worker processes, Ray workers
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def cached_demo_rerun(root: Path, repeats: int) -> tuple[float, float]:
    """Seconds for the demo training workflow: first run, then the median fully cached rerun."""
    import pyarrow.parquet as pq

    from openlearner.datasets import simulate_ads
    from openlearner.demo import CONTEXT, ads_ctr_training, ads_definitions
    from openlearner.features.definitions import Source

    ws = Workspace.init(root / "demo")
    days = 7
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days)
    events = simulate_ads(days, 100_000, 0, start=start)
    folder = ws.settings.data_dir / "ads_events"
    folder.mkdir(parents=True)
    pq.write_table(events, folder / "events.parquet")
    source = Source.parquet(folder / "*.parquet", timestamp="event_time", name="ads_events")
    user, ad, user_stats, ad_stats, service = ads_definitions(source)
    ws.features.apply([user, ad, source, user_stats, ad_stats, service])
    import hashlib

    params = {
        "home": str(ws.root),
        "events": str(folder / "events.parquet"),
        "events_sha256": hashlib.sha256((folder / "events.parquet").read_bytes()).hexdigest(),
        "split_at": (start + timedelta(days=days - 1)).isoformat(),
        "columns": [*service.columns, *CONTEXT],
    }
    began = time.perf_counter()
    first = ws.flow.run(ads_ctr_training, params)
    cold = time.perf_counter() - began
    assert first.status == "succeeded", first.error
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run = ws.flow.run(ads_ctr_training, params)
        times.append(time.perf_counter() - began)
        assert all(o.cache_hit for o in ws.flow.operators(run.id)), "a rerun missed the cache"
    ws.close()
    return cold, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000, help="DAG size (a multiple of --width)")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray sides")
    parser.add_argument("--no-demo", action="store_true", help="skip the cached demo rerun")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    layers = max(1, args.nodes // args.width)
    nodes = layers * args.width
    expected = plain(layers, args.width)
    figures: dict[str, Any] = {"nodes": nodes, "layers": layers, "width": args.width, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="openlearner-bench-flow-") as tmp:
        ws = Workspace.init(Path(tmp) / "ws")

        def flow_run(executor: str) -> Callable[[], Any]:
            def go() -> Any:
                run = ws.flow.run(
                    layered, {"layers": layers, "width": args.width}, executor=executor, cache=False
                )
                assert run.status == "succeeded" and run.outputs == expected, run.error
                return run.outputs

            return go

        figures["plain_s"], _ = timed(lambda: plain(layers, args.width), args.repeats)
        for name in ("local", "thread"):
            figures[f"flow_{name}_s"], _ = timed(flow_run(name), args.repeats)
        if not args.no_ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            assert raw_ray(layers, args.width) == expected
            flow_ray = flow_run("ray")
            flow_ray()
            raw_times, flow_times = [], []
            for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
                began = time.perf_counter()
                raw_ray(layers, args.width)
                raw_times.append(time.perf_counter() - began)
                began = time.perf_counter()
                flow_ray()
                flow_times.append(time.perf_counter() - began)
            figures["raw_ray_s"], figures["flow_ray_s"] = (
                statistics.median(raw_times),
                statistics.median(flow_times),
            )
            figures["ray_ratios"] = [f / r for f, r in zip(flow_times, raw_times, strict=True)]
            ray.shutdown()
        ws.close()
        if not args.no_demo:
            figures["demo_first_s"], figures["demo_cached_rerun_s"] = cached_demo_rerun(
                Path(tmp), args.repeats
            )

    per_op = {k: (figures[f"flow_{k}_s"] - figures["plain_s"]) / nodes * 1000 for k in ("local", "thread")}
    print(f"Flow overhead on a {nodes}-node DAG ({layers} layers × {args.width}), median of {args.repeats}")
    print(f"  plain calls               {figures['plain_s'] * 1000:9.2f} ms")
    for name in ("local", "thread"):
        print(
            f"  flow {name:<8} executor    {figures[f'flow_{name}_s']:9.2f} s   {per_op[name]:.2f} ms/operator"
        )
    if "raw_ray_s" in figures:
        ratio = figures["flow_ray_s"] / figures["raw_ray_s"]
        figures["ray_ratio"] = ratio
        print(
            f"  raw Ray tasks             {figures['raw_ray_s']:9.2f} s   {figures['raw_ray_s'] / nodes * 1000:.2f} ms/task"
        )
        ratios = ", ".join(f"{r:.2f}" for r in figures["ray_ratios"])
        print(
            f"  flow on Ray               {figures['flow_ray_s']:9.2f} s   {ratio:.2f}× raw Ray (per pair: {ratios})"
        )
    if "demo_cached_rerun_s" in figures:
        print(
            f"  demo training workflow    first run {figures['demo_first_s']:.2f} s, "
            f"fully cached rerun {figures['demo_cached_rerun_s']:.3f} s"
        )
    figures["flow_overhead_ms_per_operator"] = per_op
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
