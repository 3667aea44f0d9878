"""The model registry (``workspace.registry``): immutable versions, aliases and lineage.

What is registered is exactly what is served: ``register`` exports the model to ONNX,
gates it on parity with the native model, reads the signature from the graph, stores the
graph content-addressed and records a new version number atomically. Aliases move by
compare-and-set, through promotion gates when asked. Nothing here is ever unpickled: a
version is an ONNX graph plus JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlalchemy as sa

from openlearner.errors import Conflict, Invalid, NotFound, ParityError
from openlearner.features.definitions import FeatureService, column_name, split_ref
from openlearner.models.onnx import DEFAULT_TOLERANCE, INPUT, check_parity, to_onnx
from openlearner.registry.aliases import (
    CANARY,
    PRODUCTION,
    SHADOW,
    AliasMove,
    AliasMoved,
    check_alias,
    current_target,
    history,
    move,
    set_alias,
)
from openlearner.registry.provenance import (
    clean_metrics,
    framework_of,
    library_versions,
    model_serving_metadata,
    registering_user,
)
from openlearner.registry.signature import (
    ServingSpec,
    Signature,
    TensorSpec,
    arrow_datatype,
    check_signature,
    duckdb_datatype,
    graph_signature,
)
from openlearner.storage.artifacts.base import ArtifactStore
from openlearner.storage.metadata import MetadataDB
from openlearner.storage.schema import model_aliases, model_versions, models

if TYPE_CHECKING:
    from openlearner.features.store import FeatureStore
    from openlearner.registry.replication import ReplicationReport, VerificationReport

__all__ = ["AliasMove", "ModelRegistry", "ModelVersion", "no_such_alias"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_MAX_VERSION = 2**63 - 1
SERVING_METADATA = "serving_metadata"
"""Key of the model's serving metadata inside the stored signature JSON."""


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
    serving_metadata: dict[str, Any] = field(default_factory=dict)
    """What the model needs besides its graph to be served (e.g. a text model's tokenizer), as JSON."""

    @property
    def client_signature(self) -> Signature:
        """The signature as clients call this version: a text model takes text, not token ids."""
        return self.signature.for_clients(self.serving_metadata)


def no_such_alias(name: str, alias: str, aliases: Iterable[str]) -> NotFound:
    """The error for ``alias`` missing from model ``name``, naming the aliases it has."""
    known = ", ".join(sorted(aliases)) or "none"
    return NotFound(f"model {name!r} has no alias {alias!r} (aliases: {known})")


def _sample_rows(sample: Any, columns: list[str]) -> Any:
    """The held-out rows to export and check: a table's model columns, in order; other samples as given.

    Tables (Arrow, pandas, dicts of columns) must hold every model column; samples of
    models without named columns (texts, images) go to the model's own feeds unchanged.
    """
    from openlearner.features.store import as_arrow

    tabular = isinstance(sample, pa.Table | Mapping) or type(sample).__module__.startswith("pandas")
    if not tabular:
        if sample is None:
            raise Invalid("register needs sample=: held-out rows for the parity check")
        return sample
    table = as_arrow(sample, "sample")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise Invalid(
            f"sample lacks the model's column(s) {', '.join(missing)}; pass held-out rows with the columns "
            f"the model was trained on: {', '.join(columns)} (it has {', '.join(table.column_names) or 'none'})"
        )
    return table.select(columns) if columns else table


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
        signature: Signature | dict[str, Any] | None = None,
        features: FeatureService | None = None,
        metrics: Mapping[str, float] | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        training_set_digest: str | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        alias: str | None = None,
        require_parity: bool = True,
    ) -> ModelVersion:
        """Export ``model`` to ONNX, gate it on parity over ``sample`` and record a new version.

        ``sample`` holds held-out rows with the model's input columns. The signature is read
        from the exported graph (or ``signature=`` is checked against it). With ``features``
        the version is served from entity keys: the service's feature columns are read online
        and the model's other columns become request-time inputs. ``alias`` is pointed at the
        new version in the same transaction. ``require_parity=False`` records a version whose
        parity check failed instead of refusing it; such a version cannot be promoted unless
        forced.
        """
        self._check_name(name)
        if alias is not None:
            check_alias(alias)
        columns = self._columns(model, signature)
        clean, metadata = clean_metrics(metrics), model_serving_metadata(model)  # refuse bad input early
        rows = _sample_rows(sample, columns)
        graph = to_onnx(model, rows)
        report = check_parity(model, graph, rows, tolerance)
        if not report.passed and require_parity:
            raise ParityError(f"ONNX export of {type(model).__name__} refused: {report}", report)
        found = graph_signature(graph, columns)
        chosen = check_signature(signature, found) if signature is not None else found
        chosen = self._serving(chosen, rows, features)
        stored_signature = {**chosen.to_dict(), SERVING_METADATA: metadata}
        digest = self.artifacts.put(graph.SerializeToString())
        values = {
            "artifact_digest": digest,
            "framework": framework_of(model),
            "signature": stored_signature,
            "parity": report.to_dict(),
            "metrics": clean,
            "libraries": library_versions(),
            "feature_service": features.to_spec() if features else None,
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "run_id": run_id,
            "training_set_digest": training_set_digest,
            "status": "ready",
            "created_by": registering_user(),
            "created_at": datetime.now(UTC),
        }
        version = self._insert_version(name, values, alias)
        return self.get(name, version=version)

    def _insert_version(
        self, name: str, values: dict[str, Any], alias: str | None = None, attempts: int = 20
    ) -> int:
        """Allocate the next version number and insert (and move ``alias``) in one transaction.

        Retried when another writer won the race for the number or the alias.
        """
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
                    if alias is not None:
                        previous = current_target(con, name, alias)
                        move(con, name, alias, previous, version, values["created_by"], values["created_at"])
                return version
            except (sa.exc.IntegrityError, AliasMoved):
                continue  # a concurrent writer took this number or moved the alias; try again
        raise Conflict(f"could not allocate a version of {name!r} after {attempts} attempts; retry")

    def _columns(self, model: Any, signature: Signature | dict[str, Any] | None) -> list[str]:
        """The model's tabular input columns in order: ``feature_names_``, else the explicit signature's.

        Empty for models whose inputs are not named columns (texts, images): their graph's
        named inputs are the whole signature.
        """
        check = getattr(model, "_check_fitted", None)
        if callable(check):
            check()
        names = getattr(model, "feature_names_", None)
        if names is not None:
            return [str(n) for n in names]
        declared = signature.columns if isinstance(signature, Signature) else None
        if isinstance(signature, dict):
            declared = signature.get("columns")
        if declared:
            return [str(c) for c in declared]
        if not callable(check):
            raise Invalid(f"cannot register {type(model).__name__}: fit it first (it has no feature_names_)")
        return []

    def _serving(self, signature: Signature, sample: Any, service: FeatureService | None) -> Signature:
        """Add the serving spec of a model read from the Feature Store (``service``)."""
        if service is None:
            return signature
        if not isinstance(sample, pa.Table) or not signature.columns:
            raise Invalid("features= needs a model over named columns and a sample table with those columns")
        if self.features is None:
            raise Invalid(
                "this registry has no Feature Store; open it through a Workspace to register with features="
            )
        columns = signature.columns
        tabular = [t.name for t in signature.inputs] == [INPUT] and len(signature.inputs[0].shape) == 2
        if not tabular:
            raise Invalid(
                "features= serves tabular models (one graph input 'input' [batch, columns]); this graph "
                f"takes {', '.join(t.describe() for t in signature.inputs)}"
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
        return Signature(signature.inputs, signature.outputs, columns, serving)

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
                    raise no_such_alias(name, alias, aliases)
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

    def aliases(self, name: str) -> dict[str, int]:
        """Every alias of model ``name`` and the version number it names, in one query."""
        self._check_name(name)
        with self.db.engine.connect() as con:
            found = self._aliases(con, name)
        if not found:
            self._require_model(name)  # no aliases, or no such model (NotFound)
        return found

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

    # -- disaster recovery -----------------------------------------------------------------
    def replicate(self, to: ModelRegistry | str) -> ReplicationReport:
        """Copy every model, version, alias (with history) and graph to ``to``; safe to repeat.

        ``to`` is another registry, or a replica folder (``sqlite`` metadata and local
        artifacts inside it, laid out like a workspace); see :mod:`openlearner.registry.replication`.
        """
        from openlearner.registry.replication import open_replica, replicate

        if isinstance(to, ModelRegistry):
            return replicate(self, to)
        target = open_replica(to)
        try:
            return replicate(self, target)
        finally:
            target.db.dispose()

    def verify(self, repair_from: ModelRegistry | str | None = None) -> VerificationReport:
        """Re-hash the graph of every version and report the missing and corrupt ones.

        ``repair_from`` (a registry or replica folder) copies intact graphs back for them.
        """
        from openlearner.registry.replication import open_replica, verify

        if repair_from is None or isinstance(repair_from, ModelRegistry):
            return verify(self, repair_from)
        replica = open_replica(repair_from)
        try:
            return verify(self, replica)
        finally:
            replica.db.dispose()

    # -- aliases ---------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> AliasMove:
        """Point ``alias`` at ``version`` atomically and record the move (no gates; see :meth:`promote`).

        Of concurrent moves the last writer wins and every move is recorded, each with the
        version the alias really left.
        """
        check_alias(alias)
        self._movable(name, version)
        return set_alias(self.db.engine, name, alias, version, registering_user())

    def promote(self, name: str, version: int, alias: str = PRODUCTION, *, force: bool = False) -> AliasMove:
        """Point ``alias`` at ``version`` through the promotion gates.

        Refused (``Conflict``) when the version's parity report failed or its signature is
        incompatible with the version the alias points to now, unless ``force``. For
        ``canary`` and ``shadow`` the signature is checked against ``production``'s version,
        whose requests they get (a shadow only needs to take them: see
        :meth:`Signature.mirror_problems`); promoting ``production`` checks the canary and
        shadow in place the same way against the new version. An archived version is refused
        even when forced.
        """
        check_alias(alias)
        target = self._movable(name, version)
        for _ in range(20):
            with self.db.engine.connect() as con:
                held = current_target(con, name, alias)
                # A canary answers a share of production's clients and a shadow gets a copy of
                # their requests: what they must take is what production's version is sent.
                against = current_target(con, name, PRODUCTION) if alias in (CANARY, SHADOW) else held
                rollouts = (
                    {r: current_target(con, name, r) for r in (CANARY, SHADOW)}
                    if alias == PRODUCTION and held != version  # (promoting what it holds moves nothing)
                    else {}
                )
            problems = [] if force else self._gate_problems(target, alias, against)
            if not force:
                problems += self._rollout_problems(target, rollouts)
            # The gates read other aliases too: the move goes through only if they still point
            # where they did, else it is checked again against where they point now.
            others: dict[str, int | None] = {}
            if alias == PRODUCTION:
                others = rollouts
            elif alias in (CANARY, SHADOW):
                others = {PRODUCTION: against}
            if problems:
                raise Conflict(
                    f"cannot promote {name} version {version} to {alias}: {'; '.join(problems)}; "
                    "register a fixed version, or force it (force=True, --force)"
                )
            try:
                return set_alias(
                    self.db.engine, name, alias, version, registering_user(), expect=held, others=others
                )
            except AliasMoved:
                continue  # moved while we checked its gates: check against the new targets
        raise Conflict(f"alias {alias} of {name} kept moving while it was being promoted; retry")

    def rollback(self, name: str, alias: str) -> AliasMove:
        """Move ``alias`` back to the version it pointed to before its last move (recorded as a move).

        A second rollback undoes the first; to go further back, promote that version.
        """
        check_alias(alias)
        history = self.alias_history(name, alias)
        # (Workspaces from before no-op promotions went unrecorded may hold 8 → 8 rows: skipped.)
        last = next((m for m in reversed(history) if m.from_version != m.to_version), history[-1])
        if last.from_version is None:
            raise Conflict(
                f"alias {alias} of {name} has only ever pointed to version {last.to_version}; "
                "there is nothing to roll back to"
            )
        self._movable(name, last.from_version)
        try:
            return set_alias(
                self.db.engine, name, alias, last.from_version, registering_user(), expect=last.to_version
            )
        except AliasMoved:
            raise Conflict(
                f"alias {alias} of {name} moved during the rollback; look at its history and retry"
            ) from None

    def _gate_problems(self, target: ModelVersion, alias: str, against: int | None) -> list[str]:
        """Why ``target`` may not take ``alias``: a failed parity check, and what keeps the clients
        of version ``against`` (the alias's, or production's for a canary or shadow) from it."""
        problems = []
        parity = target.parity
        if not parity.get("passed", False):
            problems.append(
                f"its parity check failed (max |Δ| {parity.get('max_abs_diff', float('nan')):.2e} > "
                f"tolerance {parity.get('tolerance', float('nan')):.0e})"
            )
        if against is not None and against != target.version:
            found = _unfit(
                alias, target.client_signature, self.get(target.name, version=against).client_signature
            )
            if alias in (CANARY, SHADOW):
                holder = f"version {against} holds {PRODUCTION}, whose requests the {alias} gets"
            else:
                holder = f"version {against} holds the alias"
            problems += [f"{p} ({holder})" for p in found]
        return problems

    def _rollout_problems(self, target: ModelVersion, rollouts: dict[str, int | None]) -> list[str]:
        """Why the canary or shadow in place could not take the requests of ``target`` as
        production: its clients would reach them."""
        problems = []
        for alias, held in rollouts.items():
            if held is None or held == target.version:
                continue
            found = _unfit(
                alias, self.get(target.name, version=held).client_signature, target.client_signature
            )
            problems += [
                f"the {alias} (version {held}) could not take its requests: {p}; move the {alias} first"
                for p in found
            ]
        return problems

    def _movable(self, name: str, version: int) -> ModelVersion:
        target = self.get(name, version=version)
        if target.status == "archived":
            raise Conflict(f"{name} version {version} is archived; an alias cannot point to it")
        return target

    def alias_history(self, name: str, alias: str) -> list[AliasMove]:
        """Every move of ``alias``, oldest first (``NotFound`` for an alias that was never set)."""
        self._require_model(name)
        check_alias(alias)
        with self.db.engine.connect() as con:
            moves = history(con, name, alias)
            if not moves:
                raise no_such_alias(name, alias, self._aliases(con, name))
        return moves

    def archive(self, name: str, version: int) -> None:
        """Retire a version; refused while an alias points to it.

        The version row is written first and the aliases checked after, in one transaction:
        that row lock orders an archive against a concurrent alias move (which reads the
        row ``FOR SHARE``), so an alias never ends up on an archived version.
        """
        self.get(name, version=version)
        with self.db.engine.begin() as con:
            con.execute(
                sa.update(model_versions)
                .where(model_versions.c.model_name == name, model_versions.c.version == version)
                .values(status="archived")
            )
            holding = sorted(a for a, v in self._aliases(con, name).items() if v == version)
            if holding:
                raise Conflict(
                    f"{name} version {version} is the target of alias(es) {', '.join(holding)}; move them first"
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
        signature = dict(row["signature"])
        serving_metadata = signature.pop(SERVING_METADATA, None) or {}
        return ModelVersion(
            name=row["model_name"],
            version=row["version"],
            artifact_digest=row["artifact_digest"],
            framework=row["framework"],
            signature=Signature.from_dict(signature),
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
            serving_metadata=dict(serving_metadata),
        )


def _unfit(alias: str, serving: Signature, clients: Signature) -> list[str]:
    """Why a version of signature ``serving`` could not take ``alias``'s requests from clients of
    ``clients`` (empty: it can). A shadow's answers are never returned: it need only take them."""
    return serving.mirror_problems(clients) if alias == SHADOW else serving.incompatibilities(clients)
