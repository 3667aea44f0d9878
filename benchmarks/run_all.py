"""Run every benchmark script in this folder in turn (``make bench``).

Names starting with ``_`` are helpers (such as a peer's driver, run in the peer's venv), not
benchmarks; so are the servers a benchmark starts itself (:data:`SERVERS`). The scripts in
:data:`SETUP` run first: they install the benchmarks' peers (idempotent, so a second run costs
seconds), so that ``make bench`` on a fresh checkout measures against them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SETUP = ("peers.sh", "predictor_peers.py")
"""Run before the benchmarks: Feast 0.67 in ``benchmarks/.peers/feast`` for
``feature_store.py``, MLflow 3 in ``benchmarks/.peers/mlflow`` for ``predictor.py``."""
SERVERS = frozenset({"predictor_floor.py", "grpc_echo.py"})
"""Servers ``predictor.py`` starts with their arguments; run alone they would only wait."""
ARGUMENTS = {"predictor.py": ["--grpc"]}
"""What a benchmark is run with, where it is not nothing."""


def commands() -> list[list[str]]:
    """The scripts to run, in order, each as a command line."""
    scripts = sorted(HERE.glob("*.py"))
    chosen = [HERE / name for name in SETUP]
    chosen += [
        script
        for script in scripts
        if script.name not in (Path(__file__).name, *SETUP, *SERVERS) and not script.name.startswith("_")
    ]
    return [
        ["bash" if script.suffix == ".sh" else sys.executable, str(script), *ARGUMENTS.get(script.name, [])]
        for script in chosen
    ]


def main() -> int:
    failures = 0
    for command in commands():
        print(f"\n## {Path(command[1]).stem}\n", flush=True)
        failures += subprocess.run(command, check=False).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
