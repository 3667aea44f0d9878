"""The feature catalog: every team's definitions, stored as JSON specs in the metadata DB."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from openlearner.storage.metadata import MetadataDB
from openlearner.storage.schema import feature_objects, materializations

__all__ = ["Catalog", "Materialization"]


class Catalog:
    """Reads and writes definition specs by (kind, name)."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The stored spec, or None."""
        with self.db.engine.connect() as con:
            row = con.execute(
                sa.select(feature_objects.c.spec).where(
                    feature_objects.c.kind == kind, feature_objects.c.name == name
                )
            ).first()
        return dict(row[0]) if row else None

    def updated_at(self, kind: str, name: str) -> datetime | None:
        """When the definition was last stored (None if it does not exist)."""
        with self.db.engine.connect() as con:
            value = con.execute(
                sa.select(feature_objects.c.updated_at).where(
                    feature_objects.c.kind == kind, feature_objects.c.name == name
                )
            ).scalar()
        return None if value is None else _aware(value)

    def specs(self, kind: str) -> list[dict[str, Any]]:
        """Every stored spec of ``kind``, by name."""
        with self.db.engine.connect() as con:
            rows = con.execute(
                sa.select(feature_objects.c.spec)
                .where(feature_objects.c.kind == kind)
                .order_by(feature_objects.c.name)
            ).all()
        return [dict(r[0]) for r in rows]

    def put_many(self, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Insert or replace several specs in one transaction (all or none)."""
        now = datetime.now(UTC)
        with self.db.engine.begin() as con:
            for kind, name, spec in items:
                updated = con.execute(
                    sa.update(feature_objects)
                    .where(feature_objects.c.kind == kind, feature_objects.c.name == name)
                    .values(spec=spec, updated_at=now)
                ).rowcount
                if not updated:
                    con.execute(
                        sa.insert(feature_objects).values(
                            kind=kind, name=name, spec=spec, created_at=now, updated_at=now
                        )
                    )

    def record_materialization(
        self, view: str, end: datetime, rows: int, stats: dict[str, dict[str, float | None]] | None = None
    ) -> None:
        """Remember that ``view`` was materialized as of ``end``, with its features' statistics."""
        with self.db.engine.begin() as con:
            con.execute(
                sa.insert(materializations).values(
                    view=view, end_time=end, rows=rows, stats=stats, created_at=datetime.now(UTC)
                )
            )

    def last_materialization(self, view: str) -> Materialization | None:
        """The newest materialization of ``view``."""
        with self.db.engine.connect() as con:
            row = (
                con.execute(
                    sa.select(materializations)
                    .where(materializations.c.view == view)
                    .order_by(materializations.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return Materialization(
            view=view,
            end=_aware(row["end_time"]),
            rows=row["rows"],
            at=_aware(row["created_at"]),
            stats=dict(row["stats"] or {}),
        )


@dataclass(frozen=True)
class Materialization:
    """One run of ``materialize`` for a view: as of when, when it ran, rows and statistics."""

    view: str
    end: datetime
    rows: int
    at: datetime
    stats: dict[str, dict[str, float | None]]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
