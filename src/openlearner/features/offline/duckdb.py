"""Point-in-time training sets in DuckDB: window aggregates over a union of events and spine.

For a spine row at time ``t`` an aggregate sees events in ``(t - window, t)`` — a RANGE
frame that ends one microsecond before ``t``, or running totals found by ASOF joins — and a
field is the latest event with ``event_time < t``, read by DuckDB and looked up in numpy
(:mod:`openlearner.features.offline.asof`). Views with ``inclusive=True`` admit events at
``t`` itself. Timestamps are normalised to naive UTC microseconds inside the query. Among
events at the same instant, ``Field`` and ``last`` take the one that comes later in the
source, so results are repeatable.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from openlearner._forks import keep_forever, track
from openlearner.errors import Invalid, NotFound
from openlearner.features.definitions import Aggregate, Feature, FeatureView, Field, Source, column_name
from openlearner.features.offline.asof import key_ids, latest_before
from openlearner.features.offline.base import FeatureRequest

__all__ = ["DuckDBOfflineStore"]

_INTEGER = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "HUGEINT",
)
_NUMERIC = (*_INTEGER, "FLOAT", "DOUBLE", "REAL", "BOOLEAN")
_STRING = ("VARCHAR",)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _type_family(type_name: str) -> str:
    base = type_name.split("(")[0].upper()
    if base in _INTEGER:
        return "integer"
    if base in _STRING:
        return "string"
    return base.lower()


def _arrow(con: duckdb.DuckDBPyConnection, query: str, params: list[object] | None = None) -> pa.Table:
    """Run ``query`` and return its result as an Arrow table."""
    return con.sql(query, params=params).to_arrow_table()


def _on(left: str, right: str, keys: Sequence[str]) -> str:
    return " AND ".join(f"{left}.{_quote(k)} = {right}.{_quote(k)}" for k in keys)


def _by_prefix_sums(aggregate: Aggregate, column_type: str) -> bool:
    """Whether running totals compute ``aggregate`` exactly: counts, and sums/means of integers."""
    if aggregate.function == "count":
        return True
    return aggregate.function in ("sum", "mean") and _type_family(column_type) in ("integer", "boolean")


def _timestamp_expr(column: str, type_name: str, where: str) -> str:
    """SQL that turns ``column`` into a naive UTC TIMESTAMP, whatever its stored type."""
    col = _quote(column)
    upper = type_name.upper()
    # A TIMESTAMPTZ holds an instant: rebuild the naive UTC timestamp from its epoch. (A plain
    # CAST to TIMESTAMP can be pushed into the CSV reader, which then drops the UTC offset.)
    if upper in ("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"):
        return f"make_timestamp(epoch_us({col}))"
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return f"CAST({col} AS TIMESTAMP)"
    if upper == "VARCHAR":
        return f"make_timestamp(epoch_us(CAST({col} AS TIMESTAMPTZ)))"
    raise Invalid(
        f"column {column!r} of {where} has type {type_name}, not a timestamp; "
        "store event times as timestamps (naive ones are read as UTC)"
    )


class DuckDBOfflineStore:
    """The embedded offline store: DuckDB reading Parquet, CSV or in-memory Arrow sources."""

    def __init__(self, *, log_dir: Path | None = None, threads: int | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.threads = threads
        self._database: duckdb.DuckDBPyConnection | None = None  # opened on first use
        self._lock = threading.Lock()
        track(self)

    def _log_glob(self, view: FeatureView) -> str | None:
        """The Parquet files of rows pushed to ``view``, if there are any."""
        if self.log_dir is None or not any((self.log_dir / view.name).glob("*.parquet")):
            return None
        return str(self.log_dir / view.name / "*.parquet")

    def _view_reader(
        self, con: duckdb.DuckDBPyConnection, view: FeatureView, alias: str, pushed: str | None
    ) -> str:
        """The view's events: its source, plus the rows pushed to it (``pushed``: the push log's
        glob, :meth:`_log_glob`, as the caller found it, so that it and the caller agree)."""
        base = self._reader(con, view.source, f"{alias}_source")
        if pushed is None:
            return base
        path = "'" + pushed.replace("'", "''") + "'"
        con.execute(
            f"CREATE TEMP VIEW {alias} AS SELECT * FROM {base} "
            f"UNION ALL BY NAME SELECT * FROM read_parquet({path}, union_by_name=true)"
        )
        return alias

    def pushed_since(self, view: FeatureView, since: datetime) -> datetime | None:
        """The earliest event time among rows pushed to ``view`` after ``since`` (None: none were)."""
        if self.log_dir is None:
            return None
        after_ns = int(since.timestamp() * 1e9)
        files = [
            str(p)
            for p in (self.log_dir / view.name).glob("part-*.parquet")
            if int(p.name.split("-")[1]) >= after_ns
        ]
        if not files:
            return None
        con = self._connect()
        try:
            stamp = _quote(view.source.timestamp)
            earliest = con.execute(
                f"SELECT min(CAST({stamp} AS TIMESTAMP)) FROM read_parquet(?)", [files]
            ).fetchall()
        finally:
            con.close()
        value = earliest[0][0]
        return None if value is None else value.replace(tzinfo=UTC)

    def append(self, view: FeatureView, rows: pa.Table) -> int:
        """Append pushed ``rows`` to the view's offline log, cast to its source's column types.

        The rows land in one new Parquet file, written under a temporary name and renamed, so
        a reader sees all of them or none.
        """
        if self.log_dir is None:
            raise Invalid("this offline store keeps no log of pushed rows; open it through a Workspace")
        types = self.schema(view.source)
        extra = [c for c in rows.column_names if c not in types]
        if extra:
            raise Invalid(
                f"pushed rows have column(s) {', '.join(extra)} that source {view.source.name!r} of "
                f"view {view.name!r} lacks; its columns are {', '.join(types)}"
            )
        folder = self.log_dir / view.name
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = final.with_suffix(".parquet.tmp")
        select = ", ".join(
            f"CAST({_quote(c)} AS {t}) AS {_quote(c)}"
            if c in rows.column_names
            else f"CAST(NULL AS {t}) AS {_quote(c)}"
            for c, t in types.items()
        )
        con = self._connect()
        try:
            con.register("pushed", rows)
            try:
                con.execute(f"COPY (SELECT {select} FROM pushed) TO '{tmp}' (FORMAT parquet)")
            except duckdb.Error as exc:
                first = str(exc).strip().splitlines()[0]
                raise Invalid(
                    f"pushed rows do not fit the types of view {view.name!r}'s source: {first}"
                ) from None
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
            con.close()
        return rows.num_rows

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to this store's in-memory database (close it when done).

        Opening a DuckDB database costs about 12 ms, a connection to an open one 0.1 ms, so
        the database lives as long as the store. Everything a call creates is its
        connection's own (registered tables, TEMP views and tables), gone when it closes, so
        calls from several threads never see each other's. A forked process opens a
        database of its own and never touches, closes or frees the parent's
        (:meth:`_after_fork`).
        """
        with self._lock:
            if self._database is None:
                config: dict[str, Any] = {"threads": int(self.threads)} if self.threads else {}
                self._database = duckdb.connect(config=config)
            con = self._database.cursor()
        # Casts between TIMESTAMPTZ and TIMESTAMP (and strings without an offset) use the
        # session zone, which defaults to the machine's; every time here is UTC.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")  # a library prints nothing on its own
        return con

    def __getstate__(self) -> dict[str, object]:
        """Pickled as its settings: another process opens its own database."""
        return {"log_dir": self.log_dir, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def close(self) -> None:
        """Let go of the database: it is freed once the calls still running are done with it
        (each holds its own connection), and a later call opens a new one."""
        with self._lock:
            self._database = None

    def _after_fork(self) -> None:
        """In a forked child: a lock some parent thread held at the fork is replaced, and the
        parent's database is never used or freed here."""
        self._lock = threading.Lock()
        if self._database is not None:
            keep_forever(self._database)
            self._database = None

    def _reader(self, con: duckdb.DuckDBPyConnection, source: Source, alias: str) -> str:
        """Register ``source`` in ``con`` as relation ``alias`` and return it."""
        if source.source_kind == "table":
            if source.data is None:
                raise NotFound(
                    f"source {source.name!r} was an in-memory table in another process; "
                    "apply it again in this process or use Source.parquet for data that outlives it"
                )
            con.register(alias, source.data)
            return alias
        assert source.location is not None
        if source.source_kind == "sql":
            try:
                con.execute(f"CREATE TEMP VIEW {alias} AS {source.location}")
                con.execute(f"DESCRIBE SELECT * FROM {alias}").fetchall()
            except duckdb.Error as exc:
                first = str(exc).strip().splitlines()[0]
                raise Invalid(f"the query of source {source.name!r} does not run: {first}") from None
            return alias
        if not _matching(con, source.location):
            raise NotFound(f"source {source.name!r}: no file matches {source.location}")
        path = "'" + source.location.replace("'", "''") + "'"  # views take no bound parameters
        if source.source_kind == "parquet":
            con.execute(f"CREATE TEMP VIEW {alias} AS SELECT * FROM read_parquet({path}, union_by_name=true)")
        else:
            con.execute(f"CREATE TEMP VIEW {alias} AS SELECT * FROM read_csv({path}, header=true)")
        return alias

    def schema(self, source: Source) -> dict[str, str]:
        """Column name → DuckDB type of ``source``."""
        con = self._connect()
        try:
            alias = self._reader(con, source, "src")
            try:
                rows = con.execute(f"DESCRIBE SELECT * FROM {alias}").fetchall()
            except duckdb.Error as exc:
                raise Invalid(f"cannot read source {source.name!r}: {exc}") from exc
            return {row[0]: row[1] for row in rows}
        finally:
            con.close()

    def feature_types(self, view: FeatureView) -> dict[str, str]:
        """Check ``view`` against its source's schema; return each feature's output type."""
        types = self.schema(view.source)
        where = f"source {view.source.name!r} of view {view.name!r}"
        known = ", ".join(types)
        if view.source.timestamp not in types:
            raise Invalid(
                f"{where} has no timestamp column {view.source.timestamp!r}; its columns are {known}"
            )
        _timestamp_expr(view.source.timestamp, types[view.source.timestamp], where)
        for key in view.join_keys:
            if key not in types:
                raise Invalid(f"{where} has no join key column {key!r}; its columns are {known}")
        out: dict[str, str] = {}
        for feature in view.features:
            if feature.column not in types:
                raise Invalid(
                    f"feature {view.name}:{feature.name} reads column {feature.column!r}, "
                    f"absent from {where}; its columns are {known}"
                )
            column_type = types[feature.column]
            family = _type_family(column_type)
            if isinstance(feature, Field) or feature.function in ("min", "max", "last"):
                out[feature.name] = column_type
            elif feature.function in ("count", "count_distinct"):
                out[feature.name] = "BIGINT"
            elif column_type.split("(")[0].upper() not in _NUMERIC:
                raise Invalid(
                    f"feature {view.name}:{feature.name} takes the {feature.function} of {feature.column!r}, "
                    f"which is {column_type}; {feature.function} needs a numeric or boolean column"
                )
            elif feature.function == "sum" and family == "integer":
                out[feature.name] = "BIGINT"
            else:
                out[feature.name] = "DOUBLE"
        return out

    def entities(
        self, view: FeatureView, end: datetime, changed: Sequence[tuple[datetime, datetime]] | None = None
    ) -> pa.Table:
        """Every entity of ``view`` with an event before ``end``: join keys and the newest event time.

        With ``changed``, only entities with an event in one of those closed time ranges.
        """
        con = self._connect()
        try:
            src = self._view_reader(con, view, "src", self._log_glob(view))
            types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
            where = f"source {view.source.name!r} of view {view.name!r}"
            if view.source.timestamp not in types:
                raise Invalid(f"{where} has no timestamp column {view.source.timestamp!r}")
            ts = _timestamp_expr(view.source.timestamp, types[view.source.timestamp], where)
            keys = ", ".join(_quote(k) for k in view.join_keys)
            end_naive = end.astimezone(UTC).replace(tzinfo=None)
            op = "<=" if view.inclusive else "<"
            params: list[object] = [end_naive]
            having = ""
            if changed is not None:
                ranges = " OR ".join(f"{ts} BETWEEN ? AND ?" for _ in changed) or "false"
                having = f"HAVING bool_or({ranges})"
                for start, stop in changed:
                    params += [
                        start.astimezone(UTC).replace(tzinfo=None),
                        stop.astimezone(UTC).replace(tzinfo=None),
                    ]
            table = _arrow(
                con,
                f"SELECT {keys}, max({ts}) AS event_time FROM {src} "
                f"WHERE {ts} {op} ? GROUP BY {keys} {having} ORDER BY {keys}",
                params,
            )
            return table.set_column(
                table.schema.get_field_index("event_time"),
                "event_time",
                table.column("event_time").cast(pa.timestamp("us", tz="UTC")),
            )
        finally:
            con.close()

    def training_set(
        self, spine: pa.Table, requests: Sequence[FeatureRequest], timestamp: str = "event_time"
    ) -> pa.Table:
        """Append the requested features to ``spine`` as of each row's ``timestamp``.

        Aggregates are computed per view into tables keyed by spine row and joined by one final
        query; fields are looked up in each view's events (:meth:`_latest_values`). Columns
        come in the order asked.
        """
        n = spine.num_rows
        con = self._connect()
        try:
            indexed = spine.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
            con.register("spine_in", indexed)
            spine_types = {r[0]: r[1] for r in con.execute("DESCRIBE SELECT * FROM spine_in").fetchall()}
            if timestamp not in spine_types:
                raise Invalid(f"the spine has no {timestamp!r} column; add the time each row is asked about")
            ts = _timestamp_expr(timestamp, spine_types[timestamp], "the spine")
            con.execute(f"CREATE TEMP TABLE spine AS SELECT *, {ts} AS __ts FROM spine_in")
            # fetchall, not fetchone: an unfinished result blocks registering the next Arrow source.
            null_ts, first, last = con.execute(
                "SELECT count(*) FILTER (WHERE __ts IS NULL), epoch_us(min(__ts)), epoch_us(max(__ts)) "
                "FROM spine"
            ).fetchall()[0]
            if null_ts:
                raise Invalid(
                    f"the spine's {timestamp!r} column has {null_ts} null value(s); every row needs a time"
                )
            query = _FinalQuery(first, last)
            wanted: list[_Fields] = []
            for index, (view, names) in enumerate(requests):
                self._view_features(con, index, view, list(names), spine_types, query, wanted)
            columns = self._latest_values(con, wanted, spine_types, query) if wanted else {}
            if query.columns:
                aggregates = _arrow(con, query.sql())
                columns.update(zip(aggregates.column_names, aggregates.columns, strict=True))
            out = spine
            for name in query.names:
                out = out.append_column(name, columns[name])
            return out
        finally:
            con.close()

    def _view_features(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        view: FeatureView,
        names: list[str],
        spine_types: dict[str, str],
        query: _FinalQuery,
        wanted: list[_Fields],
    ) -> None:
        """Add ``view``'s aggregates to ``query`` (tables joined by row) and its fields to
        ``wanted``; name its output columns in ``query``."""
        log = self._log_glob(view)  # once: the reader and the origin of its events agree
        src = self._view_reader(con, view, f"src_{index}", log)
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        where = f"source {view.source.name!r} of view {view.name!r}"
        if view.source.timestamp not in types:
            raise Invalid(f"{where} has no timestamp column {view.source.timestamp!r}")
        keys = list(view.join_keys)
        for key in keys:
            if key not in spine_types:
                raise Invalid(f"the spine has no join key {key!r}, which view {view.name!r} needs")
            if key not in types:
                raise Invalid(f"{where} has no join key column {key!r}")
            if _type_family(spine_types[key]) != _type_family(types[key]):
                raise Invalid(
                    f"join key {key!r} is {spine_types[key]} in the spine but {types[key]} in {where}; "
                    "cast the spine's keys to the source's type"
                )
        features = [view.feature(name) for name in names]
        for feature in features:
            if feature.column not in types:
                raise Invalid(
                    f"feature {view.name}:{feature.name} reads column {feature.column!r}, absent from {where}"
                )
        key_list = ", ".join(_quote(k) for k in keys)
        ev_ts = _timestamp_expr(view.source.timestamp, types[view.source.timestamp], where)
        aggregates = [f for f in features if isinstance(f, Aggregate)]
        prefix = [a for a in aggregates if _by_prefix_sums(a, types[a.column])]
        framed = [a for a in aggregates if a not in prefix]
        fields = [f for f in features if isinstance(f, Field)]
        expressions: dict[str, str] = {}
        if aggregates:
            # Aggregates scan their events several times: copy them once, only the keys the
            # spine asks about and the columns read. __seq numbers events in source order, the
            # tie-break of `last` between events at one instant.
            needed = dict.fromkeys([view.source.timestamp, *(a.column for a in aggregates)])
            carried = ", ".join(_quote(c) for c in needed if c not in keys)
            seq = ", row_number() OVER () AS __seq" if any(a.function == "last" for a in framed) else ""
            reach = max(a.window_delta for a in aggregates)
            con.execute(
                f"CREATE TEMP TABLE ev_{index} AS SELECT {key_list}, {ev_ts} AS __ts, * EXCLUDE ({key_list}) "
                f"FROM (SELECT {key_list}, {carried}{seq} FROM {src}) "
                f"SEMI JOIN (SELECT DISTINCT {key_list} FROM spine) USING ({key_list}) "
                f"WHERE {query.within(ev_ts, reach)}"
            )
            if prefix:
                table = self._prefix_aggregates(con, index, view, prefix)
                expressions.update(query.join_by_row(table, view.name, prefix))
            if framed:
                table = self._framed_aggregates(con, index, view, framed, types)
                expressions.update(query.join_by_row(table, view.name, framed))
        if fields:
            wanted.append(_Fields(view, fields, src, ev_ts, types, log))
        for feature in features:
            name = column_name(view.name, feature.name)
            query.names.append(name)
            if feature.name in expressions:
                query.columns.append(f"{expressions[feature.name]} AS {_quote(name)}")

    def _prefix_aggregates(
        self, con: duckdb.DuckDBPyConnection, index: int, view: FeatureView, aggregates: list[Aggregate]
    ) -> str:
        """count/sum/mean over ``(t - w, t)`` as C(< t) - C(<= t - w) of running totals.

        Running totals per key (events at one instant grouped first) are found for each spine
        row with ASOF joins, which sort-merge instead of sliding a frame over the union of
        spine and events. Integer sums stay exact.
        """
        keys = list(view.join_keys)
        key_list = ", ".join(_quote(k) for k in keys)
        columns = sorted({a.column for a in aggregates})
        grouped = ", ".join(
            f"count({_quote(c)}) AS __n{i}, sum(CAST({_quote(c)} AS BIGINT)) AS __s{i}"
            for i, c in enumerate(columns)
        )
        running = ", ".join(
            f"sum(__n{i}) OVER w AS __n{i}, sum(__s{i}) OVER w AS __s{i}" for i in range(len(columns))
        )
        cum = f"cum_{index}"
        con.execute(
            f"CREATE TEMP TABLE {cum} AS SELECT {key_list}, __ts, {running} "
            f"FROM (SELECT {key_list}, __ts, {grouped} FROM ev_{index} GROUP BY {key_list}, __ts) "
            f"WINDOW w AS (PARTITION BY {key_list} ORDER BY __ts ROWS UNBOUNDED PRECEDING)"
        )
        windows = sorted({a.window_delta for a in aggregates})
        lows = ", ".join(
            f"s.__ts - INTERVAL ({_us(w)}) MICROSECOND AS __lo{j}" for j, w in enumerate(windows)
        )
        upper = ">=" if view.inclusive else ">"
        joins = [f"ASOF LEFT JOIN {cum} hi ON {_on('s', 'hi', keys)} AND s.__ts {upper} hi.__ts"]
        joins += [
            f"ASOF LEFT JOIN {cum} lo{j} ON {_on('s', f'lo{j}', keys)} AND s.__lo{j} >= lo{j}.__ts"
            for j in range(len(windows))
        ]
        selects = []
        for agg in aggregates:
            i, j = columns.index(agg.column), windows.index(agg.window_delta)
            n = f"(coalesce(hi.__n{i}, 0) - coalesce(lo{j}.__n{i}, 0))"
            total = f"(hi.__s{i} - coalesce(lo{j}.__s{i}, 0))"
            expr = {
                "count": f"CAST({n} AS BIGINT)",
                "sum": f"CASE WHEN {n} > 0 THEN CAST({total} AS BIGINT) END",
                "mean": f"CASE WHEN {n} > 0 THEN CAST({total} AS DOUBLE) / {n} END",
            }[agg.function]
            selects.append(f"{expr} AS {_quote(column_name(view.name, agg.name))}")
        out = f"pre_{index}"
        con.execute(
            f"CREATE TEMP TABLE {out} AS SELECT s.__row, {', '.join(selects)} "
            f"FROM (SELECT {key_list}, __ts, __row, {lows} FROM spine s) s {' '.join(joins)}"
        )
        return out

    def _framed_aggregates(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        view: FeatureView,
        aggregates: list[Aggregate],
        types: dict[str, str],
    ) -> str:
        """Any aggregate, with RANGE frames over the union of events and spine rows."""
        keys = ", ".join(_quote(k) for k in view.join_keys)
        columns = sorted({a.column for a in aggregates})
        value = {c: f"__v{i}" for i, c in enumerate(columns)}
        ev_values = ", ".join(f"{_quote(c)} AS {value[c]}" for c in columns)
        sp_values = ", ".join(f"NULL AS {value[c]}" for c in columns)
        windows: dict[str, str] = {}
        selects: list[str] = []
        for agg in aggregates:
            window_us = _us(agg.window_delta)
            start = window_us - 1
            end = "CURRENT ROW" if view.inclusive else "INTERVAL 1 MICROSECOND PRECEDING"
            wname = windows.setdefault(agg.window, f"w{len(windows)}")
            windows[agg.window] = wname
            frame = (
                f"{wname} AS (PARTITION BY {keys} ORDER BY __ts RANGE BETWEEN "
                f"INTERVAL ({start}) MICROSECOND PRECEDING AND {end})"
            )
            windows[agg.window + "#frame"] = frame
            v = value[agg.column]
            family = _type_family(types[agg.column])
            numeric = f"CAST({v} AS DOUBLE)" if family in ("boolean",) else v
            expr = {
                "count": f"count({v}) OVER {wname}",
                "sum": f"CAST(sum({numeric}) OVER {wname} AS {'BIGINT' if family == 'integer' else 'DOUBLE'})",
                "mean": f"CAST(avg({numeric}) OVER {wname} AS DOUBLE)",
                "min": f"min({v}) OVER {wname}",
                "max": f"max({v}) OVER {wname}",
                "count_distinct": f"count(DISTINCT {v}) OVER {wname}",
                "last": f"arg_max({v}, (__ts, __seq)) FILTER (WHERE {v} IS NOT NULL) OVER {wname}",
            }[agg.function]
            selects.append(f"{expr} AS {_quote(column_name(view.name, agg.name))}")
        frames = ", ".join(v for k, v in windows.items() if k.endswith("#frame"))
        # Only `last` breaks ties by source order, so only then was __seq numbered.
        seq = "__seq" if any(a.function == "last" for a in aggregates) else "NULL::BIGINT AS __seq"
        out = f"frm_{index}"
        con.execute(
            f"""CREATE TEMP TABLE {out} AS
            WITH u AS (
                SELECT {keys}, __ts, {seq}, NULL::BIGINT AS __row, {ev_values} FROM ev_{index}
                UNION ALL
                SELECT {keys}, __ts, NULL::BIGINT, __row, {sp_values} FROM spine
            )
            SELECT __row, {", ".join(selects)} FROM u
            WINDOW {frames}
            QUALIFY __row IS NOT NULL"""
        )
        return out

    def _latest_values(
        self,
        con: duckdb.DuckDBPyConnection,
        wanted: list[_Fields],
        spine_types: dict[str, str],
        query: _FinalQuery,
    ) -> dict[str, pa.ChunkedArray]:
        """Every ``Field`` of ``wanted``: output column name -> values in spine order.

        Each view's events come from DuckDB as Arrow, cut to what its TTL can reach. When the spine is large next to the source (at least 1/``_CUT_RATIO`` of
        its rows), views that share the source (and push log) read it once, every key;
        otherwise each view reads only the events of the spine's keys (a semi join), so a
        small spine over a long log without TTL holds only its own keys' history. Each
        view's lookup (:func:`~openlearner.features.offline.asof.latest_before`) then runs
        on its own thread, sorting only int64 keys. Keys are compared as SQL compares them
        (:func:`_key_expr`).
        """
        keys_sql: list[list[str]] = []  # per view, per key: its expression over that key column
        for item in wanted:
            exprs = []
            for key in item.view.join_keys:
                common = con.execute(
                    f"SELECT typeof(k) FROM (SELECT NULL::{spine_types[key]} AS k "
                    f"UNION ALL SELECT NULL::{item.types[key]}) LIMIT 1"
                ).fetchall()[0][0]
                exprs.append(_key_expr(key, common))
            keys_sql.append(exprs)
        spine_cols = ", ".join(
            f"{e} AS __k{i}_{j}" for i, exprs in enumerate(keys_sql) for j, e in enumerate(exprs)
        )
        spine = _arrow(con, f"SELECT {_epoch('__ts')} AS __t, {spine_cols} FROM spine ORDER BY __row")
        spine_us = np.asarray(spine.column("__t").to_numpy(), dtype=np.int64)
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, item in enumerate(wanted):
            groups.setdefault(item.origin, []).append(i)
        # Per view: its events as read (``_Read``).
        events: dict[int, _Read] = {}
        for members in groups.values():
            first = wanted[members[0]]
            size = _row_count(con, first)
            if size is not None and size <= _CUT_RATIO * spine.num_rows:
                events.update(self._read_events(con, [wanted[i] for i in members], members, keys_sql, query))
            else:
                for i in members:
                    events.update(self._read_events(con, [wanted[i]], [i], keys_sql, query, cut=True))

        def lookup(i: int) -> dict[str, pa.ChunkedArray] | None:
            item = wanted[i]
            table, event_us, aliases, payload, in_order = events[i]
            spine_id, event_id = key_ids(
                [spine.column(f"__k{i}_{j}") for j in range(len(aliases))],
                [table.column(a) for a in aliases],
            )
            ttl = item.view.ttl_delta
            found = latest_before(
                spine_id,
                spine_us,
                event_id,
                event_us,
                inclusive=item.view.inclusive,
                ttl_us=None if ttl is None else _us(ttl),
                in_order=in_order,
            )
            if found is None:
                return None  # ties among events that came out of a join: read them in order
            columns = list(dict.fromkeys(payload[f.column] for f in item.fields))
            taken = table.select(columns).take(found)
            return {column_name(item.view.name, f.name): taken.column(payload[f.column]) for f in item.fields}

        out: dict[str, pa.ChunkedArray] = {}
        workers = min(len(wanted), self.threads or os.cpu_count() or 1)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openlearner-asof") as pool:
                parts = list(pool.map(lookup, range(len(wanted))))
        else:
            parts = [lookup(i) for i in range(len(wanted))]
        for i, part in enumerate(parts):
            if part is None:
                events.update(
                    self._read_events(con, [wanted[i]], [i], keys_sql, query, cut=True, in_order=True)
                )
                part = lookup(i)
                assert part is not None, "events read in source order always give an answer"
            out.update(part)
        return out

    def _read_events(
        self,
        con: duckdb.DuckDBPyConnection,
        items: list[_Fields],
        indexes: list[int],
        keys_sql: list[list[str]],
        query: _FinalQuery,
        *,
        cut: bool = False,
        in_order: bool = False,
    ) -> dict[int, _Read]:
        """One read of the events of ``items`` (views of one origin; ``indexes``: theirs in
        ``keys_sql``) with the key columns and field columns they need and only the times
        their TTLs reach, in source order. ``cut``: only events of the spine's keys (one
        view), through a join that may not keep that order unless ``in_order`` numbers the
        events before it (which costs a pass, so it is done only when ties need it)."""
        first = items[0]
        ttls = [item.view.ttl_delta for item in items]
        reach = None if any(t is None for t in ttls) else max(t for t in ttls if t is not None)
        aliases: dict[str, str] = {}  # key expression -> its column name in the read
        for i in indexes:
            for expr in keys_sql[i]:
                aliases.setdefault(expr, f"__k{len(aliases)}")
        # Only names made here in the select list: a source column named like one of them
        # (``__t``, ``__k0``) cannot shadow it.
        payload = {
            c: f"__v{n}" for n, c in enumerate(dict.fromkeys(f.column for item in items for f in item.fields))
        }
        selects = [f"{_epoch(first.ev_ts)} AS __t"]
        selects += [f"{expr} AS {alias}" for expr, alias in aliases.items()]
        selects += [f"{_quote(c)} AS {alias}" for c, alias in payload.items()]
        read = (
            f"SELECT * FROM (SELECT {', '.join(selects)} FROM {first.src}) "
            f"WHERE __t IS NOT NULL AND {query.within('__t', reach, epoch=True)}"
        )
        if cut:
            spine_keys = ", ".join(f"{expr} AS {alias}" for expr, alias in aliases.items())
            semi = (
                f"SEMI JOIN (SELECT DISTINCT {spine_keys} FROM spine) USING ({', '.join(aliases.values())})"
            )
            if in_order:
                read = (
                    f"SELECT * EXCLUDE (__seq) FROM (SELECT *, row_number() OVER () AS __seq FROM ({read})) "
                    f"{semi} ORDER BY __seq"
                )
            else:
                read = f"SELECT * FROM ({read}) {semi}"
        table = _arrow(con, read)
        event_us = np.asarray(table.column("__t").to_numpy(), dtype=np.int64)
        ordered = in_order or not cut
        return {i: (table, event_us, [aliases[e] for e in keys_sql[i]], payload, ordered) for i in indexes}


@dataclass
class _Fields:
    """A view's ``Field`` features in one training set, with how to read its events."""

    view: FeatureView
    fields: list[Field]
    src: str  # the relation of its events (source plus push log)
    ev_ts: str  # SQL of an event's naive UTC time
    types: dict[str, str]  # its events' column types
    log: str | None  # the glob of its push log's files (None: none)

    @property
    def origin(self) -> tuple[object, ...]:
        """Views with the same origin read the same events."""
        source = self.view.source
        return (source.source_kind, source.location, id(source.data), self.ev_ts, self.log)


_Read = tuple[pa.Table, np.ndarray, list[str], dict[str, str], bool]
"""A view's events as read: the table, its times (µs), its key columns' names, the name of
each field column's column there, whether the rows are in source order."""

_HASHABLE = (*_INTEGER, "VARCHAR", "BOOLEAN", "DATE", "TIMESTAMP", "DECIMAL", "BLOB", "TIME", "UUID")
_CUT_RATIO = 20
"""A source with more than this many rows per spine row is read per view, cut to the spine's keys."""
_INT64_MAX = 2**63 - 1


def _key_expr(column: str, type_name: str) -> str:
    """SQL for join key ``column`` as the Arrow lookup compares it, given ``type_name``, the type
    SQL compares it in: equal when SQL equality holds. Floats lose the sign of zero,
    intervals become µs (a month is 30 days, as SQL compares them), and types Arrow cannot
    hash (ENUMs, zoned times, nested values) become their text, which for nested values
    holding floats or intervals tells apart what SQL takes as equal (documented)."""
    cast = f"CAST({_quote(column)} AS {type_name})"
    base = type_name.split("(")[0].upper()
    if base in ("DOUBLE", "FLOAT", "REAL"):
        return f"({cast} + 0)"
    if base == "INTERVAL":
        return f"epoch_us({cast})"
    if base in _HASHABLE:
        return cast
    return f"CAST({cast} AS VARCHAR)"


def _epoch(ts: str) -> str:
    """SQL for naive UTC timestamp ``ts`` as µs since the epoch; infinities as the int64 ends."""
    return (
        f"coalesce(epoch_us({ts}), CASE WHEN {ts} > make_timestamp(0) THEN {_INT64_MAX} "
        f"WHEN {ts} < make_timestamp(0) THEN {-_INT64_MAX} END)"
    )


def _row_count(con: duckdb.DuckDBPyConnection, item: _Fields) -> int | None:
    """How many events ``item``'s source and push log hold, when that is cheap to know
    (Parquet files, from their footers; in-memory tables); None for CSV files and queries."""
    source = item.view.source
    if source.source_kind == "table" and source.data is not None:
        rows = source.data.num_rows
    elif source.source_kind == "parquet" and source.location is not None:
        rows = _parquet_rows(con, source.location)
    else:
        return None
    return rows + (_parquet_rows(con, item.log) if item.log is not None else 0)


def _parquet_rows(con: duckdb.DuckDBPyConnection, pattern: str) -> int:
    """Rows in the Parquet files ``pattern`` matches, summed from their footers."""
    found = con.execute("SELECT sum(num_rows) FROM parquet_file_metadata(?)", [pattern]).fetchall()
    return int(found[0][0] or 0)


_EARLIEST_US = -(2**62)
"""Microseconds: DuckDB's timestamps end near -2**63; a lower bound before this is left out."""


def _matching(con: duckdb.DuckDBPyConnection, pattern: str) -> list[str]:
    """The files DuckDB's readers open for ``pattern`` (its own glob: ``**`` at any depth,
    hidden files too), sorted."""
    return sorted(row[0] for row in con.execute("SELECT file FROM glob(?)", [pattern]).fetchall())


class _FinalQuery:
    """The one query that puts every aggregate next to its spine row."""

    def __init__(self, first: int | None, last: int | None) -> None:
        self.first, self.last = first, last  # the spine's earliest and latest time (µs; None: none)
        self.names: list[str] = []  # every output column, in the order asked
        self.columns: list[str] = []  # the select expressions of those this query computes
        self._joins: list[str] = []

    def within(self, ts: str, reach: timedelta | None, *, epoch: bool = False) -> str:
        """A condition on event time ``ts`` that keeps every event a spine row can use: none
        later than the latest spine time and, when features look back at most ``reach`` (the
        longest window, the TTL), none before the earliest spine time less ``reach``.

        Dropping the others changes no answer (a value older than the TTL is null either
        way; a window's running totals lose the same prefix at both ends), and a spine that
        covers a day of a year-long log then reads only what its windows or TTL reach.
        ``epoch``: ``ts`` is in µs since the epoch, not a timestamp."""
        conditions = []
        bound = "{}" if epoch else "make_timestamp({})"
        if self.last is not None:
            conditions.append(f"{ts} <= {bound.format(self.last)}")
        if self.first is not None and reach is not None and self.first - _us(reach) > _EARLIEST_US:
            conditions.append(f"{ts} >= {bound.format(self.first - _us(reach))}")
        return " AND ".join(conditions) or "true"

    def join_by_row(self, table: str, view: str, features: Sequence[Feature]) -> dict[str, str]:
        """LEFT JOIN a table keyed by spine row that holds ``features``; each one's expression."""
        alias = f"j{len(self._joins)}"
        self._joins.append(f"LEFT JOIN {table} {alias} ON {alias}.__row = s.__row")
        return {f.name: f"{alias}.{_quote(column_name(view, f.name))}" for f in features}

    def sql(self) -> str:
        """The query text."""
        return f"SELECT {', '.join(self.columns)} FROM spine s {' '.join(self._joins)} ORDER BY s.__row"
