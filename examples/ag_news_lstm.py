"""Topic classification on AG News (four classes): LSTMClassifier accuracy.

The 7,600 articles of the AG News test split (World, Sports, Business, Sci/Tech; 1,900
each), title and description joined, are shuffled (seed 0): the model trains on 6,000 and
is scored on 1,600. The vocabulary is learned from the training articles only and travels
with the model as data; the ONNX graph takes token ids and outputs ``probabilities``
``[batch, 4]``. The trivial baseline answers the most common training class.

    .venv/bin/python examples/ag_news_lstm.py [--data ../shared/data] [--threads 1]

Exits non-zero when the LSTM does not beat the baseline by 0.4, or when its ONNX graph
fails parity.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from openlearner.models import LSTMClassifier
from openlearner.models.metrics import accuracy, precision_recall
from openlearner.models.onnx import export

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILE = "text/ag_news_test.csv"
TOPICS = {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}


def main(argv: list[str] | None = None) -> int:
    """Train, score, export; print the table. 1 when the LSTM fails its baseline or parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    if not (args.data / FILE).exists():
        print(f"error: {FILE} is not under {args.data}; pass --data", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with (args.data / FILE).open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    order = np.random.default_rng(0).permutation(len(rows))
    texts = [f"{rows[i][1]} {rows[i][2]}".replace("\\", " ") for i in order]
    labels = np.array([int(rows[i][0]) for i in order])
    cut = 6000
    print(
        f"articles: {len(texts)} ({cut} train, {len(texts) - cut} test); classes: {np.bincount(labels)[1:].tolist()}"
    )

    t = time.perf_counter()
    model = LSTMClassifier(
        max_len=48, min_frequency=2, embedding_dim=64, hidden_size=64, dropout=0.3, epochs=args.epochs,
        batch_size=64, learning_rate=2e-3, seed=0,
    ).fit(texts[:cut], labels[:cut])  # fmt: skip
    seconds = time.perf_counter() - t
    predicted = model.predict(texts[cut:])
    lstm = accuracy(labels[cut:], predicted)
    per_class = precision_recall(labels[cut:], predicted)
    _, report = export(model, texts[cut:])
    common = int(np.bincount(labels[:cut]).argmax())
    baseline = accuracy(labels[cut:], np.full(len(texts) - cut, common))

    print("\n| model | test accuracy | train s | parity max abs diff |\n|---|---:|---:|---:|")
    print(f"| LSTMClassifier | {lstm:.4f} | {seconds:.1f} | {report.max_abs_diff:.1e} |")
    print(f"| most common class ({TOPICS[common]}, trivial) | {baseline:.4f} | 0.0 | — |")
    print(
        "\n"
        + ", ".join(f"{TOPICS[int(c)]}: P {r.precision:.2f} R {r.recall:.2f}" for c, r in per_class.items())
    )
    print(
        f"{len(model.history_)} epochs (best {model.best_epoch_}); vocabulary "
        f"{len(model.tokenizer_.vocabulary or [])} words; {report}"
    )
    print(f"(total {time.perf_counter() - started:.1f} s, {args.threads} torch thread(s))")
    problems = [] if report.passed else [f"parity: {report}"]
    if lstm < baseline + 0.4:
        problems.append(f"LSTM accuracy {lstm:.4f} does not beat the baseline {baseline:.4f} by 0.4")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
