"""The model registry (``workspace.registry``): immutable versions, aliases and lineage.

What is registered is exactly what is served: ``register`` exports the model to ONNX,
gates it on parity with the native model, stores the graph content-addressed and records
a new version number atomically. Nothing here is ever unpickled.
"""

from __future__ import annotations

import contextlib
import getpass
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openlearner.errors import Conflict, Invalid, NotFound
from openlearner.features.definitions import FeatureService, column_name, split_ref
from openlearner.models.onnx import DEFAULT_TOLERANCE, INPUT, LABEL, PROBABILITY, export
from openlearner.registry.signature import (
    ServingSpec,
    Signature,
    TensorSpec,
    arrow_datatype,
    duckdb_datatype,
)
from openlearner.storage.artifacts.base import ArtifactStore
from openlearner.storage.metadata import MetadataDB
from openlearner.storage.schema import alias_history, model_aliases, model_versions, models

if TYPE_CHECKING:
    from openlearner.features.store import FeatureStore

__all__ = ["AliasMove", "ModelRegistry", "ModelVersion"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_MAX_VERSION = 2**63 - 1
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
_LIBRARIES = ("openlearner", "lightgbm", "scikit-learn", "onnx", "onnxruntime", "onnxmltools", "numpy")


@dataclass(frozen=True)
class ModelVersion:
    """One immutable registered version of a model."""

    name: str
    version: int
    artifact_digest: str
    framework: str
    signature: Signature
    parity: dict[str, Any]
    metrics: dict[str, float]
    libraries: dict[str, str]
    feature_service: FeatureService | None
    tags: dict[str, str]
    run_id: str | None
    training_set_digest: str | None
    status: str
    created_by: str
    created_at: datetime
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: who moved it, when, from which version to which."""

    alias: str
    from_version: int | None
    to_version: int
    moved_by: str
    moved_at: datetime


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _libraries() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            found[name] = importlib_metadata.version(name)
    return found


def _framework(model: Any) -> str:
    from openlearner.models.gbdt import GBDTClassifier

    return "lightgbm" if isinstance(model, GBDTClassifier) else type(model).__module__.split(".")[0]


class ModelRegistry:
    """Versions and aliases in the metadata DB; ONNX graphs in the artifact store."""

    def __init__(
        self, db: MetadataDB, artifacts: ArtifactStore, features: FeatureStore | None = None
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.features = features

    # -- register --------------------------------------------------------------------------
    def register(
        self,
        name: str,
        model: Any,
        *,
        sample: Any,
        features: FeatureService | None = None,
        metrics: Mapping[str, float] | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        training_set_digest: str | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> ModelVersion:
        """Export ``model`` to ONNX, gate it on parity over ``sample`` and record a new version.

        ``sample`` holds held-out rows with the model's input columns. With ``features`` the
        version is served from entity keys: the service's feature columns are read online and
        the model's other columns become request-time inputs.
        """
        self._check_name(name)
        names = getattr(model, "feature_names_", None)
        if names is None:
            raise Invalid(f"cannot register {type(model).__name__}: fit it first (it has no feature_names_)")
        from openlearner.features.store import as_arrow

        table = as_arrow(sample, "sample")
        missing = [c for c in names if c not in table.column_names]
        if missing:
            raise Invalid(
                f"sample lacks the model's column(s) {', '.join(missing)}; pass held-out rows with "
                f"the columns the model was trained on: {', '.join(names)}"
            )
        signature = self._signature(list(names), table, features)
        graph, report = export(model, table.select(list(names)), tolerance)
        digest = self.artifacts.put(graph)
        clean_metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
        clean_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        values = {
            "artifact_digest": digest,
            "framework": _framework(model),
            "signature": signature.to_dict(),
            "parity": report.to_dict(),
            "metrics": clean_metrics,
            "libraries": _libraries(),
            "feature_service": features.to_spec() if features else None,
            "tags": clean_tags,
            "run_id": run_id,
            "training_set_digest": training_set_digest,
            "status": "ready",
            "created_by": _user(),
            "created_at": datetime.now(UTC),
        }
        version = self._insert_version(name, values)
        return self.get(name, version=version)

    def _insert_version(self, name: str, values: dict[str, Any], attempts: int = 20) -> int:
        """Allocate the next version number and insert, retrying when another writer won the race."""
        for _ in range(attempts):
            try:
                with self.db.engine.begin() as con:
                    exists = con.execute(sa.select(models.c.name).where(models.c.name == name)).first()
                    if not exists:
                        con.execute(sa.insert(models).values(name=name, created_at=values["created_at"]))
                    current = con.execute(
                        sa.select(sa.func.max(model_versions.c.version)).where(
                            model_versions.c.model_name == name
                        )
                    ).scalar()
                    version = int(current or 0) + 1
                    con.execute(sa.insert(model_versions).values(model_name=name, version=version, **values))
                return version
            except sa.exc.IntegrityError:
                continue  # a concurrent registration took this number; take the next one
        raise Conflict(f"could not allocate a version of {name!r} after {attempts} attempts; retry")

    def _signature(self, columns: list[str], sample: Any, service: FeatureService | None) -> Signature:
        inputs = [TensorSpec(INPUT, "FP32", [-1, len(columns)])]
        outputs = [TensorSpec(LABEL, "INT64", [-1]), TensorSpec(PROBABILITY, "FP32", [-1])]
        if service is None:
            return Signature(inputs, outputs, columns)
        if self.features is None:
            raise Invalid(
                "this registry has no Feature Store; open it through a Workspace to register with features="
            )
        requests = self.features.resolve(service)
        feature_columns = {column_name(*split_ref(ref)) for ref in service.features}
        unused = sorted(feature_columns - set(columns))
        if unused:
            raise Invalid(
                f"feature service {service.name!r} has feature(s) the model was not trained on: {', '.join(unused)}"
            )
        keys: dict[str, TensorSpec] = {}
        for view, _ in requests:
            key_types = self.features.catalog.get("feature_view", view.name) or {}
            for key in view.join_keys:
                dtype = duckdb_datatype(key_types.get("key_types", {}).get(key, "BIGINT"))
                keys.setdefault(key, TensorSpec(key, dtype, [-1]))
        request_inputs = [
            TensorSpec(c, arrow_datatype(sample.schema.field(c).type), [-1])
            for c in columns
            if c not in feature_columns
        ]
        serving = ServingSpec(service.name, list(keys.values()), list(service.features), request_inputs)
        return Signature(inputs, outputs, columns, serving)

    # -- read ------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of every registered model."""
        with self.db.engine.connect() as con:
            return [r[0] for r in con.execute(sa.select(models.c.name).order_by(models.c.name))]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        self._require_model(name)
        with self.db.engine.connect() as con:
            rows = (
                con.execute(
                    sa.select(model_versions)
                    .where(model_versions.c.model_name == name)
                    .order_by(model_versions.c.version)
                )
                .mappings()
                .all()
            )
            aliases = self._aliases(con, name)
        return [self._version(r, aliases) for r in rows]

    def get(self, name: str, *, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """A version by number or alias (neither: the newest version)."""
        if version is not None and alias is not None:
            raise Invalid("give version= or alias=, not both")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise Invalid(f"a version is a whole number, not {version!r}")
        self._require_model(name)
        with self.db.engine.connect() as con:
            aliases = self._aliases(con, name)
            if alias is not None:
                if alias not in aliases:
                    known = ", ".join(sorted(aliases)) or "none"
                    raise NotFound(f"model {name!r} has no alias {alias!r} (aliases: {known})")
                version = aliases[alias]
            query = sa.select(model_versions).where(model_versions.c.model_name == name)
            if version is None:
                query = query.order_by(model_versions.c.version.desc()).limit(1)
            else:
                query = query.where(model_versions.c.version == version)
            # A number outside 1..2^63-1 matches no version, and drivers cannot even bind some.
            in_range = version is None or 1 <= version <= _MAX_VERSION
            row = con.execute(query).mappings().first() if in_range else None
            if row is None:
                numbers = [
                    r[0]
                    for r in con.execute(
                        sa.select(model_versions.c.version).where(model_versions.c.model_name == name)
                    )
                ]
                raise NotFound(
                    f"model {name!r} has no version {version}; versions: {', '.join(map(str, numbers))}"
                )
        return self._version(row, aliases)

    def versions_using(self, view: str) -> list[ModelVersion]:
        """Versions (not archived) whose feature service reads a feature of ``view``."""
        with self.db.engine.connect() as con:
            rows = (
                con.execute(
                    sa.select(model_versions)
                    .where(
                        model_versions.c.status != "archived", model_versions.c.feature_service.is_not(None)
                    )
                    .order_by(model_versions.c.model_name, model_versions.c.version)
                )
                .mappings()
                .all()
            )
            aliases = {name: self._aliases(con, name) for name in {r["model_name"] for r in rows}}
        return [
            self._version(r, aliases[r["model_name"]])
            for r in rows
            if any(split_ref(ref)[0] == view for ref in (r["feature_service"] or {}).get("features", []))
        ]

    def read_graph(self, version: ModelVersion) -> bytes:
        """The version's ONNX graph, sha256-verified (``Corrupt`` if it no longer matches)."""
        return self.artifacts.get(version.artifact_digest)

    # -- aliases ---------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> AliasMove:
        """Point ``alias`` at ``version`` atomically and record the move."""
        if not isinstance(alias, str) or not _ALIAS.match(alias):
            raise Invalid(
                f"alias {alias!r} is not valid: letters, digits, '-' and '_', starting with a letter"
            )
        target = self.get(name, version=version)
        if target.status == "archived":
            raise Conflict(f"{name} version {version} is archived; an alias cannot point to it")
        now, who = datetime.now(UTC), _user()
        with self.db.engine.begin() as con:
            previous = con.execute(
                sa.select(model_aliases.c.version).where(
                    model_aliases.c.model_name == name, model_aliases.c.alias == alias
                )
            ).scalar()
            if previous is None:
                con.execute(
                    sa.insert(model_aliases).values(
                        model_name=name, alias=alias, version=version, updated_by=who, updated_at=now
                    )
                )
            else:
                con.execute(
                    sa.update(model_aliases)
                    .where(model_aliases.c.model_name == name, model_aliases.c.alias == alias)
                    .values(version=version, updated_by=who, updated_at=now)
                )
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
        return AliasMove(alias, previous, version, who, now)

    def alias_history(self, name: str, alias: str) -> list[AliasMove]:
        """Every move of ``alias``, oldest first."""
        self._require_model(name)
        with self.db.engine.connect() as con:
            rows = (
                con.execute(
                    sa.select(alias_history)
                    .where(alias_history.c.model_name == name, alias_history.c.alias == alias)
                    .order_by(alias_history.c.id)
                )
                .mappings()
                .all()
            )
        return [
            AliasMove(r["alias"], r["from_version"], r["to_version"], r["moved_by"], r["moved_at"])
            for r in rows
        ]

    def archive(self, name: str, version: int) -> None:
        """Retire a version; refused while an alias points to it."""
        target = self.get(name, version=version)
        if target.aliases:
            raise Conflict(
                f"{name} version {version} is the target of alias(es) {', '.join(target.aliases)}; move them first"
            )
        with self.db.engine.begin() as con:
            con.execute(
                sa.update(model_versions)
                .where(model_versions.c.model_name == name, model_versions.c.version == version)
                .values(status="archived")
            )

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise Invalid(f"model name {name!r} is not valid: letters, digits, '.', '-' and '_' (up to 200)")

    def _require_model(self, name: str) -> None:
        self._check_name(name)
        with self.db.engine.connect() as con:
            if con.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
                known = [r[0] for r in con.execute(sa.select(models.c.name).order_by(models.c.name))]
                raise NotFound(f"no model {name!r}; registered models: {', '.join(known) or 'none'}")

    @staticmethod
    def _aliases(con: sa.Connection, name: str) -> dict[str, int]:
        rows = con.execute(
            sa.select(model_aliases.c.alias, model_aliases.c.version).where(
                model_aliases.c.model_name == name
            )
        )
        return {alias: version for alias, version in rows}

    @staticmethod
    def _version(row: Mapping[Any, Any], aliases: dict[str, int]) -> ModelVersion:
        created = row["created_at"]
        return ModelVersion(
            name=row["model_name"],
            version=row["version"],
            artifact_digest=row["artifact_digest"],
            framework=row["framework"],
            signature=Signature.from_dict(row["signature"]),
            parity=dict(row["parity"]),
            metrics=dict(row["metrics"]),
            libraries=dict(row["libraries"]),
            feature_service=FeatureService.from_spec(row["feature_service"])
            if row["feature_service"]
            else None,
            tags=dict(row["tags"]),
            run_id=row["run_id"],
            training_set_digest=row["training_set_digest"],
            status=row["status"],
            created_by=row["created_by"],
            created_at=created.replace(tzinfo=UTC) if created.tzinfo is None else created,
            aliases=sorted(a for a, v in aliases.items() if v == row["version"]),
        )
