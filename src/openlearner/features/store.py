"""The Feature Store facade (``workspace.features``): catalog, training sets, online values."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from openlearner.errors import Conflict, Invalid, NotFound
from openlearner.features.catalog import Catalog
from openlearner.features.definitions import (
    Aggregate,
    Entity,
    FeatureService,
    FeatureView,
    Source,
    column_name,
    flatten,
    split_ref,
)
from openlearner.features.offline.base import FeatureRequest, OfflineStore
from openlearner.features.online.base import EVENT_TIME, OnlineStore

__all__ = ["FeatureStore", "PlanChange", "as_arrow"]

Definition = Entity | Source | FeatureView | FeatureService


def as_arrow(data: Any, what: str) -> pa.Table:
    """Accept an Arrow table, a pandas DataFrame or a dict of columns; return an Arrow table."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, Mapping):
        try:
            return pa.table(dict(data))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise Invalid(f"{what}: cannot build a table from the given columns ({exc})") from exc
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise Invalid(
        f"{what} must be a pyarrow Table, a pandas DataFrame or a dict of columns, not {type(data).__name__}"
    )


@dataclass(frozen=True)
class PlanChange:
    """One difference between the catalog and the definitions about to be applied."""

    kind: str
    name: str
    action: str  # "create", "update", "unchanged"
    breaking: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.action:9} {self.kind} {self.name}"
        return text + (f"  (breaking: {'; '.join(self.breaking)})" if self.breaking else "")


class FeatureStore:
    """One shared catalog of feature definitions over an offline and an online store."""

    def __init__(self, catalog: Catalog, offline: OfflineStore, online: OnlineStore) -> None:
        self.catalog = catalog
        self.offline = offline
        self.online_store = online
        self._tables: dict[str, pa.Table] = {}  # in-memory sources of this process

    # -- catalog ---------------------------------------------------------------------------
    def _resolve(self, objects: Iterable[object]) -> list[tuple[Definition, dict[str, Any]]]:
        resolved: list[tuple[Definition, dict[str, Any]]] = []
        for obj in flatten(objects):
            if not isinstance(obj, Entity | Source | FeatureView | FeatureService):
                raise Invalid(
                    f"apply() takes Entity, Source, FeatureView and FeatureService objects, not {type(obj).__name__}"
                )
            spec = obj.to_spec()
            if isinstance(obj, FeatureView):
                spec["dtypes"] = self.offline.feature_types(obj)
                schema = self.offline.schema(obj.source)
                spec["key_types"] = {key: schema[key] for key in obj.join_keys}
            elif isinstance(obj, Source):
                self.offline.schema(obj)  # the source must be readable
            resolved.append((obj, spec))
        return resolved

    def plan(self, objects: Iterable[object]) -> list[PlanChange]:
        """What :meth:`apply` would change, with the breaking changes it would refuse."""
        resolved = self._resolve(objects)
        pending_views = {o.name for o, _ in resolved if isinstance(o, FeatureView)}
        changes = []
        for obj, spec in resolved:
            old = self.catalog.get(obj.kind, obj.name)
            if old is None:
                changes.append(PlanChange(obj.kind, obj.name, "create"))
                continue
            breaking: list[str] = []
            if isinstance(obj, FeatureView):
                old_types, new_types = old.get("dtypes", {}), spec["dtypes"]
                for name, dtype in old_types.items():
                    if name not in new_types:
                        breaking.append(f"removes feature {name!r}")
                    elif new_types[name] != dtype:
                        breaking.append(f"changes {name!r} from {dtype} to {new_types[name]}")
                if old.get("entities") != spec["entities"]:
                    breaking.append("changes the entities (join keys)")
            if isinstance(obj, FeatureService):
                for ref in obj.features:
                    view = split_ref(ref)[0]
                    if view not in pending_views and self.catalog.get("feature_view", view) is None:
                        raise NotFound(f"feature service {obj.name!r} refers to unknown view {view!r}")
            action = "unchanged" if old == spec else "update"
            changes.append(PlanChange(obj.kind, obj.name, action, tuple(breaking)))
        return changes

    def apply(self, objects: Iterable[object], *, force: bool = False) -> list[PlanChange]:
        """Validate definitions against their sources and store them, all or none.

        Refuses a breaking change to an existing feature view (a feature removed or retyped,
        other join keys) unless ``force=True``.
        """
        objects = flatten(objects)
        changes = self.plan(objects)
        breaking = [c for c in changes if c.breaking]
        if breaking and not force:
            detail = "; ".join(f"{c.kind} {c.name} {', '.join(c.breaking)}" for c in breaking)
            raise Conflict(f"refusing breaking change(s): {detail}. Review them, then apply with force=True")
        items = []
        for obj, spec in self._resolve(objects):
            if isinstance(obj, FeatureService):
                for ref in obj.features:
                    self._known_ref(ref, extra=[o for o in objects if isinstance(o, FeatureView)])
            items.append((obj.kind, obj.name, spec))
            for source in _sources(obj):
                if source.data is not None:
                    self._tables[source.name] = source.data
        self.catalog.put_many(items)
        return changes

    def entity(self, name: str) -> Entity:
        """The entity called ``name``."""
        return Entity.from_spec(self._spec("entity", name))

    def view(self, name: str) -> FeatureView:
        """The feature view called ``name`` (with in-memory data re-attached in this process)."""
        view = FeatureView.from_spec(self._spec("feature_view", name))
        data = self._tables.get(view.source.name)
        if data is not None and view.source.source_kind == "table":
            view = replace(view, source=replace(view.source, data=data))
        return view

    def views(self) -> list[FeatureView]:
        """Every feature view in the catalog."""
        return [self.view(spec["name"]) for spec in self.catalog.specs("feature_view")]

    def service(self, name: str) -> FeatureService:
        """The feature service called ``name``."""
        return FeatureService.from_spec(self._spec("feature_service", name))

    def _spec(self, kind: str, name: str) -> dict[str, Any]:
        spec = self.catalog.get(kind, name)
        if spec is None:
            known = [s["name"] for s in self.catalog.specs(kind)]
            raise NotFound(f"no {kind.replace('_', ' ')} {name!r}{_suggest(name, known)}")
        return spec

    def _known_ref(self, ref: str, extra: Sequence[FeatureView] = ()) -> tuple[FeatureView, str]:
        view_name, feature = split_ref(ref)
        view = next((v for v in extra if v.name == view_name), None) or self.view(view_name)
        names = [f.name for f in view.features]
        if feature not in names:
            raise NotFound(f"feature view {view_name!r} has no feature {feature!r}{_suggest(feature, names)}")
        return view, feature

    def resolve(self, features: Sequence[str] | FeatureService) -> list[FeatureRequest]:
        """Group feature references by view, in first-seen order; unknown ones raise ``NotFound``."""
        refs = features.features if isinstance(features, FeatureService) else features
        if isinstance(refs, str) or not refs:
            raise Invalid(
                "features must be a non-empty list of 'view:feature' references or a FeatureService"
            )
        grouped: dict[str, tuple[FeatureView, list[str]]] = {}
        for ref in refs:
            view, feature = self._known_ref(ref)
            entry = grouped.setdefault(view.name, (view, []))
            if feature in entry[1]:
                raise Invalid(f"feature {ref!r} is asked for twice")
            entry[1].append(feature)
        return list(grouped.values())

    # -- offline ---------------------------------------------------------------------------
    def training_set(
        self, spine: Any, features: Sequence[str] | FeatureService, *, timestamp: str = "event_time"
    ) -> pa.Table:
        """The spine (keys + ``timestamp`` [+ label]) with each feature as of each row's time.

        Columns are named ``<view>__<feature>``; rows come back in spine order, one per spine
        row; a feature only sees events strictly before the row's time.
        """
        table = as_arrow(spine, "spine")
        return self.offline.training_set(table, self.resolve(features), timestamp)

    # -- online ----------------------------------------------------------------------------
    def materialize(self, end: datetime | None = None, views: Sequence[str] | None = None) -> dict[str, int]:
        """Write every online view's values as of ``end`` (default: now) to the online store.

        Each view is written in one transaction, so a failure leaves the previous values
        readable; running it twice writes the same values (idempotent).
        """
        end = _utc(end) if end is not None else datetime.now(UTC)
        selected = (
            [self.view(n) for n in views] if views is not None else [v for v in self.views() if v.online]
        )
        written: dict[str, int] = {}
        for view in selected:
            entities = self.offline.entities(view, end, _horizon(view))
            spine = entities.drop_columns([EVENT_TIME]).append_column(
                "__as_of", pa.array([end] * entities.num_rows, pa.timestamp("us", tz="UTC"))
            )
            names = [f.name for f in view.features]
            values = self.offline.training_set(spine, [(view, names)], "__as_of")
            rows = pa.table(
                {
                    **{k: entities.column(k) for k in view.join_keys},
                    EVENT_TIME: entities.column(EVENT_TIME),
                    **{n: values.column(column_name(view.name, n)) for n in names},
                }
            )
            written[view.name] = self.online_store.write(view.name, view.join_keys, rows)
            self.catalog.record_materialization(view.name, end, rows.num_rows)
        return written

    def online(self, features: Sequence[str] | FeatureService, entities: Any) -> pa.Table:
        """Online values for entity keys, with a ``__status`` per feature and an event time per view.

        ``entities`` maps each join key to a list of values. Status is ``present``,
        ``missing`` (never materialized or pushed) or ``expired`` (older than the view's TTL;
        the value is then null).
        """
        keys = as_arrow(entities, "entities")
        out = keys
        now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
        for view, names in self.resolve(features):
            missing = [k for k in view.join_keys if k not in keys.column_names]
            if missing:
                raise Invalid(f"entities lack join key(s) {', '.join(missing)} needed by view {view.name!r}")
            read = self.online_store.read(view.name, keys.select(list(view.join_keys)), names)
            ttl = view.ttl_delta
            times = read.column(EVENT_TIME).cast(pa.int64()).to_pylist()
            expired = [
                t is not None and ttl is not None and now_us - t > ttl // timedelta(microseconds=1)
                for t in times
            ]
            out = out.append_column(f"{view.name}__{EVENT_TIME}", read.column(EVENT_TIME))
            for name in names:
                values = read.column(name).to_pylist()
                out = out.append_column(
                    column_name(view.name, name),
                    pa.array([None if gone else v for v, gone in zip(values, expired, strict=True)]),
                )
                status = [
                    "missing" if t is None else "expired" if gone else "present"
                    for t, gone in zip(times, expired, strict=True)
                ]
                out = out.append_column(
                    column_name(view.name, name) + "__status", pa.array(status, pa.string())
                )
        return out


def _sources(obj: object) -> list[Source]:
    if isinstance(obj, Source):
        return [obj]
    if isinstance(obj, FeatureView):
        return [obj.source]
    return []


def _utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise Invalid(f"end must be a datetime, not {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _horizon(view: FeatureView) -> timedelta | None:
    """How far back an entity's last event may be and still give it online values."""
    spans = [f.window_delta for f in view.features if isinstance(f, Aggregate)]
    if any(not isinstance(f, Aggregate) for f in view.features):
        if view.ttl_delta is None:
            return None
        spans.append(view.ttl_delta)
    return max(spans)


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close)}?"
    return f"; known: {', '.join(known)}" if known else "; none is defined yet (apply definitions first)"
