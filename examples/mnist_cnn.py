"""Handwritten digits (Lumos-style image classification): CNNClassifier on the MNIST test images.

The 10,000 official MNIST test images are read from their IDX files with numpy alone; the
model trains on the first 8,000 (10 % of them held out for early stopping) and is scored
on the last 2,000, against the trivial baseline of always answering the most common digit.

    .venv/bin/python examples/mnist_cnn.py [--data ../shared/data] [--threads 1]

Exits non-zero when the CNN's accuracy does not beat the baseline by 0.5, or when its
ONNX graph fails parity.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from openlearner.models import CNNClassifier
from openlearner.models.cnn import read_idx
from openlearner.models.metrics import accuracy
from openlearner.models.onnx import export

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGES, LABELS = "images/t10k-images-idx3-ubyte.gz", "images/t10k-labels-idx1-ubyte.gz"


def main(argv: list[str] | None = None) -> int:
    """Train, score, export; print the table. 1 when the CNN fails its baseline or parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)
    missing = [name for name in (IMAGES, LABELS) if not (args.data / name).exists()]
    if missing:
        print(
            f"error: MNIST files are missing under {args.data}: {', '.join(missing)}; pass --data",
            file=sys.stderr,
        )
        return 2
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    images, labels = read_idx(args.data / IMAGES), read_idx(args.data / LABELS)
    train_x, train_y, test_x, test_y = images[:8000], labels[:8000], images[8000:], labels[8000:]
    print(
        f"images: {images.shape[0]} × {images.shape[1]}×{images.shape[2]} ({len(train_x)} train, {len(test_x)} test)"
    )

    t = time.perf_counter()
    model = CNNClassifier(
        channels=(16, 32),
        hidden_size=64,
        dropout=0.25,
        epochs=args.epochs,
        batch_size=64,
        learning_rate=2e-3,
        seed=0,
    ).fit(train_x, train_y)
    seconds = time.perf_counter() - t
    cnn = accuracy(test_y, model.predict(test_x))
    _, report = export(model, test_x)
    majority_digit = int(np.bincount(train_y).argmax())
    baseline = accuracy(test_y, np.full(len(test_y), majority_digit))

    print("\n| model | test accuracy | train s | parity max abs diff |\n|---|---:|---:|---:|")
    print(f"| CNNClassifier | {cnn:.4f} | {seconds:.1f} | {report.max_abs_diff:.1e} |")
    print(f"| most common digit ({majority_digit}, trivial) | {baseline:.4f} | 0.0 | — |")
    print(f"\n{len(model.history_)} epochs (best {model.best_epoch_}) on {model.device_}; {report}")
    print(f"(total {time.perf_counter() - started:.1f} s, {args.threads} torch thread(s))")
    problems = [] if report.passed else [f"parity: {report}"]
    if cnn < baseline + 0.5:
        problems.append(f"CNN accuracy {cnn:.4f} does not beat the baseline {baseline:.4f} by 0.5")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
