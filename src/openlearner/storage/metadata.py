"""The metadata database: one SQLAlchemy schema on SQLite (default) or PostgreSQL, by URL.

The schema is versioned with Alembic; :meth:`MetadataDB.migrate` brings any older
database up to the current revision, so opening a workspace made by an older OpenLearner
upgrades it in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from openlearner.errors import Corrupt, Invalid, Unavailable

__all__ = ["MIGRATIONS", "MetadataDB", "execute_many"]

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (the predictor) run beside a writer; busy_timeout makes concurrent
    # writers from several processes wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def execute_many(
    con: sa.Connection,
    statement: sa.UpdateBase,
    rows: list[dict[str, Any]],
    json_memo: dict[tuple[int, type], Any] | None = None,
) -> None:
    """Run an INSERT or UPDATE once per row in one driver ``executemany``, as ``con.execute(statement, rows)`` would.

    The statement is compiled once and each bound value goes through its column type's own
    bind processor, so what is stored is exactly what SQLAlchemy would store; only its
    per-row bookkeeping is skipped, which for thousands of small rows (the operator records
    of a large run) costs more than the database itself. Every row has the same keys.

    A JSON value that is the same object in several rows (or, given one ``json_memo`` dict,
    in several calls while those objects are alive) is serialized once.
    """
    if not rows:
        return
    dialect = con.dialect
    compiled = statement.compile(dialect=dialect)
    bound = compiled.construct_params(rows[0])  # row 0's values and those written in the statement
    names = list(compiled.positiontup or []) if dialect.positional else list(bound)
    memo: dict[tuple[int, type], Any] = {} if json_memo is None else json_memo
    columns: list[tuple[str, Any, bool]] = []  # name, bind processor, whether every row gives it
    for name in names:
        kind = compiled.binds[name].type
        impl = kind.dialect_impl(dialect)
        process = impl.bind_processor(dialect)
        if process is not None and isinstance(kind, sa.JSON):
            process = _memoized(process, type(impl), memo)
        if name not in rows[0]:  # the same for every row: processed once
            bound[name] = process(bound[name]) if process is not None else bound[name]
        columns.append((name, process, name in rows[0]))
    params = [
        [
            (process(row[n]) if process is not None else row[n]) if given else bound[n]
            for n, process, given in columns
        ]
        for row in rows
    ]
    if dialect.positional:
        con.exec_driver_sql(compiled.string, [tuple(values) for values in params])
    else:
        escaped = getattr(compiled, "escaped_bind_names", None) or {}
        keys = [escaped.get(n, n) for n in names]
        con.exec_driver_sql(compiled.string, [dict(zip(keys, values, strict=True)) for values in params])


def _memoized(process: Any, kind: type, memo: dict[tuple[int, type], Any]) -> Any:
    """``process`` remembering its result per object (by identity) and column type ``kind`` in
    ``memo`` (JSON and JSONB bind differently on PostgreSQL); None is not stored."""

    def once(value: Any) -> Any:
        if value is None:
            return process(value)
        key = (id(value), kind)
        done = memo.get(key)
        if done is None:
            done = memo[key] = process(value)
        return done

    return once


class MetadataDB:
    """A connection pool to the metadata database plus its migrations."""

    def __init__(self, url: str, *, connect_args: dict[str, Any] | None = None) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise Invalid(
                f"database_url {url!r} is not a SQLAlchemy URL; use sqlite:///path/meta.db "
                "or postgresql+psycopg://host:5432/dbname"
            ) from exc
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise Invalid(f"unsupported metadata database {self.dialect!r}; use sqlite or postgresql")
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(parsed, connect_args=connect_args or {}, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise Unavailable(
                f"the driver for {self.dialect} is not installed ({exc.name}); "
                "install it with: pip install 'openlearner[postgres]'"
            ) from exc
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    def _alembic_config(self, connection: sa.Connection) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        return cfg

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` (default: the newest); a no-op when current."""
        try:
            with self.engine.begin() as connection:
                command.upgrade(self._alembic_config(connection), revision)
        except sa.exc.OperationalError as exc:
            raise Unavailable(
                f"cannot reach the metadata database {self.url.render_as_string(hide_password=True)}: "
                f"{str(exc.orig).strip().splitlines()[0]}"
            ) from exc
        except sa.exc.DatabaseError as exc:
            raise Corrupt(
                f"the metadata database {self.url.render_as_string(hide_password=True)} is not readable "
                f"({str(exc.orig).strip().splitlines()[0]}); restore it from a backup or point "
                "OPENLEARNER_DATABASE_URL elsewhere"
            ) from exc

    def current_revision(self) -> str | None:
        """The schema revision the database is at (None for an empty database)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        """The newest schema revision this version of OpenLearner knows."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        assert head is not None
        return head

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
