"""Movie ranking on MovieLens 100k: a DLRM-style EmbeddingRanker against a GBDT, by AUC.

The label is "liked" (rating >= 4). Ratings are split by time: the model learns from the
first 80 % and is scored on the last 20 %, so test users include people who joined later
(their ids go to the ranker's unknown bucket, and are counted). Both models get the same
dense features, all computed point-in-time (only ratings strictly before each row):

* the user's age and gender, the movie's release year and 18 genre flags;
* how many movies the user had rated before and what share they liked; the same for the
  movie (shrunk towards the overall rate by 5 pseudo-ratings).

The ranker also embeds ``user_id``, ``item_id`` and ``occupation`` (declared categorical);
the GBDT sees the occupation as a number.

    .venv/bin/python examples/movielens_ranking.py [--data ../shared/data] [--threads 1]

Exits non-zero when the ranker does not beat a random score (AUC 0.5) by 0.1, or when an
ONNX graph fails parity.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from openlearner.models import EmbeddingRanker, GBDTClassifier
from openlearner.models.metrics import auc
from openlearner.models.onnx import export

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
SHRINK = 5.0


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A MovieLens atomic file as dicts, the ``:type`` suffix stripped from the header."""
    with path.open(encoding="latin-1") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [name.split(":")[0] for name in rows[0]]
    return [dict(zip(header, row, strict=False)) for row in rows[1:]]


def year(text: str) -> float:
    """A release year; the few movies without one (blank or "unknown") get 1995, the median."""
    return float(text) if text.isdigit() else 1995.0


def prior_counts(keys: np.ndarray, liked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row (in time order): how many earlier rows share its key, and how many of those were liked."""
    order = np.argsort(keys, kind="stable")  # stable: time order kept within a key
    sorted_keys, sorted_liked = keys[order], liked[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    position = np.arange(len(keys))
    cumulative = np.r_[0, np.cumsum(sorted_liked)]
    count, likes = np.empty(len(keys)), np.empty(len(keys))
    count[order] = position - group_start
    likes[order] = cumulative[position] - cumulative[group_start]
    return count, likes


def features(data: Path) -> tuple[pa.Table, np.ndarray, int]:
    """Every rating in time order as a feature table, its label, and where the test part starts."""
    ratings = read_tsv(data / "recsys" / "ml-100k.inter")
    users = {r["user_id"]: r for r in read_tsv(data / "recsys" / "ml-100k.user")}
    items = {r["item_id"]: r for r in read_tsv(data / "recsys" / "ml-100k.item")}
    ratings.sort(key=lambda r: (float(r["timestamp"]), r["user_id"], r["item_id"]))
    occupations = {name: i for i, name in enumerate(sorted({u["occupation"] for u in users.values()}))}
    user_id = np.array([int(r["user_id"]) for r in ratings])
    item_id = np.array([int(r["item_id"]) for r in ratings])
    liked = np.array([float(r["rating"]) >= 4 for r in ratings], dtype=np.int64)
    split = int(len(ratings) * 0.8)
    base = liked[:split].mean()
    columns: dict[str, object] = {
        "user_id": user_id,
        "item_id": item_id,
        "occupation": np.array([occupations[users[r["user_id"]]["occupation"]] for r in ratings]),
        "age": np.array([float(users[r["user_id"]]["age"]) for r in ratings]),
        "female": np.array([users[r["user_id"]]["gender"] == "F" for r in ratings], dtype=np.float64),
        "release_year": np.array([year(items[r["item_id"]]["release_year"]) for r in ratings]),
    }
    for genre in GENRES:
        columns[f"genre_{genre}"] = np.array(
            [genre in items[r["item_id"]]["class"].split(" ") for r in ratings], dtype=np.float64
        )
    for name, keys in (("user", user_id), ("item", item_id)):
        count, likes = prior_counts(keys, liked)
        columns[f"{name}_prior_count"] = np.log1p(count)
        columns[f"{name}_prior_like_rate"] = (likes + SHRINK * base) / (count + SHRINK)
    return pa.table(columns), liked, split


def main(argv: list[str] | None = None) -> int:
    """Train both models, print the table; 1 when the ranker fails its baseline or a graph fails parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 suits small nets)")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    if not (args.data / "recsys" / "ml-100k.inter").exists():
        print(f"error: MovieLens 100k is not under {args.data}/recsys; pass --data", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    table, liked, split = features(args.data)
    train, test = table.slice(0, split), table.slice(split)
    y_train, y_test = liked[:split], liked[split:]
    print(f"ratings: {table.num_rows} ({split} train, {table.num_rows - split} test, time-ordered); "
          f"liked: {liked.mean():.1%}")  # fmt: skip

    results: list[tuple[str, float, float, str]] = []
    problems: list[str] = []

    t = time.perf_counter()
    ranker = EmbeddingRanker(
        categorical_columns=["user_id", "item_id", "occupation"],
        embedding_dim=16,
        bottom_sizes=(64,),
        top_sizes=(64, 32),
        dropout=0.1,
        epochs=args.epochs,
        batch_size=512,
        learning_rate=2e-3,
        weight_decay=1e-6,
        patience=2,
        seed=0,
    ).fit(train, y_train)
    ranker_seconds = time.perf_counter() - t
    ranker_auc = auc(y_test, ranker.predict_proba(test)[:, 1])
    _, report = export(ranker, test)
    results.append(("EmbeddingRanker", ranker_auc, ranker_seconds, f"{report.max_abs_diff:.1e}"))
    problems += [] if report.passed else [f"EmbeddingRanker parity: {report}"]
    unknown = ranker.count_unknown(test)

    gbdt_columns = [c for c in table.column_names if c not in ("user_id", "item_id")]
    t = time.perf_counter()
    gbdt = GBDTClassifier(num_trees=300, num_leaves=31, learning_rate=0.05, num_threads=args.threads)
    gbdt.fit(train.select(gbdt_columns), y_train)
    gbdt_seconds = time.perf_counter() - t
    gbdt_auc = auc(y_test, gbdt.predict_proba(test.select(gbdt_columns))[:, 1])
    _, report = export(gbdt, test.select(gbdt_columns))
    results.append(("GBDTClassifier", gbdt_auc, gbdt_seconds, f"{report.max_abs_diff:.1e}"))
    problems += [] if report.passed else [f"GBDTClassifier parity: {report}"]

    item_rate = test.column("item_prior_like_rate").to_numpy()
    results.append(("movie's past like rate", auc(y_test, item_rate), 0.0, "—"))
    results.append(("constant (trivial)", 0.5, 0.0, "—"))

    print("\n| model | test AUC | train s | parity max abs diff |\n|---|---:|---:|---:|")
    for name, score, seconds, parity in results:
        print(f"| {name} | {score:.4f} | {seconds:.1f} | {parity} |")
    print(
        f"\nranker: {len(ranker.history_)} epochs (best {ranker.best_epoch_}); test rows with unknown levels: "
        + ", ".join(f"{k} {v}" for k, v in unknown.items())
    )
    print(f"(total {time.perf_counter() - started:.1f} s, {args.threads} torch thread(s))")
    if ranker_auc < 0.6:
        problems.append(f"EmbeddingRanker AUC {ranker_auc:.4f} does not beat a random score (0.5) by 0.1")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
