"""Ads click prediction on TalkingData (He et al. 2014): LR, online LR, GBDT and GBDT+LR,
with and without negative down-sampling and re-calibration.

The label is ``is_attributed``; the split is by time (train: 2017-11-06 16:00 to 11-08,
test: 11-09), as a model is trained on the past and serves the future. Features are the
click's ids (app, device, os, channel — declared categorical for the trees, one-hot for
the linear model), its hour, and how many clicks its app, channel and ip had made just before
it (in the trailing six hours, so no row sees the future). Every model is scored by normalized
entropy (against the training CTR, as in the paper), AUC and calibration, and exported to
ONNX through the parity gate. The regularization strengths (LR ``C=1``, GBDT+LR ``lr_C=0.005``)
were chosen on the last fifth of the training period, never on the test day.

    .venv/bin/python examples/ads_ctr_talkingdata.py [--data ../shared/data] [--rate 0.1]

Exits non-zero when a model does not beat the constant-CTR baseline by a clear margin
(NE below 90 % of the baseline's, AUC above 0.75) or its ONNX graph fails parity.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import scipy.sparse as sp

from openlearner.models import (
    GBDTClassifier,
    GBDTLogisticRegression,
    LogisticRegression,
    OnlineLogisticRegression,
    downsample_negatives,
)
from openlearner.models.metrics import auc, calibration, normalized_entropy
from openlearner.models.onnx import export

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CSV = "ctr/talkingdata_train_sample.csv"
IDS = ("app", "device", "os", "channel")
TEST_FROM = "2017-11-09"
WINDOW_HOURS = 6


@dataclass
class Row:
    """One line of the results table."""

    model: str
    sampling: str
    ne: float
    auc: float
    calibration: float
    train_s: float
    train_cpu_s: float
    parity: float


def load(path: Path, rows: int | None = None) -> pa.Table:
    """The click log sorted by time (the first ``rows`` clicks in time when given)."""
    table = pacsv.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={"click_time": pa.timestamp("s")})
    )
    table = table.sort_by("click_time")
    return table.slice(0, rows) if rows else table


def features(table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Numeric feature table (ids as categorical codes, hour, prior counts), labels, test mask."""
    columns: dict[str, Any] = {name: table.column(name).to_numpy().astype(np.float64) for name in IDS}
    columns["hour"] = pc.hour(table.column("click_time")).to_numpy().astype(np.float64)
    seconds = table.column("click_time").cast(pa.int64()).to_numpy()
    for key in ("app", "channel", "ip"):
        columns[f"{key}_clicks_{WINDOW_HOURS}h"] = np.log1p(
            _trailing_counts(table.column(key).to_numpy(), seconds)
        )
    labels = table.column("is_attributed").to_numpy().astype(np.int64)
    test = pc.greater_equal(
        table.column("click_time"), pa.scalar(np.datetime64(TEST_FROM, "s"), pa.timestamp("s"))
    )
    return pa.table(columns), labels, test.to_numpy(zero_copy_only=False)


def _trailing_counts(keys: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Per row: clicks with the same key in the ``WINDOW_HOURS`` before it (strictly earlier seconds).

    A trailing window keeps the feature stationary; a count since the start of the log
    would grow with time and shift between the training and the test period.
    """
    _, key = np.unique(keys, return_inverse=True)
    stamp = key.astype(np.int64) * 10**10 + (seconds - seconds.min())
    ordered = np.sort(stamp)
    now = np.searchsorted(ordered, stamp, side="left")
    then = np.searchsorted(ordered, stamp - WINDOW_HOURS * 3600, side="left")
    return (now - then).astype(np.float64)


class OneHot:
    """One-hot ids (levels seen at least ``min_count`` times in training, the rest in one "other" column)."""

    def __init__(self, train: pa.Table, min_count: int = 5) -> None:
        self.levels: dict[str, dict[float, int]] = {}
        width = 0
        for name in (*IDS, "hour"):
            values, counts = np.unique(train.column(name).to_numpy(), return_counts=True)
            kept = values[counts >= min_count]
            self.levels[name] = {float(v): width + 1 + i for i, v in enumerate(kept)}
            self.levels[name][-1.0] = width  # "other"
            width += len(kept) + 1
        self.dense = [c for c in train.column_names if "_clicks_" in c]
        self.width = width + len(self.dense)

    def transform(self, table: pa.Table) -> sp.csr_matrix:
        """A sparse matrix: one 1 per id field, then the dense count columns."""
        n = table.num_rows
        rows, cols, vals = [], [], []
        for name, index in self.levels.items():
            other = index[-1.0]
            codes = np.array([index.get(float(v), other) for v in table.column(name).to_numpy()])
            rows.append(np.arange(n))
            cols.append(codes)
            vals.append(np.ones(n))
        start = self.width - len(self.dense)
        for j, name in enumerate(self.dense):
            rows.append(np.arange(n))
            cols.append(np.full(n, start + j))
            vals.append(table.column(name).to_numpy())
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, self.width)
        )


def study(table: pa.Table, rate: float = 0.1, parity_rows: int = 3000, num_trees: int = 150) -> list[Row]:
    """Train every model (plain and down-sampled), score it on the test period and check its export."""
    X, y, test = features(table)
    train_X, test_X = X.filter(pa.array(~test)), X.filter(pa.array(test))
    train_y, test_y = y[~test], y[test]
    base = float(train_y.mean())
    one_hot = OneHot(train_X)
    sparse_train, sparse_test = one_hot.transform(train_X), one_hot.transform(test_X)
    trees = {"num_trees": num_trees, "num_leaves": 15, "learning_rate": 0.05, "min_child_samples": 40}
    candidates: list[tuple[str, Any, Any, Any]] = [
        ("LR (one-hot)", lambda: LogisticRegression(C=1.0), sparse_train, sparse_test),
        (
            "online LR (one-hot, one pass in time order)",
            lambda: OnlineLogisticRegression(alpha=0.1, beta=1.0, shuffle=False),
            sparse_train,
            sparse_test,
        ),
        ("GBDT", lambda: GBDTClassifier(**trees, categorical_features=list(IDS)), train_X, test_X),
        (
            "GBDT+LR",
            lambda: GBDTLogisticRegression(**trees, categorical_features=list(IDS), lr_C=0.005),
            train_X,
            test_X,
        ),
    ]
    results = [
        Row(
            "constant training CTR",
            "-",
            normalized_entropy(test_y, np.full(len(test_y), base), base),
            0.5,
            calibration(test_y, np.full(len(test_y), base)),
            0.0,
            0.0,
            0.0,
        )
    ]
    for name, make, fit_rows, test_rows in candidates:
        for sampling in ("none", f"w={rate}"):
            model = make() if sampling == "none" else downsample_negatives(make(), rate, seed=0)
            started, cpu = time.perf_counter(), time.process_time()
            model.fit(fit_rows, train_y)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            p = model.predict_proba(test_rows)[:, 1]
            held = test_rows[:parity_rows] if sp.issparse(test_rows) else test_rows.slice(0, parity_rows)
            _, report = export(model, held)
            results.append(
                Row(
                    name,
                    sampling,
                    normalized_entropy(test_y, p, base),
                    auc(test_y, p),
                    calibration(test_y, p),
                    seconds,
                    cpu,
                    report.max_abs_diff,
                )
            )
    return results


def table_text(results: list[Row]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| model | down-sampling | NE | AUC | calibration | train s | train CPU s | parity max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        figures = f"{r.ne:.4f} | {r.auc:.4f} | {r.calibration:.3f} | {r.train_s:.2f} | {r.train_cpu_s:.2f}"
        lines.append(f"| {r.model} | {r.sampling} | {figures} | {r.parity:.1e} |")
    return "\n".join(lines)


def failures(results: list[Row], ne_share: float = 0.9, min_auc: float = 0.75) -> list[str]:
    """What keeps a model from beating the constant baseline clearly (NE below ``ne_share`` of the
    baseline's, AUC above ``min_auc``), or from exporting."""
    problems = []
    baseline = results[0]
    for r in results[1:]:
        if not (r.ne < ne_share * baseline.ne and r.auc > min_auc):
            problems.append(
                f"{r.model} ({r.sampling}): NE {r.ne:.4f}, AUC {r.auc:.4f} do not beat the baseline"
            )
        if not r.parity <= 1e-4:
            problems.append(f"{r.model} ({r.sampling}): ONNX parity {r.parity:.1e} over the tolerance")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the study and print its table; 1 when a model fails the baseline or parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rate", type=float, default=0.1, help="share of negatives kept when down-sampling")
    args = parser.parse_args(argv)
    path = args.data / CSV
    if not path.exists():
        print(f"error: the TalkingData sample is not at {path}; pass --data", file=sys.stderr)
        return 2
    started = time.perf_counter()
    table = load(path)
    _, y, test = features(table)
    print(
        f"train: {int((~test).sum())} clicks, {int(y[~test].sum())} attributed; "
        f"test (from {TEST_FROM}): {int(test.sum())} clicks, {int(y[test].sum())} attributed\n"
    )
    results = study(table, rate=args.rate)
    print(table_text(results))
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    problems = failures(results)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
