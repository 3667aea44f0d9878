"""Schedules: intervals, cron strings and data triggers, and the scheduler that starts due runs.

A schedule divides time into *slots* (``"hourly"`` slots start on the hour, UTC; a cron
string's slots are its firing times). The scheduler remembers the last slot it ran per
workflow in the metadata DB; slots missed while it was down are run one by one
(``missed="catch_up"``) or collapsed into the latest (``missed="skip"``). A data trigger
``NewRows(source, at_least=N)`` fires once N rows have arrived since the last run. At most
``max_live_runs`` runs of a workflow are live at once (default one). The clock is injected,
so due-time logic is testable without waiting.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openlearner.errors import Invalid, OpenLearnerError
from openlearner.storage.schema import runs, schedules

if TYPE_CHECKING:
    from openlearner.flow.facade import Flow
    from openlearner.flow.runs import Run
    from openlearner.flow.workflow import Workflow

__all__ = ["Cron", "Due", "Interval", "NewRows", "Scheduler", "parse_schedule"]

MAX_SLOTS = 1000
_NAMED = {"minutely": 60, "hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Interval:
    """Every ``seconds``, in slots aligned to the Unix epoch (``daily`` starts at midnight UTC)."""

    seconds: int
    spec: str

    def slots(self, after: datetime | None, now: datetime) -> list[datetime]:
        """Slot starts in ``(after, now]``; with no ``after`` only the latest one."""
        last = int(now.timestamp()) // self.seconds * self.seconds
        if after is None:
            return [datetime.fromtimestamp(last, UTC)]
        first = int(after.timestamp()) // self.seconds * self.seconds + self.seconds
        starts = range(max(first, last - (MAX_SLOTS - 1) * self.seconds), last + 1, self.seconds)
        return [datetime.fromtimestamp(t, UTC) for t in starts]


@dataclass(frozen=True)
class Cron:
    """A cron string (``"0 3 * * *"``: at 03:00 UTC every day)."""

    expr: str

    def slots(self, after: datetime | None, now: datetime) -> list[datetime]:
        """Firing times in ``(after, now]``; with no ``after`` only the latest one."""
        from croniter import croniter

        if after is None:
            return [croniter(self.expr, now + timedelta(microseconds=1)).get_prev(datetime).astimezone(UTC)]
        it = croniter(self.expr, after)
        out: list[datetime] = []
        while True:
            slot = it.get_next(datetime).astimezone(UTC)
            if slot > now:
                return out[-MAX_SLOTS:]
            out.append(slot)


def parse_schedule(spec: str) -> Interval | Cron:
    """``"hourly"``, ``"daily"``, ``"weekly"``, ``"every 15m"`` (s/m/h/d/w) or a five-field cron string."""
    if not isinstance(spec, str) or not spec.strip():
        raise Invalid(
            "a schedule is a string: 'hourly', 'daily', 'every 15m' or a cron string like '0 3 * * *'"
        )
    text = spec.strip().lower()
    if text in _NAMED:
        return Interval(_NAMED[text], text)
    match = re.fullmatch(r"every\s+([0-9]+)\s*([smhdw])", text)
    if match:
        seconds = int(match.group(1)) * _UNIT[match.group(2)]
        if seconds < 1:
            raise Invalid(f"schedule {spec!r}: the interval must be at least one second")
        return Interval(seconds, text)
    from croniter import croniter

    if len(text.split()) == 5 and croniter.is_valid(text):
        return Cron(text)
    raise Invalid(
        f"schedule {spec!r} is not understood; use 'hourly', 'daily', 'weekly', 'every 15m' "
        "or a five-field cron string like '0 3 * * *'"
    )


@dataclass(frozen=True)
class NewRows:
    """A data trigger: run when ``source`` has at least ``at_least`` rows more than at the last run.

    ``source`` is a feature-store ``Source`` (Parquet, CSV, SQL or table), a Parquet path or
    glob, or a function returning the current number of rows.
    """

    source: Any
    at_least: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.at_least, int) or self.at_least < 1:
            raise Invalid(f"NewRows needs at_least >= 1, not {self.at_least!r}")

    def count(self) -> int:
        """The number of rows the source holds now."""
        source = self.source
        if callable(source):
            return int(source())
        import duckdb

        if isinstance(source, str | Path):
            query = f"SELECT count(*) FROM read_parquet('{_quoted(str(source))}')"
        elif getattr(source, "source_kind", None) == "table":
            return int(source.data.num_rows)
        elif getattr(source, "source_kind", None) == "parquet":
            query = f"SELECT count(*) FROM read_parquet('{_quoted(source.location)}')"
        elif getattr(source, "source_kind", None) == "csv":
            query = f"SELECT count(*) FROM read_csv_auto('{_quoted(source.location)}')"
        elif getattr(source, "source_kind", None) == "sql":
            query = f"SELECT count(*) FROM ({source.location})"
        else:
            raise Invalid(
                f"NewRows cannot count rows of {source!r}; pass a Source, a Parquet glob or a function"
            )
        with duckdb.connect() as con:
            try:
                row = con.execute(query).fetchone()
            except duckdb.IOException:
                return 0  # no files yet
        return int(row[0]) if row else 0


def _quoted(text: str) -> str:
    return text.replace("'", "''")


@dataclass(frozen=True)
class Due:
    """A workflow to start now: for schedule ``slot`` and/or because ``rows`` rows are there."""

    workflow: Workflow
    slot: datetime | None
    rows: int | None
    reason: str


class Scheduler:
    """Starts due runs of ``workflows``; ``clock`` returns the current UTC time (injected in tests)."""

    def __init__(
        self,
        flow: Flow,
        workflows: Sequence[Workflow],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        executor: str | None = None,
    ) -> None:
        unscheduled = [w.name for w in workflows if w.schedule is None and w.when is None]
        if unscheduled:
            raise Invalid(
                f"workflow(s) {', '.join(unscheduled)} have no schedule; give them @workflow(schedule=...) or when=..."
            )
        self.flow, self.workflows, self.clock, self.executor = flow, list(workflows), clock, executor
        self._live: dict[str, list[threading.Thread]] = {}

    def _state(self, name: str) -> tuple[datetime | None, int | None]:
        with self.flow.db.engine.connect() as con:
            row = con.execute(
                sa.select(schedules.c.last_slot, schedules.c.last_rows).where(schedules.c.workflow == name)
            ).first()
        if row is None:
            return None, None
        slot = row[0].replace(tzinfo=UTC) if row[0] is not None and row[0].tzinfo is None else row[0]
        return slot, row[1]

    def _save(self, name: str, slot: datetime | None, rows: int | None) -> None:
        values = {"last_slot": slot, "last_rows": rows, "updated_at": self.clock()}
        with self.flow.db.engine.begin() as con:
            if (
                con.execute(
                    sa.update(schedules).where(schedules.c.workflow == name).values(**values)
                ).rowcount
                == 0
            ):
                con.execute(sa.insert(schedules).values(workflow=name, **values))

    def live_runs(self, wf: Workflow) -> int:
        """Runs of ``wf`` that are running now (in the DB, or starting in this scheduler)."""
        with self.flow.db.engine.connect() as con:
            count = con.execute(
                sa.select(sa.func.count()).where(runs.c.workflow == wf.name, runs.c.status == "running")
            ).scalar_one()
        starting = [t for t in self._live.get(wf.name, []) if t.is_alive()]
        self._live[wf.name] = starting
        return max(int(count), len(starting))

    def due(self, now: datetime | None = None) -> list[Due]:
        """The runs to start at ``now`` (nothing is started or recorded)."""
        now = now or self.clock()
        out = []
        for wf in self.workflows:
            if self.live_runs(wf) >= wf.max_live_runs:
                continue
            last_slot, last_rows = self._state(wf.name)
            slot = None
            if wf.schedule is not None:
                slots = wf.schedule.slots(last_slot, now)
                if not slots:
                    continue
                slot = slots[0] if wf.missed == "catch_up" else slots[-1]
            rows = None
            if wf.when is not None:
                rows = wf.when.count()
                if rows - (last_rows or 0) < wf.when.at_least:
                    continue
            reason = f"slot {slot:%Y-%m-%d %H:%M} UTC" if slot is not None else ""
            if rows is not None:
                reason = (reason + "; " if reason else "") + f"{rows - (last_rows or 0)} new rows"
            out.append(Due(wf, slot, rows, reason))
        return out

    def tick(self, now: datetime | None = None, *, wait: bool = False) -> list[Due]:
        """Start every due run (in background threads unless ``wait``); returns what was started."""
        started = self.due(now)
        for due in started:
            previous_slot, previous_rows = self._state(due.workflow.name)
            self._save(
                due.workflow.name,
                due.slot if due.slot is not None else previous_slot,
                due.rows if due.rows is not None else previous_rows,
            )
            tags = {"trigger": "scheduler", "reason": due.reason}
            if due.slot is not None:
                tags["scheduled_for"] = due.slot.isoformat()
            if wait:
                self._run(due.workflow, tags)
                continue
            thread = threading.Thread(target=self._run, args=(due.workflow, tags), daemon=True)
            self._live.setdefault(due.workflow.name, []).append(thread)
            thread.start()
        return started

    def _run(self, wf: Workflow, tags: dict[str, str]) -> Run | None:
        try:
            return self.flow.run(wf, executor=self.executor, tags=tags)
        except Exception:
            return None

    def serve(
        self, *, poll: float = 30.0, stop: threading.Event | None = None, log: Callable[[str], Any] = print
    ) -> None:
        """Tick every ``poll`` seconds until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.flow.check_abandoned()
                for due in self.tick():
                    log(f"started {due.workflow.name} ({due.reason})")
            except OpenLearnerError as exc:  # e.g. a data trigger's source unreadable for now
                log(f"error: {exc}; trying again in {poll:g} s")
            stop.wait(poll)
