"""``make bench``'s runner (``benchmarks/run_all.py``): which scripts it runs, in which order."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_all() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCHMARKS))
    return run_all


def test_setup_runs_first_servers_and_helpers_never_and_every_benchmark_once() -> None:
    run_all = _run_all()
    commands = run_all.commands()
    names = [Path(command[1]).name for command in commands]
    # Every name it knows of is a script here: a rename cannot leave a server run as a benchmark.
    for name in (*run_all.SETUP, *run_all.SERVERS, *run_all.ARGUMENTS):
        assert (BENCHMARKS / name).exists(), name
    assert names[: len(run_all.SETUP)] == list(run_all.SETUP)
    assert not set(names) & run_all.SERVERS
    # The servers predictor.py starts take required arguments: run alone, they fail make bench.
    assert not {"predictor_floor.py", "grpc_echo.py"} & set(names)
    assert "run_all.py" not in names and not [n for n in names if n.startswith("_")]
    assert len(names) == len(set(names))
    expected = {
        p.name
        for p in BENCHMARKS.glob("*.py")
        if not p.name.startswith("_") and p.name != "run_all.py" and p.name not in run_all.SERVERS
    }
    assert set(names) == expected | set(run_all.SETUP)
    assert {"predictor.py", "feature_store.py", "flow.py", "training_set.py"} <= set(names)
    assert next(c for c in commands if Path(c[1]).name == "predictor.py")[2:] == ["--grpc"]
    assert commands[0] == ["bash", str(BENCHMARKS / "peers.sh")]
    assert all(command[0] == sys.executable for command in commands[1:])
