"""The online read path of ``FeatureStore.online``: entity keys in, one Arrow table out.

A read is planned once per set of feature references (``OnlineRead``: views, key types, TTLs,
output columns and types) and then costs one ``OnlineStore.read_columns`` call plus a handful
of Arrow calls, however many features it returns: the event times of every view go into one
array, the values of every feature of one declared type into one array, and each column of
the result is a zero-copy slice of those. A status column is shared by every feature whose
status is the view's own (``present`` unless the entity is missing or expired), which is all
of them unless a feature was added since the last materialization. When every value of a
read is present, not null and of its declared type (the usual read), the values are taken
with one getter per view and type and the columns laid out from the plan, with no work per
feature. Such a read of one entity row whose keys and values are all 8-byte numbers (the
latency-critical lookup) fills a copy of an Arrow IPC message laid out once for its shape and
has Arrow read it back (``_OneRow``): one call makes every column, where building them one by
one costs a microsecond or two each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from struct import Struct
from struct import error as StructError
from typing import Any

import orjson
import pyarrow as pa

from openlearner.errors import Invalid
from openlearner.features.online.base import EVENT_TIME, ViewValues, encode_int_keys, encode_key

__all__ = ["OnlinePlan", "OnlineRead", "entity_lists", "key_lists", "online_table", "tuple_getter"]

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"
_UTC_MICROS = pa.timestamp("us", tz="UTC")
_TIMES = 1  # the type group of event times
_NONE = type(None)


def arrow_type(stored: str | None) -> pa.DataType | None:
    """The Arrow type an online value column of catalog type ``stored`` gets; None: inferred.

    Only types whose JSON form decodes to exactly that Python type are declared; the others
    (timestamps stored as ISO text, decimals, lists, ...) are inferred from the values.
    """
    base = (stored or "").split("(")[0].upper()
    if base in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT"):
        return pa.int64()
    if base in ("DOUBLE", "FLOAT", "REAL"):
        return pa.float64()
    if base == "BOOLEAN":
        return pa.bool_()
    if base == "VARCHAR":
        return pa.string()
    return None


def key_kinds(stored: str | None) -> frozenset[type]:
    """Python types of key values that a plain list may hold for a key stored as ``stored``."""
    base = (stored or "").split("(")[0].upper()
    if base.endswith(("INT", "INTEGER")):
        return frozenset({int, _NONE})
    if base == "VARCHAR":
        return frozenset({str, _NONE})
    return frozenset({int, str, _NONE})


@dataclass(frozen=True)
class OnlinePlan:
    """One view's part of an online read, resolved from the catalog."""

    view: str
    join_keys: tuple[str, ...]
    key_types: dict[str, str]
    ttl_us: int | None
    names: tuple[str, ...]
    types: tuple[pa.DataType | None, ...] = ()  # per feature: declared Arrow type, or None (inferred)
    # Derived from the fields above (so left out of comparisons):
    key_python: tuple[frozenset[type], ...] = field(init=False, compare=False)
    getter: Callable[[dict[str, Any]], Any] = field(init=False, compare=False)  # a document's values
    null_doc: dict[str, None] = field(init=False, compare=False)  # stands for an absent/expired document

    def __post_init__(self) -> None:
        kinds = tuple(key_kinds(self.key_types.get(k)) for k in self.join_keys)
        object.__setattr__(self, "key_python", kinds)
        object.__setattr__(self, "getter", itemgetter(*self.names))
        object.__setattr__(self, "null_doc", dict.fromkeys(self.names))
        if len(self.types) != len(self.names):
            object.__setattr__(self, "types", (None,) * len(self.names))


class OnlineRead:
    """The plans of one set of references, with the layout of the table a read returns.

    Values are built one Arrow array per type (``group_types``; group 0 is int64 and also
    holds integer entity keys, group 1 holds every view's event times), each column a slice
    of its group's array at ``rank * rows``.
    """

    def __init__(self, plans: Sequence[OnlinePlan]) -> None:
        self.plans = list(plans)
        self.group_types: list[pa.DataType] = [pa.int64(), _UTC_MICROS]
        sizes = [0, 0]
        # Per view: (event time column, its rank in group 1); per feature: (value column,
        # status column, type group or -1 when inferred, rank in the group).
        self.times: list[tuple[str, int]] = []
        self.layout: list[list[tuple[str, str, int, int]]] = []
        for plan in self.plans:
            self.times.append((f"{plan.view}__{EVENT_TIME}", sizes[_TIMES]))
            sizes[_TIMES] += 1
            features = []
            for name, kind in zip(plan.names, plan.types, strict=True):
                group, rank = -1, 0
                if kind is not None:
                    if kind not in self.group_types:
                        self.group_types.append(kind)
                        sizes.append(0)
                    group = self.group_types.index(kind)
                    rank, sizes[group] = sizes[group], sizes[group] + 1
                value = f"{plan.view}__{name}"
                features.append((value, value + "__status", group, rank))
            self.layout.append(features)
        self.fixed_ints = sizes[0]  # integer entity keys follow these in group 0
        self.key_kinds = {
            k: kind for p in self.plans for k, kind in zip(p.join_keys, p.key_python, strict=True)
        }
        self.int_keys = frozenset(k for k, kind in self.key_kinds.items() if str not in kind)
        # For reads where every value is present and of its declared type (the usual case):
        # per view, (group, getter of the view's values in that group, in rank order); the
        # columns after the entity keys, and where each comes from ((-1, 0): ``present``).
        self.typed = all(f[2] >= 0 for features in self.layout for f in features)
        self.getters: list[list[tuple[int, Callable[[dict[str, Any]], tuple[Any, ...]]]]] = []
        self.tail_names: list[str] = []
        self.slots: list[tuple[int, int]] = []
        for plan, features, (time_name, time_rank) in zip(self.plans, self.layout, self.times, strict=True):
            by_group: dict[int, list[str]] = {}
            for name, (_, _, group, _) in zip(plan.names, features, strict=True):
                by_group.setdefault(group, []).append(name)
            self.getters.append([(group, tuple_getter(names)) for group, names in by_group.items()])
            self.tail_names.append(time_name)
            self.slots.append((_TIMES, time_rank))
            for value, status, group, rank in features:
                self.tail_names += (value, status)
                self.slots += ((group, rank), (-1, 0))
        # Per tuple of entity column names: the layout of a one-row result (None: not laid out).
        self.one_row: dict[tuple[str, ...], _OneRow | None] = {}


def tuple_getter(names: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A getter of ``names`` from a document, always as a tuple (KeyError if one is absent)."""
    if len(names) > 1:
        return itemgetter(*names)
    name = names[0]

    def get(doc: dict[str, Any]) -> tuple[Any, ...]:
        return (doc[name],)

    return get


def entity_lists(entities: Any, read: OnlineRead) -> int | None:
    """The row count when ``entities`` is a dict of equally long plain lists whose key values
    fit the stored key types (the common case, read without building an Arrow table first);
    None otherwise: the caller then goes through Arrow, which names any problem."""
    if type(entities) is not dict or not entities:
        return None
    rows = -1
    for name, values in entities.items():
        if type(values) is not list or type(name) is not str:
            return None
        if rows < 0:
            rows = len(values)
        elif len(values) != rows:
            return None
    for plan in read.plans:
        for key, kinds in zip(plan.join_keys, plan.key_python, strict=True):
            values = entities.get(key)
            if values is None or not kinds.issuperset(map(type, values)):
                return None
    return rows


def key_lists(plan: OnlinePlan, columns: Mapping[str, list[Any]]) -> list[str]:
    """The encoded key (``encode_key``) of every row, for one view."""
    if len(plan.join_keys) == 1:
        values = columns[plan.join_keys[0]]
        if int in plan.key_python[0] and str not in plan.key_python[0] and None not in values:
            return encode_int_keys(values)
        return [orjson.dumps([v]).decode() for v in values]
    return [encode_key(key) for key in zip(*(columns[k] for k in plan.join_keys), strict=True)]


def entity_array(values: list[Any], kinds: frozenset[type] | None) -> pa.Array:
    """A plain list as the Arrow array ``pa.table`` would make of it (typed at once where known)."""
    try:
        if kinds is not None and str not in kinds and values and None not in values:
            try:
                return pa.array(values, pa.int64())
            except (OverflowError, pa.ArrowException):
                pass
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        raise Invalid(f"entities: cannot build a table from the given columns ({exc})") from exc


def _feature_values(plan: OnlinePlan, docs: list[dict[str, Any] | None]) -> list[Sequence[Any]]:
    """Per feature of ``plan``, its value in each document (None where absent)."""
    if not docs:
        return [[] for _ in plan.names]
    filled: list[dict[str, Any]] = [plan.null_doc if d is None else d for d in docs] if None in docs else docs  # type: ignore[assignment]
    try:
        if len(plan.names) == 1:
            return [list(map(plan.getter, filled))]
        return list(zip(*map(plan.getter, filled), strict=True))  # one C-level pass, then transpose
    except KeyError:  # a feature added since the last materialization
        return [[d.get(name) for d in filled] for name in plan.names]


_PRESENT_ARRAYS: dict[int, pa.Array] = {}  # rows -> ["present"] * rows, shared by every read
_TIME, _VALUE, _ENTITY = 0, 1, 2  # what a member of a type group is, for building it alone


def online_table(
    read: OnlineRead,
    names: list[str],
    columns: list[Any],
    answers: Sequence[ViewValues],
    rows: int,
    now_us: int,
) -> pa.Table:
    """The result of a read: the entity columns (``names``; plain lists or Arrow arrays), then
    per view its event time and, per feature, the value and its status; values past the view's
    TTL are null with status ``expired``.

    Written for a small fixed cost per read: one Arrow array per type group, slices of it per
    column, and status arrays shared (``present`` arrays across reads, too). A read whose
    values are all present and of their declared types (the usual one) is laid out straight
    from the plan (:func:`_typed_table`).
    """
    checked = []  # per view: times, documents (None where absent or expired), statuses or None
    typed = read.typed
    for plan, (times, docs) in zip(read.plans, answers, strict=True):
        statuses: list[str] | None = None  # None: every row present
        cutoff = None if plan.ttl_us is None else now_us - plan.ttl_us
        if None in docs or (cutoff is not None and rows and min(times) < cutoff):  # type: ignore[type-var,operator]
            statuses = [
                MISSING if d is None else EXPIRED if cutoff is not None and t < cutoff else PRESENT  # type: ignore[operator]
                for t, d in zip(times, docs, strict=True)
            ]
            docs = [d if s is PRESENT else None for d, s in zip(docs, statuses, strict=True)]
            typed = False
        checked.append((times, docs, statuses))
    if typed:
        shape = tuple(names) if rows == 1 else None
        one = None if shape is None else read.one_row.get(shape)
        if one is not None:
            table = one.table(columns, checked)
            if table is not None:
                return table
        table = _typed_table(read, names, columns, checked, rows)
        if table is not None:
            if (
                shape is not None
                and shape not in read.one_row
                and len(read.one_row) < _SHAPES
                and _all_lists(columns)  # a shape is learnt from plain lists only
            ):
                read.one_row[shape] = _OneRow.of(read, table, len(columns))
            return table
    groups: list[list[Any]] = [[] for _ in read.group_types]
    members: list[list[tuple[int, Any]]] = [[] for _ in read.group_types]  # (what, values) by rank
    views = []
    for plan, features, (times, docs, statuses) in zip(read.plans, read.layout, checked, strict=True):
        per_feature = _feature_values(plan, docs)
        views.append((docs, statuses, rows if statuses is None else statuses.count(PRESENT), per_feature))
        groups[_TIMES] += times
        members[_TIMES].append((_TIME, times))
        for feature, values in zip(features, per_feature, strict=True):
            group = feature[2]
            if group >= 0:
                groups[group] += values
                members[group].append((_VALUE, values))
    entity = _entity_columns(read, names, columns, groups, members)
    built: list[Any] = []
    for kind, values, part in zip(read.group_types, groups, members, strict=True):
        try:
            built.append(pa.array(values, kind))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            built.append(_members_alone(part))  # a value not of the declared type
    arrays = [_column(built, 0, e, rows) if type(e) is int else e for e in entity]
    names = list(names)
    present = _present(rows)
    for index, (plan, features) in enumerate(zip(read.plans, read.layout, strict=True)):
        docs, statuses, served, per_feature = views[index]
        time_name, time_rank = read.times[index]
        names.append(time_name)
        arrays.append(_column(built, _TIMES, time_rank, rows))
        base = present if statuses is None else pa.array(statuses, pa.string())
        nulls = rows - served
        for (value, status, group, rank), name, values in zip(features, plan.names, per_feature, strict=True):
            array = _inferred(values) if group < 0 else _column(built, group, rank, rows)  # -1: inferred
            names += (value, status)
            if values.count(None) == nulls:  # = array.null_count, without asking Arrow
                arrays += (array, base)  # every served row holds a value: the view's statuses
            else:  # some served row holds null: a null value, or a feature it lacks (added since)
                arrays += (array, _own_statuses(name, docs, statuses, rows))
    return pa.Table.from_arrays(arrays, names=names)


def _typed_table(
    read: OnlineRead,
    names: list[str],
    columns: list[Any],
    checked: list[tuple[list[Any], list[Any], list[str] | None]],
    rows: int,
) -> pa.Table | None:
    """:func:`online_table` for a read whose every value is present and not null, laid out from
    the plan with no per-feature work; None when a value breaks that (the general path then
    says what it is)."""
    groups: list[list[Any]] = [[] for _ in read.group_types]
    try:
        for (times, docs, _), getters in zip(checked, read.getters, strict=True):
            groups[_TIMES] += times
            for group, get in getters:
                if rows == 1:
                    groups[group] += get(docs[0])
                else:  # rank-major: each feature's values for every row, in rank order
                    groups[group] += chain.from_iterable(zip(*map(get, docs), strict=True))
    except KeyError:
        return None  # a feature added since these values were written
    if any(None in values for values in groups):
        return None  # a null value: its own status
    entity = _entity_columns(read, names, columns, groups, None)
    try:
        built = [pa.array(values, kind) for kind, values in zip(read.group_types, groups, strict=True)]
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None  # a value not of its declared type
    present = _present(rows)
    arrays = [built[0].slice(e * rows, rows) if type(e) is int else e for e in entity]
    arrays += [present if group < 0 else built[group].slice(rank * rows, rows) for group, rank in read.slots]
    return pa.Table.from_arrays(arrays, names=[*names, *read.tail_names])


_SHAPES = 16  # one-row layouts kept per OnlineRead (one per tuple of entity column names)
_FIXED = {pa.int64(): int, _UTC_MICROS: int, pa.float64(): float}  # 8-byte types: Python type


class _OneRow:
    """A one-row result laid out once as an Arrow IPC message, then made by filling its numbers.

    Built from a result of :func:`_typed_table` whose entity columns are int64 or float64 and
    whose values and event times are int64, float64 or timestamps (8 bytes each, no nulls),
    its other columns being the statuses
    (``present``, the same bytes in every such read). A read of that shape packs a new message
    with one :class:`struct.Struct`: its numbers at their offsets, the bytes between them
    (header, metadata, status columns) as laid out. Arrow reads the batch from it zero-copy:
    every column in one call. Where the numbers are not of the exact Python types laid out
    (a null, an int where a float is declared, a value out of range), :meth:`table` answers
    None and the caller takes the general path.
    """

    def __init__(
        self,
        schema: pa.Schema,
        packer: Struct,
        arrange: Callable[[list[Any]], tuple[Any, ...]],
        fixed: list[bytes],
        kinds: tuple[type, ...],
        getters: list[Callable[[dict[str, Any]], tuple[Any, ...]]],
    ) -> None:
        self.schema = schema
        self.packer = packer
        self.arrange = arrange  # numbers + fixed -> the packer's arguments, in message order
        self.fixed = fixed
        self.kinds = kinds  # the exact Python type of each number, in column order
        self.getters = getters  # per view: its values in feature order

    @classmethod
    def of(cls, read: OnlineRead, table: pa.Table, entities: int) -> _OneRow | None:
        """The layout of ``table`` (one row from :func:`_typed_table`, its first ``entities``
        columns given as plain lists), or None where it has none."""
        statuses = {i for i, (group, _) in enumerate(read.slots, start=entities) if group < 0}
        kinds = []
        for i, kind in enumerate(table.schema.types):
            if i < entities and kind not in (pa.int64(), pa.float64()):
                return None  # an entity column of times: a later int there would still fit "q"
            if i in statuses:
                if table.column(i)[0].as_py() != PRESENT:
                    return None
            elif kind in _FIXED:
                kinds.append(_FIXED[kind])
            else:
                return None  # a string, boolean or inferred column: its bytes vary
        batch = table.combine_chunks().to_batches()[0]
        message = batch.serialize()
        raw = message.to_pybytes()
        back = pa.ipc.read_record_batch(message, batch.schema)
        layout, order, at = ["<"], [], 0
        fixed: list[bytes] = []
        number = 0
        for i, column in enumerate(back.columns):
            if i in statuses:
                continue
            data = column.buffers()[1]
            offset = data.address - message.address
            if column.offset or data.size < 8 or offset < at:
                return None
            if offset > at:  # the bytes before this number, as laid out
                layout.append(f"{offset - at}s")
                order.append(len(kinds) + len(fixed))
                fixed.append(raw[at:offset])
            layout.append("d" if kinds[number] is float else "q")
            order.append(number)
            number += 1
            at = offset + 8
        if at < len(raw):
            layout.append(f"{len(raw) - at}s")
            order.append(len(kinds) + len(fixed))
            fixed.append(raw[at:])
        return cls(
            batch.schema,
            Struct("".join(layout)),
            itemgetter(*order),
            fixed,
            tuple(kinds),
            [tuple_getter(plan.names) for plan in read.plans],
        )

    def table(
        self, columns: list[list[Any]], checked: list[tuple[list[Any], list[Any], Any]]
    ) -> pa.Table | None:
        """This shape's one-row result for these keys and answers; None where a number does not fit."""
        numbers = [c[0] for c in columns]
        try:
            for (times, docs, _), get in zip(checked, self.getters, strict=True):
                numbers.append(times[0])
                numbers += get(docs[0])
        except (KeyError, TypeError):
            return None  # a feature added since, or an entity column that is not a plain list
        if tuple(map(type, numbers)) != self.kinds:
            return None  # a null, or a number of another type: the general path converts or names it
        try:
            message = self.packer.pack(*self.arrange(numbers + self.fixed))
        except StructError:
            return None  # out of the 64-bit range: the general path says so
        batch = pa.ipc.read_record_batch(pa.py_buffer(message), self.schema)
        return pa.Table.from_batches([batch], self.schema)


def _all_lists(columns: list[Any]) -> bool:
    return all(type(c) is list for c in columns)


def _entity_columns(
    read: OnlineRead,
    names: list[str],
    columns: list[Any],
    groups: list[list[Any]],
    members: list[list[tuple[int, Any]]] | None,
) -> list[Any]:
    """Each entity column as an Arrow array, or as its rank in group 0, to which integer keys
    given as plain lists are added (``members`` records them, when given)."""
    entity: list[Any] = []
    for name, values in zip(names, columns, strict=True):
        if type(values) is not list:
            entity.append(values)  # an Arrow column already
        elif name in read.int_keys and values and None not in values:
            entity.append(len(groups[0]) // len(values))
            groups[0] += values
            if members is not None:
                members[0].append((_ENTITY, values))
        else:
            entity.append(entity_array(values, read.key_kinds.get(name)))
    return entity


def _column(built: list[Any], group: int, rank: int, rows: int) -> Any:
    """Column ``rank`` of a type group: a slice of its array, or its own array (see _members_alone)."""
    array = built[group]
    return array[rank] if type(array) is list else array.slice(rank * rows, rows)


def _present(rows: int) -> pa.Array:
    """``["present"] * rows`` as a string array, shared by every read of that many rows."""
    present = _PRESENT_ARRAYS.get(rows)
    if present is None:
        if len(_PRESENT_ARRAYS) > 256:
            _PRESENT_ARRAYS.clear()
        present = _PRESENT_ARRAYS[rows] = pa.array([PRESENT] * rows, pa.string())
    return present


def _own_statuses(
    name: str, docs: list[dict[str, Any] | None], statuses: list[str] | None, rows: int
) -> pa.Array:
    """A feature's statuses where some present row may lack it: ``missing`` there."""
    own = [
        (s if d is None else PRESENT if name in d else MISSING)
        for d, s in zip(docs, statuses or [PRESENT] * rows, strict=True)
    ]
    return pa.array(own, pa.string())


def _inferred(values: Sequence[Any]) -> pa.Array:
    """The values as Arrow infers them; integers past int64 (a ``UBIGINT`` column, say), which
    Arrow's inference refuses, as uint64, else exact decimals, else their digits."""
    try:
        return pa.array(values)
    except OverflowError:
        for kind in (pa.uint64(), pa.decimal128(38, 0)):
            try:
                return pa.array(values, kind)
            except (OverflowError, pa.ArrowException, TypeError, ValueError):
                pass
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _members_alone(members: list[tuple[int, Any]]) -> list[pa.Array]:
    """Each member of a type group as its own array (a value did not fit the group's type)."""
    out = []
    for what, part in members:
        if what == _TIME:
            out.append(pa.array(part, _UTC_MICROS))
        elif what == _ENTITY:
            out.append(entity_array(part, None))
        else:
            out.append(_inferred(part))  # as for a feature of no declared type
    return out
