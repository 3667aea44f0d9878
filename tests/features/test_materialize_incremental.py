"""Incremental materialization: only entities whose values can have changed are recomputed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import openlearner as ol

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
REFS = ["clicks:n_1h", "clicks:sum_1d", "clicks:last_country"]


def events(path: Path, rows: list[tuple[int, datetime, int, str]]) -> None:
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in rows], pa.int64()),
                "event_time": pa.array([r[1] for r in rows], TS),
                "clicked": pa.array([r[2] for r in rows], pa.int64()),
                "country": [r[3] for r in rows],
            }
        ),
        path,
    )


@pytest.fixture
def ws(workspace: ol.Workspace, tmp_path: Path) -> ol.Workspace:
    folder = tmp_path / "events"
    folder.mkdir()
    events(
        folder / "day1.parquet",
        [(1, T0, 1, "fr"), (2, T0 + timedelta(minutes=30), 1, "us"), (3, T0 - timedelta(days=3), 1, "de")],
    )
    user = ol.Entity("user", join_keys=["user_id"])
    view = ol.FeatureView(
        "clicks",
        entities=[user],
        source=ol.Source.parquet(folder / "*.parquet", timestamp="event_time", name="events"),
        features=[
            ol.Aggregate("clicked", "count", window="1h", name="n_1h"),
            ol.Aggregate("clicked", "sum", window="1d", name="sum_1d"),
            ol.Field("country", name="last_country"),
        ],
    )
    workspace.features.apply([user, view])
    return workspace


def snapshot(ws: ol.Workspace) -> list[dict[str, object]]:
    return ws.features.online(REFS, {"user_id": [1, 2, 3, 4]}).to_pylist()


def test_incremental_runs_touch_only_changed_entities_and_match_a_full_run(
    ws: ol.Workspace, tmp_path: Path
) -> None:
    assert ws.features.materialize(end=T0 + timedelta(minutes=45)) == {"clicks": 3}
    # Later: user 4 appears, user 1's event leaves the 1h window (not the 1d one), user 3 is
    # untouched (its only event left every window long ago).
    events(tmp_path / "events" / "day1b.parquet", [(4, T0 + timedelta(minutes=50), 1, "jp")])
    end = T0 + timedelta(minutes=70)
    written = ws.features.materialize(end=end)
    assert written == {"clicks": 2}  # users 1 (left the 1h window) and 4 (new event)
    incremental = snapshot(ws)
    assert ws.features.materialize(end=end, full=True) == {"clicks": 4}
    assert snapshot(ws) == incremental
    by_user = {row["user_id"]: row for row in incremental}
    assert by_user[1]["clicks__n_1h"] == 0 and by_user[1]["clicks__sum_1d"] == 1
    assert by_user[4]["clicks__last_country"] == "jp"


def test_rows_pushed_with_old_times_are_picked_up(ws: ol.Workspace) -> None:
    ws.features.materialize(end=T0 + timedelta(minutes=45))
    late = {"user_id": [3], "clicked": [1], "country": ["it"], "event_time": pa.array([T0], TS)}
    ws.features.push("clicks", late)
    # The recomputed range widens back to the pushed row's time: users 1 and 2 have events
    # there too, so all three are recomputed (a superset is always safe).
    assert ws.features.materialize(end=T0 + timedelta(minutes=46)) == {"clicks": 3}
    row = {r["user_id"]: r for r in snapshot(ws)}[3]
    assert row["clicks__sum_1d"] == 1 and row["clicks__last_country"] == "it"


def test_a_changed_definition_or_an_earlier_end_recomputes_everything(ws: ol.Workspace) -> None:
    ws.features.materialize(end=T0 + timedelta(minutes=45))
    assert ws.features.materialize(end=T0 + timedelta(minutes=46)) == {"clicks": 0}
    assert ws.features.materialize(end=T0 + timedelta(minutes=40)) == {"clicks": 3}
    view = ws.features.view("clicks")
    ws.features.apply(
        [
            ol.FeatureView(
                "clicks",
                entities=view.entities,
                source=view.source,
                features=[*view.features, ol.Aggregate("clicked", "mean", window="1d")],
            )
        ]
    )
    assert ws.features.materialize(end=T0 + timedelta(minutes=47)) == {"clicks": 3}
