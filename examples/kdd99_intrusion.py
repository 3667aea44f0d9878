"""Network intrusion detection on KDD Cup 99 (Sigma-style): a multi-class GBDT and an isolation forest.

* ``GBDTClassifier`` learns five classes — normal, dos, probe, r2l, u2r (the attack names
  grouped the standard way) — on the distinct rows of the 10 % training file and is tested on the labelled
  ``corrected`` file, whose attacks include 14 kinds never seen in training. The three text
  columns (protocol, service, flag) are declared categorical; levels the model never saw
  go to its unknown bucket and are counted.
* ``IsolationForest`` is trained on normal connections only and flags everything unlike
  them; it is scored by AUC of its anomaly score and precision/recall of its flag.

    .venv/bin/python examples/kdd99_intrusion.py [--data ../shared/data]

Exits non-zero when a model does not beat its trivial baseline by a clear margin (the
majority class; a random score) or its ONNX graph fails parity.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from openlearner.models import GBDTClassifier, IsolationForest
from openlearner.models.metrics import accuracy, auc, precision_recall
from openlearner.models.onnx import export

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAIN, TEST = "anomaly/kddcup.data_10_percent.gz", "anomaly/corrected.gz"
NAMES = [
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment",
    "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted",
    "num_root", "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds",
    "is_host_login", "is_guest_login", "count", "srv_count", "serror_rate", "srv_serror_rate",
    "rerror_rate", "srv_rerror_rate", "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate",
    "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate", "attack",
]  # fmt: skip
TEXT = ("protocol_type", "service", "flag")
CATEGORY = {
    "normal": "normal",
    **dict.fromkeys(
        [
            "back",
            "land",
            "neptune",
            "pod",
            "smurf",
            "teardrop",
            "apache2",
            "mailbomb",
            "processtable",
            "udpstorm",
        ],
        "dos",
    ),
    **dict.fromkeys(["ipsweep", "nmap", "portsweep", "satan", "mscan", "saint"], "probe"),
    **dict.fromkeys(
        [
            "ftp_write",
            "guess_passwd",
            "imap",
            "multihop",
            "phf",
            "spy",
            "warezclient",
            "warezmaster",
            "named",
            "sendmail",
            "snmpgetattack",
            "snmpguess",
            "worm",
            "xlock",
            "xsnoop",
            "httptunnel",
        ],
        "r2l",
    ),
    **dict.fromkeys(["buffer_overflow", "loadmodule", "perl", "rootkit", "ps", "sqlattack", "xterm"], "u2r"),
}


def load(path: Path, rows: int | None = None) -> pa.Table:
    """One KDD file (gzip CSV without header) as a table; the first ``rows`` lines when given."""
    with gzip.open(path, "rb") as raw:
        data = raw.read() if rows is None else b"".join(raw.readline() for _ in range(rows))
    return pacsv.read_csv(pa.py_buffer(data), read_options=pacsv.ReadOptions(column_names=NAMES))


def distinct(table: pa.Table) -> pa.Table:
    """The table without repeated rows: three quarters of the training file are exact duplicates
    (floods of identical smurf and neptune connections), which cost training time and teach nothing."""
    return table.group_by(table.column_names, use_threads=False).aggregate([])


def categories(table: pa.Table) -> np.ndarray:
    """The five-way class of every row (normal, dos, probe, r2l, u2r)."""
    names = [a.rstrip(".") for a in table.column("attack").to_pylist()]
    unknown = sorted({a for a in names if a not in CATEGORY})
    if unknown:
        raise ValueError(f"attack names without a category: {unknown}")
    return np.array([CATEGORY[a] for a in names])


class TextCodes:
    """The text columns as integer codes from the training vocabulary (unseen text: a code past it)."""

    def __init__(self, train: pa.Table) -> None:
        self.vocab = {c: {v: i for i, v in enumerate(sorted(set(train.column(c).to_pylist())))} for c in TEXT}

    def features(self, table: pa.Table) -> pa.Table:
        """Every input column as numbers; text columns coded."""
        columns: dict[str, Any] = {}
        for name in NAMES[:-1]:
            if name in TEXT:
                vocab = self.vocab[name]
                columns[name] = np.array(
                    [vocab.get(v, len(vocab)) for v in table.column(name).to_pylist()], float
                )
            else:
                columns[name] = table.column(name).to_numpy().astype(np.float64)
        return pa.table(columns)


@dataclass
class Result:
    """Figures of one model against its baseline."""

    model: str
    figures: dict[str, float]
    baseline: dict[str, float]
    train_s: float
    train_cpu_s: float
    parity: float
    notes: str = ""


def classify(train: pa.Table, test: pa.Table, num_trees: int = 40, parity_rows: int = 5000) -> Result:
    """The multi-class GBDT (on the distinct training rows) against always predicting the training
    file's majority class."""
    codes = TextCodes(train)
    majority_of = categories(train)
    majority = max(set(majority_of), key=lambda c: int(np.sum(majority_of == c)))
    train = distinct(train)
    X, y = codes.features(train), categories(train)
    test_X, test_y = codes.features(test), categories(test)
    model = GBDTClassifier(
        num_trees=num_trees, num_leaves=15, learning_rate=0.1, categorical_features=list(TEXT), num_threads=2
    )
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(X, y)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    predicted = model.predict(test_X)
    report = precision_recall(test_y, predicted)
    classes = sorted(set(test_y))
    _, parity = export(model, test_X.slice(0, parity_rows))
    figures = {
        "accuracy": accuracy(test_y, predicted),
        "macro recall": float(np.mean([report[c].recall for c in classes])),
    }
    figures.update({f"recall {c}": report[c].recall for c in classes})
    figures.update({f"precision {c}": report[c].precision for c in classes})
    baseline = {
        "accuracy": accuracy(test_y, np.full(len(test_y), majority)),
        "macro recall": 1 / len(classes),
    }
    unknown = model.unknown_levels(test_X)
    return Result(
        "GBDTClassifier (5 classes)",
        figures,
        baseline,
        seconds,
        cpu,
        parity.max_abs_diff,
        f"trained on {train.num_rows} distinct rows; unseen test levels in the unknown bucket: {unknown}",
    )


def detect(train: pa.Table, test: pa.Table, num_trees: int = 100, parity_rows: int = 5000) -> Result:
    """The isolation forest on normal training rows, against a random score."""
    numeric = [n for n in NAMES[:-1] if n not in TEXT]
    normal = train.filter(pa.array(categories(train) == "normal")).select(numeric)
    test_X, is_attack = test.select(numeric), (categories(test) != "normal").astype(int)
    model = IsolationForest(num_trees=num_trees, num_threads=2, seed=0)
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(normal)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    score, flag = model.score_samples(test_X), model.predict(test_X)
    report = precision_recall(is_attack, flag)
    _, parity = export(model, test_X.slice(0, parity_rows))
    figures = {
        "AUC": auc(is_attack, score),
        "precision (attack)": report[1].precision,
        "recall (attack)": report[1].recall,
    }
    figures["normal flagged"] = float(flag[is_attack == 0].mean())
    baseline = {"AUC": 0.5, "precision (attack)": float(is_attack.mean())}
    return Result(
        "IsolationForest (normal-only)",
        figures,
        baseline,
        seconds,
        cpu,
        parity.max_abs_diff,
        f"trained on {normal.num_rows} normal rows",
    )


def table_text(results: list[Result]) -> str:
    """The figures as a Markdown table (model, metric, value, baseline)."""
    lines = ["| model | metric | value | trivial baseline |", "|---|---|---|---|"]
    for r in results:
        for key, value in r.figures.items():
            base = r.baseline.get(key)
            lines.append(f"| {r.model} | {key} | {value:.4f} | {'' if base is None else f'{base:.4f}'} |")
        lines.append(f"| {r.model} | training seconds (wall) | {r.train_s:.1f} | |")
        lines.append(f"| {r.model} | training CPU seconds | {r.train_cpu_s:.1f} | |")
        lines.append(f"| {r.model} | ONNX parity max abs diff | {r.parity:.1e} | |")
    return "\n".join(lines)


def failures(results: list[Result]) -> list[str]:
    """What keeps a model from clearly beating its baseline, or from exporting."""
    problems = []
    for r in results:
        if "accuracy" in r.figures and not (
            r.figures["accuracy"] > r.baseline["accuracy"] + 0.1
            and r.figures["macro recall"] > 2 * r.baseline["macro recall"]
        ):
            problems.append(f"{r.model} does not beat the majority class clearly: {r.figures}")
        if "AUC" in r.figures and not r.figures["AUC"] > 0.8:
            problems.append(f"{r.model} AUC {r.figures['AUC']:.4f} is not clearly above a random score")
        if not r.parity <= 1e-4:
            problems.append(f"{r.model} fails ONNX parity ({r.parity:.1e})")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run both studies and print the table; 1 when a model fails its baseline or parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    paths = [args.data / TRAIN, args.data / TEST]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"error: KDD Cup 99 files are missing: {', '.join(missing)}; pass --data", file=sys.stderr)
        return 2
    started = time.perf_counter()
    train, test = load(paths[0]), load(paths[1])
    print(f"train: {train.num_rows} connections; test (corrected): {test.num_rows}\n")
    results = [classify(train, test), detect(train, test)]
    print(table_text(results))
    for r in results:
        print(f"\n{r.model}: {r.notes}")
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    problems = failures(results)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
