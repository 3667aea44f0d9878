"""Install the predictor benchmark's peer, MLflow 3, in its own virtualenv under ``benchmarks/.peers/mlflow``.

Never a project dependency: ``benchmarks/predictor.py`` runs ``mlflow models serve`` from this
virtualenv. Idempotent: an existing virtualenv that imports MLflow 3 is kept.

    .venv/bin/python benchmarks/predictor_peers.py          # MLFLOW_SPEC="mlflow==3.18.*" to pin
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent / ".peers"
VENV = PEERS / "mlflow"
SPEC = os.environ.get("MLFLOW_SPEC", "mlflow>=3,<4")


def python() -> Path:
    """The peer virtualenv's interpreter."""
    return VENV / "bin" / "python"


def installed() -> str | None:
    """MLflow's version in the peer virtualenv, or None."""
    if not python().exists():
        return None
    probe = subprocess.run(
        [str(python()), "-c", "import mlflow, lightgbm; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
    )
    version = probe.stdout.strip()
    return version if probe.returncode == 0 and version.startswith("3.") else None


def install() -> str:
    """Create the virtualenv and install MLflow 3 and LightGBM into it; returns MLflow's version."""
    found = installed()
    if found:
        print(f"mlflow {found}: already installed in {VENV}")
        return found
    PEERS.mkdir(exist_ok=True)
    if not python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for packages in (["--upgrade", "pip"], [SPEC, "lightgbm"]):
        done = subprocess.run([*pip, *packages], capture_output=True, text=True)
        # Leave out pip's notices about local index folders a machine may not have.
        for line in (done.stdout + done.stderr).splitlines():
            if not line.startswith("WARNING: Location"):
                print(line)
        done.check_returncode()
    found = installed()
    if not found:
        raise SystemExit(f"MLflow did not install into {VENV}")
    print(f"mlflow {found}: installed in {VENV}")
    return found


if __name__ == "__main__":
    install()
