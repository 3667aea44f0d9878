"""Spam filtering (Sigma-style integrity) on the SMS Spam Collection: LSTMClassifier accuracy.

5,574 real text messages labelled ham or spam. The messages are shuffled (seed 0) and split
80/20; the model learns its vocabulary from the training messages only, carries it as data
(``Tokenizer.to_dict()``) and is exported to an ONNX graph that takes token ids. The
trivial baseline always answers "ham".

    .venv/bin/python examples/sms_spam_lstm.py [--data ../shared/data] [--threads 1]

Exits non-zero when the LSTM does not make at most half the baseline's errors, or when its
ONNX graph fails parity.
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
FILE = "text/SMSSpamCollection.tsv"


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
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    order = np.random.default_rng(0).permutation(len(rows))
    texts = [rows[i][1] for i in order]
    labels = np.array([rows[i][0] for i in order])
    cut = int(len(texts) * 0.8)
    print(
        f"messages: {len(texts)} ({cut} train, {len(texts) - cut} test); spam: {np.mean(labels == 'spam'):.1%}"
    )

    t = time.perf_counter()
    model = LSTMClassifier(
        max_len=48, min_frequency=2, embedding_dim=32, hidden_size=32, dropout=0.2, epochs=args.epochs,
        batch_size=64, learning_rate=3e-3, seed=0,
    ).fit(texts[:cut], labels[:cut])  # fmt: skip
    seconds = time.perf_counter() - t
    predicted = model.predict(texts[cut:])
    lstm = accuracy(labels[cut:], predicted)
    spam = precision_recall(labels[cut:], predicted)["spam"]
    _, report = export(model, texts[cut:])
    baseline = accuracy(labels[cut:], np.full(len(texts) - cut, "ham"))

    print("\n| model | test accuracy | spam precision | spam recall | train s | parity max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| LSTMClassifier | {lstm:.4f} | {spam.precision:.4f} | {spam.recall:.4f} | {seconds:.1f} "
        f"| {report.max_abs_diff:.1e} |"
    )
    print(f"| always ham (trivial) | {baseline:.4f} | — | 0.0000 | 0.0 | — |")
    print(
        f"\n{len(model.history_)} epochs (best {model.best_epoch_}); vocabulary {len(model.tokenizer_.vocabulary or [])} "
        f"words, max_len {model.tokenizer_.max_len}; {report}"
    )
    print(f"(total {time.perf_counter() - started:.1f} s, {args.threads} torch thread(s))")
    problems = [] if report.passed else [f"parity: {report}"]
    if 1 - lstm > 0.5 * (1 - baseline):
        problems.append(f"LSTM accuracy {lstm:.4f} does not halve the errors of the baseline {baseline:.4f}")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
