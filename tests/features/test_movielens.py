"""Real data: point-in-time user and item features on MovieLens 100k (ratings with Unix times)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import openlearner as ol


@pytest.fixture(scope="module")
def ratings(shared_data: Callable[[str], Path]) -> Path:
    return shared_data("recsys/ml-100k.inter")


def test_user_and_item_features_match_a_brute_force_count(workspace: ol.Workspace, ratings: Path) -> None:
    # The file's header is name:type and its times are Unix seconds: a SQL source adapts both.
    query = (
        'SELECT "user_id:token" AS user_id, "item_id:token" AS item_id, "rating:float" AS rating, '
        f"to_timestamp(\"timestamp:float\") AS rated_at FROM read_csv('{ratings}', delim='\\t', header=true)"
    )
    source = ol.Source.sql(query, timestamp="rated_at", name="ratings")
    user, item = ol.Entity("user", join_keys=["user_id"]), ol.Entity("item", join_keys=["item_id"])
    user_view = ol.FeatureView(
        "user_ratings",
        entities=[user],
        source=source,
        features=[
            ol.Aggregate("rating", "mean", window="30d", name="mean_30d"),
            ol.Aggregate("rating", "count", window="7d", name="count_7d"),
            ol.Aggregate("item_id", "count_distinct", window="30d", name="items_30d"),
        ],
    )
    item_view = ol.FeatureView(
        "item_ratings",
        entities=[item],
        source=source,
        features=[ol.Aggregate("rating", "count", window="1d", name="count_1d"), ol.Field("rating", "last")],
        ttl="90d",
    )
    workspace.features.apply([user, item, source, user_view, item_view])

    with ratings.open() as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        log = [(int(u), int(i), float(r), datetime.fromtimestamp(int(t), UTC)) for u, i, r, t in reader]
    assert len(log) == 100_000
    # Every 2,500th rating is asked about at its own time: the features must exclude it.
    asked = log[::2500]
    spine = pa.table(
        {
            "user_id": pa.array([u for u, _, _, _ in asked], pa.int64()),
            "item_id": pa.array([i for _, i, _, _ in asked], pa.int64()),
            "event_time": pa.array([t for _, _, _, t in asked], pa.timestamp("us", tz="UTC")),
        }
    )
    refs = [
        "user_ratings:mean_30d",
        "user_ratings:count_7d",
        "user_ratings:items_30d",
        "item_ratings:count_1d",
        "item_ratings:last",
    ]
    out = workspace.features.training_set(spine, refs).to_pylist()

    for (u, i, _, t), row in zip(asked, out, strict=True):
        month = [(r, it) for uu, it, r, tt in log if uu == u and t - timedelta(days=30) < tt < t]
        week = [r for uu, _, r, tt in log if uu == u and t - timedelta(days=7) < tt < t]
        day = [r for _, ii, r, tt in log if ii == i and t - timedelta(days=1) < tt < t]
        earlier = [(tt, r) for _, ii, r, tt in log if ii == i and tt < t and t - tt <= timedelta(days=90)]
        expected_mean = sum(r for r, _ in month) / len(month) if month else None
        assert row["user_ratings__mean_30d"] == pytest.approx(expected_mean)
        assert row["user_ratings__count_7d"] == len(week)
        assert row["user_ratings__items_30d"] == len({it for _, it in month})
        assert row["item_ratings__count_1d"] == len(day)
        if earlier:
            newest = max(tt for tt, _ in earlier)
            assert row["item_ratings__last"] in {r for tt, r in earlier if tt == newest}
        else:
            assert row["item_ratings__last"] is None
