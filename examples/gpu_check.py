"""GPU check: every PyTorch family trains on CUDA when a GPU is present, and still exports with parity.

Each family (MLP, EmbeddingRanker, CNN, LSTM) trains for two epochs on small synthetic data
with ``device="auto"``; the check asserts that the parameters live on the GPU, that the
report names it, and that the exported graph (built from a CPU copy) passes the parity gate
against the GPU-trained model. Then a Flow workflow whose operator asks for
``Resources(gpu=1)`` runs on the local executor in a scratch workspace, after this process
has itself used CUDA, and its operator must train on the GPU (GPU operators run in worker
processes started fresh, since a forked child cannot use CUDA once its parent has).

    .venv/bin/python examples/gpu_check.py             # on a machine with a CUDA GPU
    .venv/bin/python examples/gpu_check.py --allow-cpu # a dry run of the same code on the CPU

Exits non-zero when there is no GPU (without ``--allow-cpu``), a family does not train on
it, or an export fails parity.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

from openlearner.flow import Resources, log_metric, operator, workflow


def families(rng: np.random.Generator) -> dict[str, tuple[Any, Any, Any]]:
    """name: (model, X, y) on synthetic data."""
    from openlearner.models import CNNClassifier, EmbeddingRanker, LSTMClassifier, MLPClassifier

    X = rng.normal(size=(2000, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    table = pa.table({"user": rng.integers(0, 100, 2000), "item": rng.integers(0, 50, 2000), "x": X[:, 0]})
    images = rng.random((512, 1, 16, 16)).astype(np.float32)
    texts = [" ".join(rng.choice(["good", "bad", "day", "night", "the"], 6).tolist()) for _ in range(512)]
    labels = np.array([int("good" in t) for t in texts])
    return {
        "MLPClassifier": (MLPClassifier(epochs=2), X, y),
        "EmbeddingRanker": (EmbeddingRanker(categorical_columns=["user", "item"], epochs=2), table, y),
        "CNNClassifier": (CNNClassifier(epochs=2), images, (images.mean(axis=(1, 2, 3)) > 0.5).astype(int)),
        "LSTMClassifier": (LSTMClassifier(epochs=2, max_len=8), texts, labels),
    }


@operator(resources=Resources(cpu=1, gpu=1), cache=False)
def fit_mlp(rows: int) -> dict:
    """The Flow part's operator: asks for a GPU, trains with device="auto", reports the device."""
    from openlearner.models import MLPClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, 8)).astype(np.float32)
    model = MLPClassifier(epochs=2).fit(X, (X[:, 0] > 0).astype(np.int64))
    on_gpu = all(p.is_cuda for p in model.network_.parameters())
    log_metric("on_gpu", float(on_gpu))
    return {"device": model.device_, "on_gpu": on_gpu}


@workflow
def gpu_training(rows: int = 2000) -> dict:
    """The Flow part: one operator that needs a GPU (worker processes find it by name here)."""
    return {"fit": fit_mlp(rows)}


def flow_check(cuda: bool) -> list[str]:
    """Run the one-operator GPU workflow on the local executor; problems found."""
    import tempfile
    from pathlib import Path

    from openlearner import Settings, Workspace

    with (
        tempfile.TemporaryDirectory() as home,
        Workspace.init(settings=Settings(home=Path(home) / "ws")) as ws,
    ):
        started = time.perf_counter()
        try:
            run = ws.flow.run(gpu_training, executor="local")
        except Exception as exc:  # a CPU-only dry run: the executor refuses a GPU operator
            if cuda:
                return [f"Flow refused the GPU operator: {exc}"]
            print(f"Flow: refused on a machine without a GPU, as it should be: {exc}")
            return []
        result = run.outputs.get("fit") if run.status == "succeeded" else None
        print(
            f"Flow: run {run.status} in {time.perf_counter() - started:.1f} s; operator says {result}; error {run.error}"
        )
        if run.status != "succeeded" or not result or not result["on_gpu"]:
            return [
                f"the Flow operator with Resources(gpu=1) did not train on the GPU ({run.status}: {run.error})"
            ]
    return []


def main(argv: list[str] | None = None) -> int:
    """Train and export each family; print one line each. 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU")
    args = parser.parse_args(argv)
    import torch

    from openlearner.models.onnx import export

    cuda = torch.cuda.is_available()
    print(
        f"torch {torch.__version__}; CUDA available: {cuda}"
        + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
    )
    if not cuda and not args.allow_cpu:
        print("FAIL: no CUDA GPU here (pass --allow-cpu for a dry run on the CPU)", file=sys.stderr)
        return 1
    problems = []
    for name, (model, X, y) in families(np.random.default_rng(0)).items():
        started = time.perf_counter()
        model.fit(X, y)
        on_gpu = all(p.is_cuda for p in model.network_.parameters())
        _, report = export(model, X)
        print(
            f"{name}: device {model.device_}, parameters on CUDA: {on_gpu}, {time.perf_counter() - started:.1f} s; {report}"
        )
        if cuda and (not on_gpu or not model.device_.startswith("cuda")):
            problems.append(f"{name} did not train on the GPU")
        if not report.passed:
            problems.append(f"{name} parity: {report}")
    problems += flow_check(cuda)  # this process has used CUDA by now: the worker must still get it
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
