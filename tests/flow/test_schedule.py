"""Scheduling with an injected clock: intervals, cron strings, data triggers, missed runs, live-run limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openlearner import Source, Workspace
from openlearner.errors import Invalid
from openlearner.flow import NewRows, Scheduler, operator, workflow
from openlearner.flow.schedule import Cron, Interval, parse_schedule

T0 = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


@operator
def noop(x: int = 0) -> int:
    return x


@workflow(schedule="hourly")
def hourly_skip() -> int:
    return noop()


@workflow(schedule="hourly", missed="catch_up")
def hourly_catch_up() -> int:
    return noop()


@workflow(schedule="0 3 * * *")
def nightly() -> int:
    return noop()


ROWS = {"n": 0}


@workflow(when=NewRows(lambda: ROWS["n"], at_least=100))
def on_new_rows() -> int:
    return noop()


class Clock:
    """A settable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_schedule_strings() -> None:
    assert parse_schedule("hourly") == Interval(3600, "hourly")
    assert parse_schedule("daily").seconds == 86400
    assert parse_schedule("every 15m") == Interval(900, "every 15m")
    assert parse_schedule("Every 2h").seconds == 7200
    assert parse_schedule("*/5 * * * *") == Cron("*/5 * * * *")
    for bad in ["sometimes", "every 0m", "* * *", "61 * * * *", ""]:
        with pytest.raises(Invalid, match="schedule"):
            parse_schedule(bad)
    with pytest.raises(Invalid, match="missed"):
        workflow(missed="later")(lambda: None)
    with pytest.raises(Invalid, match="at_least"):
        NewRows("x.parquet", at_least=0)


def test_slots_are_aligned_and_bounded() -> None:
    every = parse_schedule("every 15m")
    assert every.slots(None, T0) == [T0]
    assert every.slots(T0, T0 + timedelta(minutes=14)) == []
    assert every.slots(T0, T0 + timedelta(minutes=46)) == [T0 + timedelta(minutes=15 * k) for k in (1, 2, 3)]
    cron = parse_schedule("0 3 * * *")
    assert cron.slots(None, T0) == [datetime(2026, 3, 1, 3, tzinfo=UTC)]
    assert cron.slots(datetime(2026, 3, 1, 3, tzinfo=UTC), T0 + timedelta(days=2)) == [
        datetime(2026, 3, 2, 3, tzinfo=UTC),
        datetime(2026, 3, 3, 3, tzinfo=UTC),
    ]


def test_due_times_follow_the_clock(workspace: Workspace) -> None:
    clock = Clock(T0)
    scheduler = Scheduler(workspace.flow, [hourly_skip, nightly], clock=clock, executor="thread")
    first = scheduler.tick(wait=True)
    assert [(d.workflow.name, d.slot) for d in first] == [
        ("hourly_skip", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("nightly", datetime(2026, 3, 1, 3, tzinfo=UTC)),
    ]
    assert scheduler.due() == []
    clock.now = T0 + timedelta(minutes=29)
    assert scheduler.due() == []
    clock.now = T0 + timedelta(minutes=31)
    assert [(d.workflow.name, d.slot) for d in scheduler.due()] == [
        ("hourly_skip", datetime(2026, 3, 1, 11, tzinfo=UTC))
    ]
    runs = workspace.flow.runs("hourly_skip")
    assert len(runs) == 1 and runs[0].status == "succeeded"
    assert runs[0].tags["scheduled_for"] == "2026-03-01T10:00:00+00:00"


def test_missed_slots_are_skipped_or_caught_up_one_by_one(workspace: Workspace) -> None:
    clock = Clock(T0)
    scheduler = Scheduler(workspace.flow, [hourly_skip, hourly_catch_up], clock=clock, executor="thread")
    scheduler.tick(wait=True)
    clock.now = T0 + timedelta(hours=3)  # slots at 11:00, 12:00 and 13:00 were missed
    skipped = scheduler.tick(wait=True)
    assert {d.workflow.name: d.slot.hour for d in skipped if d.slot} == {
        "hourly_skip": 13,
        "hourly_catch_up": 11,
    }
    later = [scheduler.tick(wait=True) for _ in range(3)]
    assert [[(d.workflow.name, d.slot.hour if d.slot else None) for d in t] for t in later] == [
        [("hourly_catch_up", 12)],
        [("hourly_catch_up", 13)],
        [],
    ]


def test_one_live_run_per_workflow(workspace: Workspace) -> None:
    clock = Clock(T0)
    scheduler = Scheduler(workspace.flow, [hourly_skip], clock=clock, executor="thread")
    live = workspace.flow.tracker.start("hourly_skip", {}, heartbeat=True)
    assert scheduler.due() == []
    workspace.flow.tracker.finish(live)
    assert [d.workflow.name for d in scheduler.due()] == ["hourly_skip"]


def test_a_data_trigger_waits_for_enough_new_rows(workspace: Workspace) -> None:
    scheduler = Scheduler(workspace.flow, [on_new_rows], clock=Clock(T0), executor="thread")
    ROWS["n"] = 99
    assert scheduler.due() == []
    ROWS["n"] = 150
    (due,) = scheduler.tick(wait=True)
    assert due.rows == 150 and "150 new rows" in due.reason
    ROWS["n"] = 249
    assert scheduler.due() == []
    ROWS["n"] = 250
    assert [d.rows for d in scheduler.due()] == [250]


def test_new_rows_counts_parquet_sources(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    trigger = NewRows(Source.parquet(folder / "*.parquet", timestamp="t"), at_least=1)
    assert trigger.count() == 0
    folder.mkdir()
    pq.write_table(pa.table({"t": [1, 2, 3]}), folder / "a.parquet")
    pq.write_table(pa.table({"t": [4]}), folder / "b.parquet")
    assert trigger.count() == 4
    assert NewRows(str(folder / "*.parquet")).count() == 4


def test_workflows_without_a_schedule_are_refused(workspace: Workspace) -> None:
    @workflow
    def unscheduled() -> int:
        return noop()

    with pytest.raises(Invalid, match="no schedule"):
        Scheduler(workspace.flow, [unscheduled])
