"""Disaster-recovery groundwork: replicate a registry to a second store, and verify artifacts.

Besides the registry's own tables, a replica receives what lineage and feature-served
models need there: feature definitions, runs with their operator executions, and the
values runs stored (rows and artifacts). Stepped run metrics, schedules and online
feature values stay behind.

A *replica* is a second metadata database plus a second artifact store. The embedded form
is a folder laid out like a workspace (``meta.db`` and ``artifacts/``), so in a disaster
``learner --home <replica> init`` adopts it; at scale it is a PostgreSQL URL plus an
``s3://`` URI in another region. :func:`replicate` copies what the replica lacks and is
safe to run again and again (the replica converges, nothing is duplicated); :func:`verify`
re-hashes every artifact the metadata references.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openlearner.errors import Corrupt, Invalid, NotFound, OpenLearnerError
from openlearner.storage.schema import (
    alias_history,
    feature_objects,
    model_aliases,
    model_versions,
    models,
    operator_runs,
    run_artifacts,
    runs,
)

if TYPE_CHECKING:
    from openlearner.registry.store import ModelRegistry

__all__ = [
    "ArtifactProblem",
    "ReplicationReport",
    "VerificationReport",
    "open_replica",
    "replicate",
    "verify",
]


@dataclass(frozen=True)
class ArtifactProblem:
    """A graph that is missing or no longer matches its sha256, and the versions that use it."""

    digest: str
    versions: list[str]
    problem: str


@dataclass(frozen=True)
class VerificationReport:
    """What :func:`verify` found: how many graphs it re-hashed, which are missing or corrupt."""

    checked: int
    missing: list[ArtifactProblem] = field(default_factory=list)
    corrupt: list[ArtifactProblem] = field(default_factory=list)
    repaired: list[ArtifactProblem] = field(default_factory=list)
    """Problems found and fixed from the replica (not counted in ``missing``/``corrupt``)."""

    @property
    def ok(self) -> bool:
        """Whether every graph is present and intact (after any repair)."""
        return not self.missing and not self.corrupt


@dataclass(frozen=True)
class ReplicationReport:
    """What one :func:`replicate` run copied, and what it could not."""

    versions_copied: int = 0
    artifacts_copied: int = 0
    alias_moves_copied: int = 0
    rows_copied: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether everything reached the replica."""
        return not self.problems


def replica_location(
    to: str | None, database_url: str | None = None, artifact_uri: str | None = None
) -> tuple[str, str]:
    """The replica's metadata URL and artifact URI: from a folder ``to``, or given separately.

    A folder gives ``sqlite:///<to>/meta.db`` and ``<to>/artifacts``; ``database_url`` and
    ``artifact_uri`` replace either part (both are needed without a folder).
    """
    if to is not None and "://" in to and not to.startswith("file://"):
        raise Invalid(
            f"--to {to!r} is not a folder; name a replica folder, or give the database URL and the "
            "artifact URI separately (--database-url, --artifact-uri)"
        )
    folder = Path(to.removeprefix("file://")).expanduser().absolute() if to else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise Invalid(f"cannot replicate to {folder}: it is a file, not a folder")
    db = database_url or (f"sqlite:///{folder / 'meta.db'}" if folder else None)
    artifacts = artifact_uri or (str(folder / "artifacts") if folder else None)
    if db is None or artifacts is None:
        raise Invalid("name the replica: a folder, or both a database URL and an artifact URI")
    return db, artifacts


def open_replica(
    to: str | None, database_url: str | None = None, artifact_uri: str | None = None
) -> ModelRegistry:
    """A registry over the replica's database (migrated to the current schema) and artifact store."""
    from openlearner.registry.store import ModelRegistry
    from openlearner.storage.artifacts.base import open_artifact_store
    from openlearner.storage.metadata import MetadataDB

    url, uri = replica_location(to, database_url, artifact_uri)
    db = MetadataDB(url)
    db.migrate()
    return ModelRegistry(db, open_artifact_store(uri))


def verify(registry: ModelRegistry, repair_from: ModelRegistry | None = None) -> VerificationReport:
    """Re-hash every artifact the metadata references: each version's graph (archived ones too) and each
    value a run stored; report the missing and corrupt ones with what uses them.

    With ``repair_from`` (a replica) each missing or corrupt graph is copied back from it when
    the replica holds an intact copy (verified on read, replaced atomically).
    """
    with registry.db.engine.connect() as con:
        rows = con.execute(
            sa.select(model_versions.c.model_name, model_versions.c.version, model_versions.c.artifact_digest)
        ).all()
        outputs = con.execute(
            sa.select(
                run_artifacts.c.run_id, run_artifacts.c.node, run_artifacts.c.output, run_artifacts.c.digest
            )
        ).all()
    users: dict[str, list[str]] = defaultdict(list)
    for name, version, digest in rows:
        users[digest].append(f"{name}:{version}")
    for run_id, node, output, digest in outputs:
        users[digest].append(f"run {run_id} {node}[{output}]")
    missing: list[ArtifactProblem] = []
    corrupt: list[ArtifactProblem] = []
    repaired: list[ArtifactProblem] = []
    for digest, versions in sorted(users.items()):
        try:
            registry.artifacts.get(digest)
            continue
        except NotFound as exc:
            found, problem = missing, ArtifactProblem(digest, sorted(versions), str(exc))
        except Corrupt as exc:
            found, problem = corrupt, ArtifactProblem(digest, sorted(versions), str(exc))
        if repair_from is not None:
            try:
                registry.artifacts.put(repair_from.artifacts.get(digest))
            except OpenLearnerError as exc:
                problem = ArtifactProblem(digest, problem.versions, f"{problem.problem}; not repaired: {exc}")
            else:
                repaired.append(problem)
                continue
        found.append(problem)
    return VerificationReport(len(users), missing, corrupt, repaired)


def replicate(source: ModelRegistry, target: ModelRegistry) -> ReplicationReport:
    """Copy ``source``'s models, versions, graphs, aliases with their history, feature definitions
    and runs to ``target``; what ``target`` already has is left alone, so a rerun copies nothing.

    Versions are immutable: one that exists on both sides with different graphs is reported,
    not overwritten. An alias is moved on the replica only when its history there is a prefix
    of the source's (the replica is behind); a replica that is ahead keeps its aliases.
    """
    if source.db.url == target.db.url:
        raise Invalid("cannot replicate a registry onto itself; name a second database")
    problems: list[str] = []
    with source.db.engine.connect() as con:
        model_rows = con.execute(sa.select(models)).mappings().all()
        version_rows = con.execute(sa.select(model_versions)).mappings().all()
        alias_rows = con.execute(sa.select(model_aliases)).mappings().all()
        moves = con.execute(sa.select(alias_history).order_by(alias_history.c.id)).mappings().all()
    with target.db.engine.connect() as con:
        have = {
            (r.model_name, r.version): (r.artifact_digest, r.status)
            for r in con.execute(
                sa.select(
                    model_versions.c.model_name,
                    model_versions.c.version,
                    model_versions.c.artifact_digest,
                    model_versions.c.status,
                )
            )
        }
    created = {r["name"]: r["created_at"] for r in model_rows}
    artifacts = copied = 0
    present: set[tuple[str, int]] = set()
    for row in version_rows:
        key = (row["model_name"], row["version"])
        there = have.get(key)
        if there is not None and there[0] != row["artifact_digest"]:
            problems.append(f"{key[0]}:{key[1]} differs on the replica (another graph); left as it is")
            continue
        try:
            artifacts += _copy_artifact(source, target, row["artifact_digest"])
        except OpenLearnerError as exc:
            problems.append(f"{key[0]}:{key[1]} not copied: {exc}")
            if there is None:
                continue
        present.add(key)
        with target.db.engine.begin() as con:
            if there is None:
                _insert_missing(con, models, _aware({"name": key[0], "created_at": created[key[0]]}))
                con.execute(sa.insert(model_versions).values(**_aware(row)))
                copied += 1
            elif row["status"] == "archived" and there[1] != "archived":
                con.execute(
                    sa.update(model_versions)
                    .where(model_versions.c.model_name == key[0], model_versions.c.version == key[1])
                    .values(status="archived")
                )
    moved = _replicate_aliases(target, alias_rows, moves, present, problems)
    rows = _replicate_rows(source, target, feature_objects, ("kind", "name"))
    rows += _replicate_rows(source, target, runs, ("id",))
    rows += _replicate_rows(source, target, operator_runs, ("run_id", "node"))
    copied_outputs, output_rows = _replicate_run_artifacts(source, target, problems)
    return ReplicationReport(copied, artifacts + copied_outputs, moved, rows + output_rows, problems)


def _replicate_run_artifacts(
    source: ModelRegistry, target: ModelRegistry, problems: list[str]
) -> tuple[int, int]:
    """Copy the values runs stored (and their rows) that the replica lacks; (artifacts, rows) copied."""
    key = ("run_id", "node", "output")
    with source.db.engine.connect() as con:
        rows = [_aware(r) for r in con.execute(sa.select(run_artifacts)).mappings()]
    with target.db.engine.connect() as con:
        have = {tuple(r) for r in con.execute(sa.select(*(run_artifacts.c[k] for k in key)))}
    artifacts = inserted = 0
    for row in rows:
        try:
            artifacts += _copy_artifact(source, target, row["digest"])
        except OpenLearnerError as exc:
            problems.append(f"run {row['run_id']} output {row['node']}[{row['output']}] not copied: {exc}")
            continue
        if tuple(row[k] for k in key) not in have:
            with target.db.engine.begin() as con:
                con.execute(sa.insert(run_artifacts).values(**row))
            inserted += 1
    return artifacts, inserted


def _copy_artifact(source: ModelRegistry, target: ModelRegistry, digest: str) -> int:
    """Copy one graph (verified on read) unless the replica holds it; 1 if copied."""
    if target.artifacts.exists(digest):
        return 0
    target.artifacts.put(source.artifacts.get(digest))
    return 1


def _insert_missing(con: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    keys = [c for c in table.primary_key.columns]
    found = con.execute(sa.select(*keys).where(*(c == values[c.name] for c in keys))).first()
    if found is None:
        con.execute(sa.insert(table).values(**values))
        return True
    return False


def _replicate_aliases(
    target: ModelRegistry,
    alias_rows: Any,
    moves: Any,
    present: set[tuple[str, int]],
    problems: list[str],
) -> int:
    """Append the moves the replica lacks and point its aliases where the source's are."""
    by_alias: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for move in moves:
        by_alias[(move["model_name"], move["alias"])].append(move)
    appended = 0
    for row in alias_rows:
        name, alias, version = row["model_name"], row["alias"], row["version"]
        source_moves = by_alias[(name, alias)]
        with target.db.engine.begin() as con:
            mine = [
                _move_key(m)
                for m in con.execute(
                    sa.select(alias_history)
                    .where(alias_history.c.model_name == name, alias_history.c.alias == alias)
                    .order_by(alias_history.c.id)
                ).mappings()
            ]
            theirs = [_move_key(m) for m in source_moves]
            if mine == theirs[: len(mine)]:
                if len(mine) == len(theirs):
                    continue  # already in step
                if (name, version) not in present:
                    problems.append(
                        f"alias {alias} of {name} not moved: version {version} is not on the replica"
                    )
                    continue
                for m in source_moves[len(mine) :]:
                    values = {k: v for k, v in _aware(m).items() if k != "id"}
                    con.execute(sa.insert(alias_history).values(**values))
                    appended += 1
                values = _aware(row)
                if not _insert_missing(con, model_aliases, values):
                    con.execute(
                        sa.update(model_aliases)
                        .where(model_aliases.c.model_name == name, model_aliases.c.alias == alias)
                        .values(
                            version=version, updated_by=values["updated_by"], updated_at=values["updated_at"]
                        )
                    )
            elif theirs != mine[: len(theirs)]:
                problems.append(
                    f"alias {alias} of {name} has a different history on the replica; left as it is"
                )
    return appended


def _replicate_rows(
    source: ModelRegistry, target: ModelRegistry, table: sa.Table, key: tuple[str, ...]
) -> int:
    """Insert the rows the replica lacks and bring changed ones up to date (by primary key)."""
    with source.db.engine.connect() as con:
        rows = [_aware(r) for r in con.execute(sa.select(table)).mappings()]
    changed = 0
    with target.db.engine.begin() as con:
        theirs = {tuple(r[k] for k in key): dict(r) for r in con.execute(sa.select(table)).mappings()}
        for row in rows:
            ident = tuple(row[k] for k in key)
            existing = theirs.get(ident)
            if existing is None:
                con.execute(sa.insert(table).values(**row))
                changed += 1
            elif _differs(existing, row):
                con.execute(sa.update(table).where(*(table.c[k] == row[k] for k in key)).values(**row))
                changed += 1
    return changed


def _move_key(move: Any) -> tuple[Any, ...]:
    """What identifies an alias move on both sides: from, to, who and when (as UTC)."""
    row = _aware(move)
    return (row["from_version"], row["to_version"], row["moved_by"], row["moved_at"])


def _aware(row: Any) -> dict[str, Any]:
    """A row as a dict, its naive timestamps (as SQLite returns them) read as UTC."""
    return {
        k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
        for k, v in dict(row).items()
    }


def _differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two rows differ (timestamps compared as UTC)."""
    mine = _aware(a)
    return any(mine.get(k) != v for k, v in _aware(b).items())
