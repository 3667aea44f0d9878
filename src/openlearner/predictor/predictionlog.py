"""The prediction log: sampled requests appended to Parquet in the workspace, off the hot path.

A sampled request is kept in memory and written by a background thread, every
``flush_rows`` rows or ``flush_seconds`` seconds and at close, as a new Parquet file
(written under a temporary name, then renamed, so a reader never sees half a file):

    <folder>/<model>/version=<n>/<utc time>-<random>.parquet

One row per request row: ``request_id``, ``row``, ``logged_at``, ``model``, ``version``,
``role`` (``primary``, ``canary`` or ``shadow``), and three structs: ``inputs`` (what the
client sent), ``features`` (the joined model input, by column, for Feature Store models)
and ``outputs``. Outcomes join on ``request_id`` (or on the entity keys and time).
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from openlearner.errors import Invalid
from openlearner.storage.files import write_atomically

__all__ = ["PredictionLog", "PredictionRecord", "new_request_id"]

log = logging.getLogger("openlearner.predictor")


@dataclass
class PredictionRecord:
    """One answered request, as the log keeps it."""

    request_id: str
    model: str
    version: int
    role: str
    inputs: dict[str, npt.NDArray[Any]]
    outputs: dict[str, npt.NDArray[Any]]
    features: npt.NDArray[Any] | None = None
    columns: list[str] | None = None
    logged_at: datetime | None = None


def _column(values: npt.NDArray[Any]) -> pa.Array:
    if values.ndim <= 1:
        return pa.array(values.tolist() if values.dtype == object else values)
    return pa.array([row.reshape(-1).tolist() for row in values])


def _struct(columns: dict[str, npt.NDArray[Any]], rows: int) -> pa.Array:
    if not columns:
        return pa.nulls(rows, pa.struct([]))
    return pa.StructArray.from_arrays([_column(v) for v in columns.values()], names=list(columns))


class PredictionLog:
    """Samples requests and appends them to Parquet under ``folder``."""

    def __init__(
        self,
        folder: Path,
        *,
        sample_rate: float = 0.01,
        flush_rows: int = 10_000,
        flush_seconds: float = 10.0,
        seed: int | None = None,
    ) -> None:
        if not 0 <= sample_rate <= 1:
            raise Invalid(f"the prediction log's sample rate is a fraction in [0, 1], not {sample_rate}")
        self.folder = Path(folder)
        self.sample_rate = sample_rate
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._random = random.Random(seed)
        self._pending: list[PredictionRecord] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._writer.start()

    def sampled(self) -> bool:
        """Whether to log the next request."""
        return self.sample_rate > 0 and (self.sample_rate >= 1 or self._random.random() < self.sample_rate)

    def append(self, record: PredictionRecord) -> None:
        """Queue ``record`` for the next file (no disk access here)."""
        if record.logged_at is None:
            record.logged_at = datetime.now(UTC)
        rows = len(next(iter(record.outputs.values()))) if record.outputs else 0
        with self._lock:
            self._pending.append(record)
            self._pending_rows += rows
            full = self._pending_rows >= self.flush_rows
        if full:
            self._wake.set()

    def flush(self) -> list[Path]:
        """Write every queued record now; returns the files written."""
        with self._lock:
            records, self._pending, self._pending_rows = self._pending, [], 0
        groups: dict[tuple[str, int, str], list[PredictionRecord]] = defaultdict(list)
        for record in records:
            groups[(record.model, record.version, record.role)].append(record)
        written = []
        for (model, version, _), group in groups.items():
            try:
                written.append(self._write(model, version, group))
            except Exception:  # a full disk must not take the predictor down; say so and go on
                log.exception("could not write %d prediction log records of %s", len(group), model)
        return written

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._closed = True
        self._wake.set()
        self._writer.join(timeout=30)
        self.flush()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._pending:
                self.flush()

    def _write(self, model: str, version: int, records: list[PredictionRecord]) -> Path:
        import pyarrow.parquet as pq

        tables = [self._table(r) for r in records]
        schemas = {t.schema for t in tables}
        table = pa.concat_tables(tables, promote_options="permissive" if len(schemas) > 1 else "none")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        final = self.folder / model / f"version={version}" / f"{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        # On disk before it is named (a crash loses at most what was still queued), and a
        # write that failed (a full disk, say) leaves no half-written file behind.
        write_atomically(final, lambda handle: pq.write_table(table, handle))
        return final

    @staticmethod
    def _table(record: PredictionRecord) -> pa.Table:
        rows = len(next(iter(record.outputs.values())))
        logged_at = record.logged_at or datetime.now(UTC)
        columns: dict[str, Any] = {
            "request_id": pa.array([record.request_id] * rows, pa.string()),
            "row": pa.array(np.arange(rows, dtype=np.int32)),
            "logged_at": pa.array([logged_at] * rows, pa.timestamp("us", tz="UTC")),
            "model": pa.array([record.model] * rows, pa.string()),
            "version": pa.array([record.version] * rows, pa.int64()),
            "role": pa.array([record.role] * rows, pa.string()),
            "inputs": _struct(record.inputs, rows),
        }
        if record.features is not None and record.columns is not None:
            features = {c: record.features[:, i] for i, c in enumerate(record.columns)}
            columns["features"] = _struct(features, rows)
        columns["outputs"] = _struct(record.outputs, rows)
        return pa.table(columns)


def new_request_id() -> str:
    """A request id for a request that came without one."""
    return uuid.uuid4().hex
