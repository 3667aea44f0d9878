"""The embedded online store: one SQLite file in WAL mode, one row per (view, entity).

Values are kept as one JSON document per entity so a read of many features is one index
lookup; a write of a whole view is one transaction, so readers see the old rows or the
new ones, never a mix.

The store keeps the documents it read, decoded, for as long as the file holds what it held
then, one set for every thread of the process: a read (unless keeping has stopped for a while;
see the class) first asks SQLite's ``PRAGMA data_version`` on a connection kept for that
question alone, which changes whenever another connection (any thread's, or another
process's: a ``materialize``, a ``push``) commits, and forgets everything kept when it has.
So a read answers exactly what a query would, at the cost of that one small statement while
nothing changes; a read of a key not kept yet costs it on top of the query. Each thread
queries the file through its own connection. See :class:`SQLiteOnlineStore`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from openlearner._forks import keep_forever, track
from openlearner.errors import Corrupt, Invalid, Unavailable
from openlearner.features.online.base import OnlineStore, ViewValues, encode_rows

__all__ = ["SQLiteOnlineStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_values (
    view TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    event_time_us INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (view, entity_key)
) WITHOUT ROWID
"""


_VIEWS_PER_SELECT = 50  # views per compound SELECT (SQLite allows 500 terms)


# One view's part of a read: one row per key asked, in order (the position comes first and is
# checked). Many keys go in as one JSON array walked by json_each; a single key as a plain
# parameter, which SQLite answers faster.
_PART_MANY = (
    "SELECT j.key, o.event_time_us, o.doc FROM json_each(?) AS j "
    "LEFT JOIN online_values AS o ON o.view = ? AND o.entity_key = j.value"
)
_PART_ONE = (
    "SELECT 0, o.event_time_us, o.doc FROM (SELECT ? AS value) AS j "
    "LEFT JOIN online_values AS o ON o.view = ? AND o.entity_key = j.value"
)


@lru_cache(maxsize=256)
def _select_views(single: tuple[bool, ...]) -> str:
    """One SELECT answering several views (``single``: whether each asks for one key)."""
    return " UNION ALL ".join([_PART_ONE if one else _PART_MANY for one in single])


@contextmanager
def _snapshot(con: sqlite3.Connection, wanted: bool) -> Iterator[None]:
    """One read transaction around the block when ``wanted`` (several statements must see one
    snapshot) and none is open, ended however the block ends."""
    if not wanted or con.in_transaction:
        yield
        return
    con.execute("BEGIN")
    try:
        yield
    finally:
        if con.in_transaction:  # an error may have ended it already
            con.execute("COMMIT")


@lru_cache(maxsize=64)
def _positions(count: int) -> tuple[int, ...]:
    return tuple(range(count))


_TRIAL_READS = 32
"""Reads over which the store weighs whether keeping pays (see :meth:`SQLiteOnlineStore.read_columns`)."""
_FILLING = 0.125
"""How much the share of keys found kept must grow from one trial to the next for a trial in
which no read was answered whole to count as a hot set still filling."""
_UNKEPT_READS = 256
"""Reads that then go straight to the file (no ``data_version``, nothing kept)."""


class _OutOfOrder(Exception):
    """A statement answered a view's keys out of order, outside a transaction."""


class _Kept:
    """The decoded documents every thread shares, valid while the file's ``data_version`` (as
    the store's watching connection reads it) is ``version``. (Under the store's lock.)"""

    __slots__ = ("answered", "asked", "entries", "epoch", "found", "share", "tried", "unkept", "version")

    def __init__(self) -> None:
        self.version: int | None = None
        self.epoch = 0
        """Moves on whenever ``entries`` are forgotten or ``version`` changes: answers read
        meanwhile are not kept. (A new watching connection may start at the very number an
        old one had reached, so the version alone would not tell.)"""
        self.entries: dict[tuple[str, str], tuple[int | None, dict[str, Any] | None]] = {}
        self.tried = 0  # reads of the current trial
        self.answered = 0  # of them, reads answered whole from what is kept
        self.asked = 0  # keys those reads asked for
        self.found = 0  # of them, keys found kept
        self.share = 0.0  # the share of keys found kept over the trial before
        self.unkept = 0  # reads still to go straight to the file

    def tally(self, asked: int, found: int) -> bool:
        """Count a read that asked ``asked`` keys and found ``found`` kept; whether to go on keeping.

        Keeping pays only for reads answered whole from what is kept: a read missing one key
        goes to the file for all of them. At the end of each trial of :data:`_TRIAL_READS`
        reads, a store that answered none whole reads the next :data:`_UNKEPT_READS`
        straight from the file, unless the share of keys it found kept grew by
        :data:`_FILLING` since the trial before (a hot set still filling: a batch of many
        entities almost always holds one not kept yet while it fills). What it kept stays,
        under the ``data_version`` it was read at, so a hot set too large for one trial
        goes on filling across trials.
        """
        self.tried += 1
        self.answered += found == asked
        self.asked += asked
        self.found += found
        if self.tried < _TRIAL_READS:
            return True
        share = self.found / self.asked if self.asked else 0.0
        going_on = self.answered > 0 or share >= self.share + _FILLING
        self.tried = self.answered = self.asked = self.found = 0
        self.share = share
        if not going_on:
            self.unkept = _UNKEPT_READS
        return going_on

    def forget(self) -> None:
        self.entries.clear()
        self.version = None
        self.epoch += 1


def _answer_kept(kept: _Kept, requests: Sequence[tuple[str, Sequence[str]]]) -> list[ViewValues] | None:
    """Every answer from what ``kept`` holds, counted as a read answered whole; None, counting
    nothing, when one key is not kept."""
    entries = kept.entries
    out: list[ViewValues] = []
    for view, keys in requests:
        times: list[int | None] = []
        docs: list[dict[str, Any] | None] = []
        for key in keys:
            hit = entries.get((view, key))
            if hit is None:
                return None
            times.append(hit[0])
            docs.append(hit[1])
        out.append((times, docs))
    asked = sum(len(ks) for _, ks in requests)
    kept.tally(asked, asked)
    return out


class SQLiteOnlineStore(OnlineStore):
    """Online values in a SQLite file; safe to share between threads of one process, and a
    process forked from it opens connections of its own (it never uses the parent's).

    ``cache_entries``: how many (view, entity) answers :meth:`read_columns` keeps decoded
    between reads (absent keys included), one set shared by every thread that reads, valid
    until a connection commits to the file (``PRAGMA data_version`` on a connection kept for
    that alone); this store's own writes and deletes forget them too. However many threads
    read (an application's threads calling the predictor as a library, a predictor's batch
    workers and event loop), a key is read from the file and decoded once while the file is
    unchanged (unless threads miss it at the same moment), and kept once. What is kept, and
    whether keeping pays (below), is the store's: one thread reading keys never seen before
    stops keeping for them all, and fills what is kept for them all. At the limit everything kept is
    forgotten and kept anew; a read of more keys than that keeps none. When, over 32 reads,
    none was answered whole from what is kept and the share of keys found kept did not grow
    by an eighth (traffic without a hot set of entities), the next 256 reads go straight to
    the file, then keeping is tried again, with what was kept still valid if the file has not
    changed meanwhile. 0 reads every key from the file every time. A kept document of 20
    numeric features takes about 1-2 KB.
    """

    def __init__(self, path: Path, *, cache_entries: int = 10_000) -> None:
        if cache_entries < 0:
            raise Invalid(f"cache_entries must be 0 or more, not {cache_entries}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_entries = cache_entries
        self._local = threading.local()
        self._kept = _Kept()
        self._keeping = threading.Lock()
        """Held while :attr:`_kept` or :attr:`_watch` is used."""
        self._watch: sqlite3.Connection | None = None
        """Asks ``data_version`` for every thread (opened by the first read that keeps)."""
        track(self)
        try:
            with self._connection() as con:
                con.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._local.con = None
            raise Unavailable(
                f"cannot open the online store {self.path}: {exc}; move the file away or set "
                "OPENLEARNER_ONLINE_PATH to another file"
            ) from None

    def _connection(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def _version(self) -> int:
        """The file's ``data_version`` as the watching connection sees it (under the lock)."""
        con = self._watch
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._watch = con
        version: int = con.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _forget(self) -> None:
        with self._keeping:
            self._kept.forget()

    @property
    def keeps_documents(self) -> bool:
        """Whether this thread's last read answered documents the store keeps (not one read
        straight from the file: keeping stopped for a while, more keys than may be kept, a
        transaction left open, the file changed while it read)."""
        return self.cache_entries > 0 and getattr(self._local, "last", False)

    def write(self, view: str, join_keys: Sequence[str], rows: pa.Table) -> int:
        """Upsert rows in one transaction (all or nothing)."""
        payload = [(view, key, ts, doc) for key, ts, doc in encode_rows(view, join_keys, rows)]
        con = self._connection()
        self._forget()  # (the watching connection would see the commit; forgotten at once)
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT INTO online_values (view, entity_key, event_time_us, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (view, entity_key) DO UPDATE SET event_time_us = excluded.event_time_us, "
                "doc = excluded.doc",
                payload,
            )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # a failed COMMIT (busy) must not leave the write lock held
                con.execute("ROLLBACK")
            raise
        return len(payload)

    def read_keys(self, view: str, keys: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Encoded key → (event time in µs, values) for the keys that are present."""
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        found: dict[str, tuple[int, dict[str, Any]]] = {}
        con = self._connection()
        # One read transaction, so every chunk sees the same snapshot (never half of a write);
        # a single statement is a snapshot by itself, so one chunk needs none.
        with _snapshot(con, len(unique) > 900):
            # SQLite limits bound parameters per statement; 900 keeps well below every build's cap.
            for start in range(0, len(unique), 900):
                chunk = unique[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for key, ts, doc in con.execute(
                    "SELECT entity_key, event_time_us, doc FROM online_values "
                    f"WHERE view = ? AND entity_key IN ({marks})",
                    [view, *chunk],
                ):
                    found[key] = (ts, orjson.loads(doc))
        return found

    def read_columns(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[ViewValues]:
        """Every view's keys in one statement (one snapshot), answered in the order asked.

        Each view's keys are LEFT JOINed to the primary key, so the answer holds one row per key
        asked, repeats and misses included, in order; SQLite does the lookups, Python decodes
        each view's documents with one ``loads``. Answers the store kept since the file last
        changed are not asked again (see the class); the documents returned may be those kept,
        shared between reads and threads: callers must not change them.
        """
        con = self._connection()
        self._local.last = False
        if not self.cache_entries or con.in_transaction:  # (one left open: its snapshot, uncached)
            return self._select(con, requests)
        with self._keeping:
            kept = self._kept
            if kept.unkept:  # keys kept being new (no hot set): keeping cost more than it saved
                kept.unkept -= 1
                keep = False
            else:
                version = self._version()
                if version != kept.version:
                    kept.forget()
                    kept.version = version
                epoch = kept.epoch
                out = _answer_kept(kept, requests)
                if out is not None:
                    self._local.last = True
                    return out  # every answer as of ``version``: one snapshot, as a statement's would be
                found = sum((v, k) in kept.entries for v, ks in requests for k in ks)
                keep = kept.tally(sum(len(ks) for _, ks in requests), found)
        if keep:
            return self._select_and_keep(con, requests, epoch)
        return self._select(con, requests)  # (what is kept stays, under its version)

    def _select_and_keep(
        self, con: sqlite3.Connection, requests: Sequence[tuple[str, Sequence[str]]], epoch: int
    ) -> list[ViewValues]:
        """Read ``requests`` from the file and keep the answers, if what is kept is still of
        ``epoch`` (read with the version before the query).

        Should a connection have committed since that version was read, the statement may
        have seen the change; it then also moved the watching connection's ``data_version``
        on, so the next read forgets these answers before using any (they are never older
        than the version they are kept under, only possibly newer). Should another thread
        have seen a newer version meanwhile, or what was kept have been forgotten (a write,
        :meth:`close`), they are not kept: they may be older than what is kept now.
        """
        asked = sum(len(keys) for _, keys in requests)
        if asked > self.cache_entries:
            return self._select(con, requests)  # more than may be kept: keep nothing
        out = self._select(con, requests)
        with self._keeping:
            kept = self._kept
            if kept.epoch != epoch:
                return out
            entries = kept.entries
            if len(entries) + asked > self.cache_entries:
                entries.clear()
            for (view, keys), (times, docs) in zip(requests, out, strict=True):
                for key, when, doc in zip(keys, times, docs, strict=True):
                    entries[(view, key)] = (when, doc)
        self._local.last = True
        return out

    def _select(
        self, con: sqlite3.Connection, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[ViewValues]:
        """:meth:`read_columns` from the file alone (in the caller's transaction, if it holds one)."""
        try:
            return self._select_once(con, requests)
        except _OutOfOrder:  # read again, each view sorted, all in one snapshot
            with _snapshot(con, True):
                return self._select_once(con, requests)

    def _select_once(
        self, con: sqlite3.Connection, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[ViewValues]:
        asked = [(i, view, keys) for i, (view, keys) in enumerate(requests) if keys]
        out: list[ViewValues] = [([], []) for _ in requests]
        if not asked:
            return out
        chunks = [
            asked[start : start + _VIEWS_PER_SELECT] for start in range(0, len(asked), _VIEWS_PER_SELECT)
        ]
        with _snapshot(con, len(chunks) > 1):  # one snapshot for every statement
            for chunk in chunks:
                params: list[Any] = []
                for _, view, keys in chunk:
                    params += (keys[0] if len(keys) == 1 else orjson.dumps(keys), view)
                single = tuple(len(k) == 1 for _, _, k in chunk)
                rows = con.execute(_select_views(single), params).fetchall()
                if len(rows) == len(chunk) and all(single):  # one key per view (a lone entity): a row each
                    for (i, view, _), (_, when, doc) in zip(chunk, rows, strict=True):
                        out[i] = ([when], self._documents(view, (doc,)))
                    continue
                start = 0
                for i, view, keys in chunk:
                    count = len(keys)
                    part = rows[start : start + count]
                    start += count
                    positions, times, docs = zip(*part, strict=True) if len(part) == count else ((), (), ())
                    if positions != _positions(count):
                        # Not in the order asked (SQLite does not promise it): this view alone,
                        # sorted, within the snapshot of the others.
                        if not con.in_transaction:
                            raise _OutOfOrder
                        again = con.execute(
                            _PART_MANY + " ORDER BY j.key", [orjson.dumps(keys), view]
                        ).fetchall()
                        positions, times, docs = zip(*again, strict=True) if again else ((), (), ())
                        if positions != _positions(count):  # the LEFT JOIN keeps every key
                            raise Corrupt(f"the online store {self.path} answered a read with the wrong rows")
                    out[i] = (list(times), self._documents(view, docs))
        return out

    def _documents(self, view: str, docs: Sequence[bytes | None]) -> list[dict[str, Any] | None]:
        """Decode a view's documents (``None`` for a key absent) with one ``orjson.loads``."""
        try:
            if len(docs) == 1:
                return [None if docs[0] is None else orjson.loads(docs[0])]
            decoded: list[dict[str, Any] | None] = orjson.loads(
                b"[" + b",".join([doc if doc is not None else b"null" for doc in docs]) + b"]"
            )
        except orjson.JSONDecodeError as exc:
            raise Corrupt(
                f"the online store {self.path} holds a value of view {view!r} that is not JSON; "
                "run materialize again"
            ) from exc
        if len(decoded) != len(docs):
            raise Corrupt(
                f"the online store {self.path} holds a value of view {view!r} that is not one document"
            )
        return decoded

    def delete(self, view: str) -> None:
        """Remove a view's rows."""
        con = self._connection()
        self._forget()  # (the watching connection would see the commit; forgotten at once)
        con.execute("DELETE FROM online_values WHERE view = ?", [view])

    def close(self) -> None:
        """Close this thread's connection, and the connection watching for changes, forgetting
        what every thread kept (the next read opens it again and reads anew)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
        with self._keeping:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            self._kept.forget()

    def _after_fork(self) -> None:
        """In a forked child, the thread that forked keeps its thread-local state, the
        parent's connection among it, and the watching connection; SQLite's rule is not to use
        a connection across a fork. The next read or write opens one of this process's own,
        and the inherited ones are never touched again. (The lock may have been held by a
        thread the child does not have: it gets a new one.)"""
        for con in (getattr(self._local, "con", None), self._watch):
            if con is not None:
                keep_forever(con)
        self._local = threading.local()
        self._watch = None
        self._kept = _Kept()
        self._keeping = threading.Lock()
