"""push(): real-time rows visible online at once and logged for later training sets; Source.sql."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import openlearner as ol
from openlearner.errors import Invalid, NotFound

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
TS = pa.timestamp("us", tz="UTC")


@pytest.fixture
def ws(workspace: ol.Workspace, tmp_path: Path) -> ol.Workspace:
    events = pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int64()),
            "event_time": pa.array([T0, T0 + timedelta(hours=1), T0], TS),
            "country": ["fr", "de", "us"],
            "clicked": pa.array([1, 0, 1], pa.int64()),
        }
    )
    pq.write_table(events, tmp_path / "events.parquet")
    user = ol.Entity("user", join_keys=["user_id"])
    source = ol.Source.parquet(tmp_path / "events.parquet", timestamp="event_time", name="events")
    view = ol.FeatureView(
        "profile",
        entities=[user],
        source=source,
        features=[ol.Field("country"), ol.Aggregate("clicked", "count", window="7d", name="clicks_7d")],
        ttl="30d",
    )
    workspace.features.apply([user, source, view])
    workspace.features.materialize()
    return workspace


def online(ws: ol.Workspace, users: list[int]) -> list[dict[str, object]]:
    return ws.features.online(["profile:country", "profile:clicks_7d"], {"user_id": users}).to_pylist()


def spine(users: list[int], at: datetime) -> pa.Table:
    return pa.table({"user_id": pa.array(users, pa.int64()), "event_time": pa.array([at] * len(users), TS)})


def test_pushed_fields_are_online_at_once_and_aggregates_keep_their_value(ws: ol.Workspace) -> None:
    before = online(ws, [1])[0]
    assert before["profile__country"] == "de" and before["profile__clicks_7d"] == 2
    at = datetime.now(UTC).replace(microsecond=0)
    ws.features.push(
        "profile", {"user_id": [1], "country": ["es"], "clicked": [1], "event_time": pa.array([at], TS)}
    )
    after = online(ws, [1])[0]
    assert after["profile__country"] == "es" and after["profile__country__status"] == "present"
    assert after["profile__event_time"] == at
    assert after["profile__clicks_7d"] == 2  # aggregates are refreshed by materialize, not push
    ws.features.materialize()
    assert online(ws, [1])[0]["profile__clicks_7d"] == 3


def test_a_later_training_set_sees_exactly_what_serving_saw(ws: ol.Workspace) -> None:
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ws.features.push(
        "profile", {"user_id": [3], "country": ["jp"], "clicked": [0], "event_time": pa.array([at], TS)}
    )
    served = online(ws, [3])[0]["profile__country"]
    later = ws.features.training_set(
        spine([3], at + timedelta(seconds=1)), ["profile:country", "profile:clicks_7d"]
    )
    assert later.column("profile__country").to_pylist() == [served] == ["jp"]
    assert later.column("profile__clicks_7d").to_pylist() == [1]
    # Strictly before the pushed row's time it does not exist yet.
    earlier = ws.features.training_set(spine([3], at), ["profile:country"])
    assert earlier.column("profile__country").to_pylist() == [None]


def test_an_older_push_is_logged_but_does_not_replace_newer_online_values(ws: ol.Workspace) -> None:
    ws.features.push(
        "profile", {"user_id": [1], "country": ["old"], "clicked": [1], "event_time": pa.array([T0], TS)}
    )
    assert online(ws, [1])[0]["profile__country"] == "de"
    table = ws.features.training_set(spine([1], T0 + timedelta(minutes=1)), ["profile:country"])
    assert table.column("profile__country").to_pylist() in (["fr"], ["old"])  # same instant as "fr": a tie


def test_the_newest_of_several_pushed_rows_wins_and_time_defaults_to_now(ws: ol.Workspace) -> None:
    ws.features.push("profile", {"user_id": [5, 5], "country": ["a", "b"], "clicked": [0, 1]})
    row = online(ws, [5])[0]
    assert row["profile__country"] == "b"
    assert datetime.now(UTC) - row["profile__event_time"] < timedelta(minutes=1)  # type: ignore[operator]


def test_bad_pushes_change_nothing(ws: ol.Workspace, settings: ol.Settings) -> None:
    log = settings.data_dir / "pushed" / "profile"
    with pytest.raises(NotFound, match="no feature view 'nope'"):
        ws.features.push("nope", {"user_id": [1]})
    with pytest.raises(Invalid, match="lack column"):
        ws.features.push("profile", {"user_id": [1], "country": ["x"]})
    with pytest.raises(Invalid, match="do not fit the types"):
        ws.features.push("profile", {"user_id": ["one"], "country": ["x"], "clicked": [1]})
    with pytest.raises(Invalid, match="lacks"):
        ws.features.push("profile", {"user_id": [1], "country": ["x"], "clicked": [1], "extra": [2]})
    with pytest.raises(Invalid, match="at least one row"):
        ws.features.push("profile", pa.table({"user_id": pa.array([], pa.int64())}))
    with pytest.raises(Invalid, match="not a timestamp"):
        ws.features.push(
            "profile", {"user_id": [1], "country": ["x"], "clicked": [1], "event_time": ["today"]}
        )
    assert not log.exists() or not any(log.iterdir())  # no log file, not even a temporary one
    assert online(ws, [1])[0]["profile__country"] == "de"


def test_sql_sources(workspace: ol.Workspace, tmp_path: Path) -> None:
    events = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "event_time": pa.array([T0, T0], TS),
            "country": ["fr", "us"],
        }
    )
    pq.write_table(events, tmp_path / "e.parquet")
    user = ol.Entity("user", join_keys=["user_id"])
    query = f"SELECT * FROM read_parquet('{tmp_path / 'e.parquet'}') WHERE country <> 'us'"
    view = ol.FeatureView(
        "fr_only",
        entities=[user],
        source=ol.Source.sql(query, timestamp="event_time"),
        features=[ol.Field("country")],
    )
    workspace.features.apply([user, view])
    out = workspace.features.training_set(spine([1, 2], T0 + timedelta(hours=1)), ["fr_only:country"])
    assert out.column("fr_only__country").to_pylist() == ["fr", None]
    broken = ol.FeatureView(
        "broken", entities=[user], source=ol.Source.sql("SELEC 1", timestamp="t"), features=[ol.Field("x")]
    )
    with pytest.raises(Invalid, match="does not run"):
        workspace.features.apply([broken])
    with pytest.raises(Invalid, match="needs a query"):
        ol.Source.sql("  ", timestamp="t")
