"""Alias rows and their history: moves are compare-and-set, so concurrent moves never lose one.

Every move updates the alias row only if it still points where the mover last saw it, and
records ``(from, to, who, when)`` in the same transaction. Of two concurrent moves the last
writer wins, both are recorded, and each records the version the alias really left.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from openlearner.errors import Conflict, Invalid
from openlearner.storage.schema import alias_history, model_aliases, model_versions

__all__ = [
    "ANY",
    "CANARY",
    "PRODUCTION",
    "SHADOW",
    "AliasMove",
    "AliasMoved",
    "check_alias",
    "current_target",
    "history",
    "move",
    "set_alias",
]

PRODUCTION = "production"
"""The alias clients are served by when they name no version."""
CANARY = "canary"
"""The alias whose version answers a share of ``production``'s requests (see the predictor's rollouts)."""
SHADOW = "shadow"
"""The alias whose version gets a copy of every ``production`` request, its answers logged, never returned."""

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: who moved it, when, from which version to which."""

    alias: str
    from_version: int | None
    to_version: int
    moved_by: str
    moved_at: datetime


class AliasMoved(Exception):
    """An alias was not where a compare-and-set expected it (retried, or turned into ``Conflict``)."""


class _Any(enum.Enum):
    ANY = "any"


ANY = _Any.ANY
"""``expect=ANY``: move the alias from wherever it points (last writer wins)."""


def check_alias(alias: str) -> None:
    """Raise ``Invalid`` unless ``alias`` is a valid alias name."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise Invalid(f"alias {alias!r} is not valid: letters, digits, '-' and '_', starting with a letter")


def current_target(con: sa.Connection, name: str, alias: str, *, hold: bool = False) -> int | None:
    """The version ``alias`` of ``name`` points to (None: no such alias).

    ``hold``: keep the row from moving until the transaction ends (PostgreSQL ``FOR SHARE``;
    SQLite's one writer at a time does that by itself).
    """
    query = sa.select(model_aliases.c.version).where(
        model_aliases.c.model_name == name, model_aliases.c.alias == alias
    )
    return con.execute(query.with_for_update(read=True) if hold else query).scalar()


def move(
    con: sa.Connection, name: str, alias: str, previous: int | None, version: int, who: str, now: datetime
) -> None:
    """Compare-and-set the alias row from ``previous`` to ``version`` and record the move.

    Raises ``AliasMoved`` (or ``IntegrityError`` for a concurrent first move) when another
    writer got there first; the caller's transaction then rolls back.
    """
    if previous is None:
        con.execute(
            sa.insert(model_aliases).values(
                model_name=name, alias=alias, version=version, updated_by=who, updated_at=now
            )
        )
    else:
        moved = con.execute(
            sa.update(model_aliases)
            .where(
                model_aliases.c.model_name == name,
                model_aliases.c.alias == alias,
                model_aliases.c.version == previous,
            )
            .values(version=version, updated_by=who, updated_at=now)
        )
        if moved.rowcount != 1:
            raise AliasMoved
    con.execute(
        sa.insert(alias_history).values(
            model_name=name,
            alias=alias,
            from_version=previous,
            to_version=version,
            moved_by=who,
            moved_at=now,
        )
    )
    # Read after writing (SQLite: under the write lock; PostgreSQL: FOR SHARE waits for an archive).
    status = con.execute(
        sa.select(model_versions.c.status)
        .where(model_versions.c.model_name == name, model_versions.c.version == version)
        .with_for_update(read=True)
    ).scalar()
    if status != "ready":
        raise Conflict(f"{name} version {version} is {status or 'missing'}; an alias cannot point to it")


def set_alias(
    engine: sa.Engine,
    name: str,
    alias: str,
    version: int,
    who: str,
    *,
    expect: int | _Any | None = ANY,
    others: Mapping[str, int | None] | None = None,
) -> AliasMove:
    """Move ``alias`` to ``version`` in its own transaction.

    With ``expect=ANY`` a lost race is retried (last writer wins); otherwise the alias must
    point to ``expect`` (None: not exist yet), else ``AliasMoved``. ``others``: aliases the
    move was checked against, each of which must still point where it did (held until the
    move commits), else ``AliasMoved``.
    """
    now = datetime.now(UTC)
    for _ in range(50):
        try:
            with engine.begin() as con:
                for other, seen in (others or {}).items():
                    if current_target(con, name, other, hold=True) != seen:
                        raise AliasMoved
                previous = current_target(con, name, alias)
                if expect is not ANY and previous != expect:
                    raise AliasMoved
                if previous == version:  # already there: not a move, so not in the history
                    return AliasMove(alias, previous, version, who, now)  # (a rollback would undo nothing)
                move(con, name, alias, previous, version, who, now)
            return AliasMove(alias, previous, version, who, now)
        except (sa.exc.IntegrityError, AliasMoved) as exc:
            if expect is not ANY:
                raise AliasMoved from exc
    raise Conflict(f"alias {alias} of {name} is moving too often to move it now; retry")


def history(con: sa.Connection, name: str, alias: str) -> list[AliasMove]:
    """Every move of ``alias`` of ``name``, oldest first."""
    rows = con.execute(
        sa.select(alias_history)
        .where(alias_history.c.model_name == name, alias_history.c.alias == alias)
        .order_by(alias_history.c.id)
    ).mappings()
    return [
        AliasMove(
            r["alias"],
            r["from_version"],
            r["to_version"],
            r["moved_by"],
            r["moved_at"].replace(tzinfo=UTC) if r["moved_at"].tzinfo is None else r["moved_at"],
        )
        for r in rows
    ]
