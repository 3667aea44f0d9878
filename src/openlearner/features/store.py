"""The Feature Store facade (``workspace.features``): catalog, training sets, online values."""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from openlearner.errors import Conflict, Invalid, NotFound
from openlearner.features.catalog import Catalog, Materialization
from openlearner.features.definitions import (
    Aggregate,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Source,
    column_name,
    flatten,
    split_ref,
)
from openlearner.features.offline.base import FeatureRequest, OfflineStore
from openlearner.features.online.base import EVENT_TIME, OnlineStore, encode_key
from openlearner.features.online.reader import (
    OnlinePlan,
    OnlineRead,
    arrow_type,
    entity_lists,
    key_lists,
    online_table,
)

__all__ = ["FeatureStore", "PlanChange", "ViewDescription", "as_arrow", "statistics"]

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


PLAN_REFRESH_SECONDS = 1.0
"""How long ``online`` reuses resolved definitions before looking at the catalog again."""


@dataclass(frozen=True)
class ViewDescription:
    """What ``describe`` tells about a feature view."""

    view: FeatureView
    dtypes: dict[str, str]
    last_materialization: Materialization | None
    services: list[str]


def statistics(table: pa.Table, columns: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per column: rows, null fraction, and mean/std/min/max (numbers) or the distinct count."""
    out: dict[str, dict[str, float | None]] = {}
    for name in columns:
        column = table.column(name)
        rows = len(column)
        stats: dict[str, float | None] = {
            "rows": float(rows),
            "null_fraction": column.null_count / rows if rows else None,
        }
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            values = column.cast(pa.float64())
            for key, fn in (("mean", pc.mean), ("std", pc.stddev), ("min", pc.min), ("max", pc.max)):
                result = fn(values).as_py()
                stats[key] = None if result is None or result != result else float(result)  # NaN -> None
        else:
            stats["distinct"] = float(pc.count_distinct(column).as_py())
        out[name] = stats
    return out


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
        self._tables: dict[str, pa.Table] = {}  # view name -> its in-memory source, in this process
        self._plans: dict[tuple[str, ...], tuple[float, OnlineRead]] = {}  # refs -> (resolved at, read)

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
        pending_views = [o for o, _ in resolved if isinstance(o, FeatureView)]
        changes = []
        for obj, spec in resolved:
            if isinstance(obj, FeatureService):  # new or not, its references must resolve
                for ref in obj.features:
                    self._known_ref(ref, extra=pending_views)
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
                # Online rows are keyed by join key values: other keys or key types orphan them.
                # (A renamed or re-described entity with the same keys is not breaking.)
                old_keys = [k for e in old.get("entities", []) for k in e["join_keys"]]
                if (
                    old_keys != list(obj.join_keys)
                    or old.get("key_types", spec["key_types"]) != spec["key_types"]
                ):
                    breaking.append("changes the entities (join keys)")
            action = "unchanged" if old == spec else "update"
            changes.append(PlanChange(obj.kind, obj.name, action, tuple(breaking)))
        return changes

    def apply(self, objects: Iterable[object], *, force: bool = False) -> list[PlanChange]:
        """Validate definitions against their sources and store them, all or none.

        Refuses a breaking change to an existing feature view (a feature removed or retyped,
        other join keys) unless ``force=True``; a forced change drops the view's online values
        (``missing`` until the next :meth:`materialize`), which were keyed or typed the old way.
        """
        objects = flatten(objects)
        changes = self.plan(objects)
        breaking = [c for c in changes if c.breaking]
        if breaking and not force:
            detail = "; ".join(f"{c.kind} {c.name} {', '.join(c.breaking)}" for c in breaking)
            raise Conflict(f"refusing breaking change(s): {detail}. Review them, then apply with force=True")
        items = []
        tables: dict[str, pa.Table] = {}
        for obj, spec in self._resolve(objects):
            items.append((obj.kind, obj.name, spec))
            # Keyed by view, not source name: two Source.table(...) share the default name.
            if isinstance(obj, FeatureView) and obj.source.data is not None:
                tables[obj.name] = obj.source.data
        self.catalog.put_many(items)
        self._plans.clear()  # reads in this process see the new definitions at once
        self._tables.update(tables)  # only once stored: a refused apply changes nothing
        for change in breaking:
            self.online_store.delete(change.name)
        return changes

    def entity(self, name: str) -> Entity:
        """The entity called ``name``."""
        return Entity.from_spec(self._spec("entity", name))

    def view(self, name: str) -> FeatureView:
        """The feature view called ``name`` (with in-memory data re-attached in this process)."""
        view = FeatureView.from_spec(self._spec("feature_view", name))
        data = self._tables.get(name)
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
            view, feature = self._known_ref(ref, [v for v, _ in grouped.values()])  # a view read once
            entry = grouped.setdefault(view.name, (view, []))
            if feature in entry[1]:
                raise Invalid(f"feature {ref!r} is asked for twice")
            entry[1].append(feature)
        return list(grouped.values())

    def search(self, text: str) -> list[FeatureView]:
        """Views whose name, feature names, tags, owner or description contain ``text`` (any case)."""
        needle = text.strip().lower()
        if not needle:
            raise Invalid("search needs some text, e.g. 'ctr' or an owner's name")
        found = []
        for view in self.views():
            haystack = [view.name, view.owner, view.description, *view.tags, *(f.name for f in view.features)]
            if any(needle in item.lower() for item in haystack):
                found.append(view)
        return found

    def describe(self, name: str) -> ViewDescription:
        """A view's definition, output types, freshness, statistics and the services that use it."""
        view = self.view(name)
        spec = self._spec("feature_view", name)
        services = [
            s["name"]
            for s in self.catalog.specs("feature_service")
            if any(split_ref(ref)[0] == name for ref in s["features"])
        ]
        return ViewDescription(
            view, dict(spec.get("dtypes", {})), self.catalog.last_materialization(name), services
        )

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
    def materialize(
        self, end: datetime | None = None, views: Sequence[str] | None = None, *, full: bool = False
    ) -> dict[str, int]:
        """Write every online view's values as of ``end`` (default: now) to the online store.

        Incremental: after an earlier materialization of the same definition, only entities
        whose values can have changed are recomputed — those with events since then, and
        those with events that have since left a window. ``full=True`` recomputes every
        entity (needed after events arrive late, with times before the last run). Each view
        is written in one transaction, so a failure leaves the previous values readable;
        running it twice writes the same values. Returns the entities written per view.
        """
        end = _utc(end) if end is not None else datetime.now(UTC)
        selected = (
            [self.view(n) for n in views] if views is not None else [v for v in self.views() if v.online]
        )
        written: dict[str, int] = {}
        for view in selected:
            entities = self.offline.entities(view, end, None if full else self._changed_since_last(view, end))
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
            self.catalog.record_materialization(view.name, end, rows.num_rows, statistics(rows, names))
        return written

    def _changed_since_last(self, view: FeatureView, end: datetime) -> list[tuple[datetime, datetime]] | None:
        """Time ranges whose events can change a value between the last materialization and ``end``.

        None (recompute everything) when there is no earlier run, it was as of a later time,
        or the view's definition changed since. Otherwise: new events ``[last, end]``, rows
        pushed since the last run (whatever their time), and for each window ``w`` the events
        that left it, ``[last - w, end - w]``.
        """
        last = self.catalog.last_materialization(view.name)
        defined = self.catalog.updated_at("feature_view", view.name)
        if last is None or last.end >= end or defined is None or defined > last.at:
            return None
        ranges = [(last.end, end)]
        late = self.offline.pushed_since(view, last.at)  # pushed rows may be older than the last run
        if late is not None and late < last.end:
            ranges.append((late, last.end))
        for window in sorted({f.window_delta for f in view.features if isinstance(f, Aggregate)}):
            ranges.append((last.end - window, end - window))
        return ranges

    def push(self, view: str, rows: Any) -> int:
        """Real-time rows for ``view``: visible to online reads at once, and logged offline.

        ``rows`` holds the view's join keys, the columns its features read and, optionally,
        the source's timestamp column (default: now). The rows are appended to the view's
        offline log first — so a later training set sees exactly what serving saw — then
        each entity's ``Field`` values are replaced online by its newest pushed row, unless
        the online value is newer. Aggregates are refreshed online by :meth:`materialize`.
        """
        target = self.view(view)
        table = as_arrow(rows, "pushed rows")
        if table.num_rows == 0:
            raise Invalid("push() needs at least one row")
        stamp = target.source.timestamp
        if stamp not in table.column_names:
            now = datetime.now(UTC)
            table = table.append_column(stamp, pa.array([now] * table.num_rows, pa.timestamp("us", tz="UTC")))
        needed = dict.fromkeys([*target.join_keys, *(f.column for f in target.features)])
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise Invalid(f"pushed rows for view {view!r} lack column(s) {', '.join(missing)}")
        times = _utc_micros(table.column(stamp), f"pushed column {stamp!r}")
        count = self.offline.append(target, table)
        self._push_online(target, table, times)
        return count

    def _push_online(self, view: FeatureView, table: pa.Table, times: list[int]) -> None:
        columns = table.to_pydict()
        newest: dict[str, int] = {}  # encoded key -> index of the entity's newest pushed row
        for row, key in enumerate(zip(*(columns[k] for k in view.join_keys), strict=True)):
            encoded = encode_key(key)
            if encoded not in newest or times[row] >= times[newest[encoded]]:
                newest[encoded] = row
        stored = self.online_store.read_keys(view.name, list(newest))
        names = [f.name for f in view.features]
        fields = {f.name: f.column for f in view.features if isinstance(f, Field)}
        updates: dict[str, list[Any]] = {k: [] for k in (*view.join_keys, EVENT_TIME, *names)}
        for encoded, row in newest.items():
            old_time, old_values = stored.get(encoded, (None, {}))
            if old_time is not None and old_time > times[row]:
                continue  # the online value is newer than anything pushed now
            for join_key in view.join_keys:
                updates[join_key].append(columns[join_key][row])
            updates[EVENT_TIME].append(times[row])
            for name in names:
                updates[name].append(columns[fields[name]][row] if name in fields else old_values.get(name))
        if not updates[EVENT_TIME]:
            return
        arrays = {
            k: pa.array(v, table.schema.field(k).type) for k, v in updates.items() if k in view.join_keys
        }
        arrays[EVENT_TIME] = pa.array(updates[EVENT_TIME], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        arrays.update({name: pa.array(updates[name]) for name in names})
        self.online_store.write(view.name, view.join_keys, pa.table(arrays))

    def online(self, features: Sequence[str] | FeatureService, entities: Any) -> pa.Table:
        """Online values for entity keys, with a ``__status`` per feature and an event time per view.

        ``entities`` maps each join key to a list of values. Status is ``present``,
        ``missing`` (never materialized or pushed) or ``expired`` (older than the view's TTL;
        the value is then null). Definitions are looked up at most once a second per set of
        references, so repeated reads do no catalog queries; every view is read in one call
        to the online store (one round trip, one snapshot).
        """
        read = self._online_read(features)
        rows = entity_lists(entities, read)
        if rows is not None:  # a dict of plain lists whose keys fit: no Arrow table needed first
            lists: Mapping[str, list[Any]] = entities
            names, columns = list(entities), list(entities.values())
        else:
            keys = as_arrow(entities, "entities")
            self._check_keys(read, keys)
            rows = keys.num_rows
            lists = {k: keys.column(k).to_pylist() for p in read.plans for k in p.join_keys}
            names, columns = list(keys.column_names), list(keys.columns)
        answers = self.online_store.read_columns([(p.view, key_lists(p, lists)) for p in read.plans])
        return online_table(read, names, columns, answers, rows, time.time_ns() // 1000)

    @staticmethod
    def _check_keys(read: OnlineRead, keys: pa.Table) -> None:
        for plan in read.plans:
            missing = [k for k in plan.join_keys if k not in keys.column_names]
            if missing:
                raise Invalid(f"entities lack join key(s) {', '.join(missing)} needed by view {plan.view!r}")
            for key, stored in plan.key_types.items():
                given = keys.schema.field(key).type
                if not _key_type_fits(given, stored):
                    # Keys are matched by value, so "1" would silently miss a key stored as 1.
                    raise Invalid(
                        f"entity key {key!r} is {given} but view {plan.view!r} stores it as {stored}; "
                        "pass key values of the source's type"
                    )

    def _online_read(self, features: Sequence[str] | FeatureService) -> OnlineRead:
        """What ``online`` reads for these references: resolved once a second, then from memory."""
        refs = features.features if isinstance(features, FeatureService) else features
        cache_key = (refs,) if isinstance(refs, str) else tuple(refs)
        cached = self._plans.get(cache_key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < PLAN_REFRESH_SECONDS:
            return cached[1]
        plans = []
        for view, names in self.resolve(features):
            spec = self._spec("feature_view", view.name)
            key_types, dtypes = spec.get("key_types", {}), spec.get("dtypes", {})
            ttl = view.ttl_delta
            plans.append(
                OnlinePlan(
                    view=view.name,
                    join_keys=tuple(view.join_keys),
                    key_types={k: key_types[k] for k in view.join_keys if k in key_types},
                    ttl_us=None if ttl is None else ttl // timedelta(microseconds=1),
                    names=tuple(names),
                    types=tuple(arrow_type(dtypes.get(n)) for n in names),
                )
            )
        # Unchanged definitions keep their OnlineRead, and with it the layouts it has learnt.
        read = cached[1] if cached is not None and cached[1].plans == plans else OnlineRead(plans)
        self._plans[cache_key] = (now, read)
        return read


def _utc_micros(column: pa.ChunkedArray, what: str) -> list[int]:
    """Microseconds since the epoch (UTC) of a timestamp column; naive times are UTC."""
    if not pa.types.is_timestamp(column.type):
        raise Invalid(f"{what} is {column.type}, not a timestamp")
    if column.null_count:
        raise Invalid(f"{what} has null times; every row needs one")
    naive = column.cast(pa.timestamp(column.type.unit, tz="UTC")) if column.type.tz is None else column
    return naive.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()


def _utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise Invalid(f"end must be a datetime, not {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _key_type_fits(given: pa.DataType, stored: str) -> bool:
    """Whether Arrow key values of type ``given`` can match keys the source holds as ``stored``."""
    if pa.types.is_null(given):
        return True
    base = stored.split("(")[0].upper()
    if base.endswith(("INT", "INTEGER")):  # TINYINT ... UHUGEINT, INTEGER, UINTEGER
        return pa.types.is_integer(given)
    if base == "VARCHAR":
        return pa.types.is_string(given) or pa.types.is_large_string(given)
    return True


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close)}?"
    return f"; known: {', '.join(known)}" if known else "; none is defined yet (apply definitions first)"
