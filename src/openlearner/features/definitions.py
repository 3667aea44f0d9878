"""Feature definitions: declarative objects with no I/O (which store backs them is configuration).

``Entity`` names the join keys, ``Source`` says where events live, ``FeatureView`` groups
features computed from one source per entity, and ``FeatureService`` names the feature set a
model reads. Every object round-trips through a JSON spec so the catalog can store it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa

from openlearner.errors import Invalid

__all__ = [
    "AGGREGATIONS",
    "Aggregate",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "Source",
    "column_name",
    "parse_duration",
    "split_ref",
]

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "count_distinct", "last")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise Invalid(
            f"{kind} name {name!r} is not valid: use letters, digits and single underscores, "
            "starting with a letter (for example 'user_stats')"
        )
    return name


def parse_duration(text: str) -> timedelta:
    """Parse a window or TTL such as ``"90s"``, ``"15m"``, ``"1h"`` or ``"7d"``."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) == 0:
        raise Invalid(
            f"{text!r} is not a duration: write a positive whole number followed by s, m, h or d "
            "(for example '1h' or '7d')"
        )
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def column_name(view: str, feature: str) -> str:
    """The column a feature gets in training sets and online reads: ``<view>__<feature>``."""
    return f"{view}__{feature}"


def split_ref(ref: str) -> tuple[str, str]:
    """Split a feature reference ``"view:feature"`` into its two names."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise Invalid(f"feature reference {ref!r} must look like 'view:feature' (e.g. 'user_stats:ctr_7d')")
    view, name = ref.split(":")
    return view, name


@dataclass(frozen=True)
class Entity:
    """A thing features describe (a user, an ad), identified by its join key columns."""

    name: str
    join_keys: Sequence[str]
    description: str = ""
    kind: ClassVar[str] = "entity"

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        if isinstance(self.join_keys, str) or not self.join_keys:
            raise Invalid(f"entity {self.name!r} needs join_keys as a list of column names, e.g. ['user_id']")
        object.__setattr__(self, "join_keys", tuple(self.join_keys))
        for key in self.join_keys:
            _check_name("join key", key)

    def to_spec(self) -> dict[str, Any]:
        """The JSON form stored in the catalog."""
        return {"name": self.name, "join_keys": list(self.join_keys), "description": self.description}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Entity:
        """Rebuild from :meth:`to_spec`."""
        return cls(spec["name"], join_keys=spec["join_keys"], description=spec.get("description", ""))


SourceKind = Literal["parquet", "csv", "table", "sql"]


@dataclass(frozen=True)
class Source:
    """Where a feature view's events live; build one with ``parquet``, ``csv``, ``sql`` or ``table``."""

    source_kind: SourceKind
    location: str | None
    timestamp: str
    name: str
    data: pa.Table | None = field(default=None, compare=False, repr=False)
    kind: ClassVar[str] = "source"

    def __post_init__(self) -> None:
        _check_name("source", self.name)
        if self.source_kind not in ("parquet", "csv", "table", "sql"):
            raise Invalid(
                f"source kind {self.source_kind!r} is unknown; build sources with Source.parquet, "
                "Source.csv, Source.sql or Source.table"
            )
        if self.source_kind == "sql" and not (isinstance(self.location, str) and self.location.strip()):
            raise Invalid(
                "a sql source needs a query, e.g. Source.sql(\"SELECT * FROM read_parquet('e/*.parquet')\", ...)"
            )
        if self.source_kind != "table" and not self.location:
            raise Invalid(f"a {self.source_kind} source needs a file path or glob")
        if not isinstance(self.timestamp, str) or not self.timestamp:
            raise Invalid("a source needs timestamp=<name of its event time column>")

    @staticmethod
    def _default_name(location: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(location.split("*")[0]).name or Path(location).parent.name)
        stem = re.sub(r"_+", "_", stem).strip("_")
        return f"src_{stem}" if stem else "src_events"

    @classmethod
    def parquet(cls, path: str | Path, *, timestamp: str, name: str | None = None) -> Source:
        """Parquet file(s): a path or glob; relative paths resolve against the current directory."""
        location = str(Path(path).expanduser().absolute())
        return cls("parquet", location, timestamp, name or cls._default_name(location))

    @classmethod
    def csv(cls, path: str | Path, *, timestamp: str, name: str | None = None) -> Source:
        """CSV file(s) with a header row: a path or glob."""
        location = str(Path(path).expanduser().absolute())
        return cls("csv", location, timestamp, name or cls._default_name(location))

    @classmethod
    def sql(cls, query: str, *, timestamp: str, name: str = "src_sql") -> Source:
        """A DuckDB query (it may read files: ``SELECT * FROM read_parquet('e/*.parquet') WHERE ...``)."""
        return cls("sql", query, timestamp, name)

    @classmethod
    def table(cls, data: Any, *, timestamp: str, name: str = "src_table") -> Source:
        """An in-memory Arrow table or pandas DataFrame (lives only in this process)."""
        if not isinstance(data, pa.Table):
            try:
                data = pa.Table.from_pandas(data, preserve_index=False)
            except Exception as exc:
                raise Invalid(
                    f"Source.table needs a pyarrow Table or pandas DataFrame, not {type(data).__name__}"
                ) from exc
        return cls("table", None, timestamp, name, data)

    def to_spec(self) -> dict[str, Any]:
        """The JSON form stored in the catalog (an in-memory table stores no data)."""
        return {
            "name": self.name,
            "kind": self.source_kind,
            "location": self.location,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Source:
        """Rebuild from :meth:`to_spec`."""
        return cls(spec["kind"], spec["location"], spec["timestamp"], spec["name"])


@dataclass(frozen=True)
class Aggregate:
    """A trailing-window aggregate of ``column``: events in ``(t - window, t)`` for a row at ``t``."""

    column: str
    function: str
    window: str
    name: str = ""

    def __post_init__(self) -> None:
        if self.function not in AGGREGATIONS:
            raise Invalid(f"aggregation {self.function!r} is unknown; use one of {', '.join(AGGREGATIONS)}")
        parse_duration(self.window)
        # One spelling per window (" 1h" -> "1h"): it is part of the default feature name.
        match = _DURATION.match(self.window)
        assert match is not None  # parse_duration accepted it
        object.__setattr__(self, "window", f"{int(match.group(1))}{match.group(2)}")
        if not self.name:
            object.__setattr__(self, "name", f"{self.column}_{self.function}_{self.window}")
        _check_name("feature", self.name)

    @property
    def window_delta(self) -> timedelta:
        """The window as a timedelta."""
        return parse_duration(self.window)

    def to_spec(self) -> dict[str, Any]:
        """The JSON form stored in the catalog."""
        return {
            "type": "aggregate",
            "column": self.column,
            "function": self.function,
            "window": self.window,
            "name": self.name,
        }


@dataclass(frozen=True)
class Field:
    """The latest value of ``column`` strictly before the time asked (null past the view's TTL)."""

    column: str
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.column)
        _check_name("feature", self.name)

    def to_spec(self) -> dict[str, Any]:
        """The JSON form stored in the catalog."""
        return {"type": "field", "column": self.column, "name": self.name}


Feature = Aggregate | Field


def _feature_from_spec(spec: dict[str, Any]) -> Feature:
    if spec["type"] == "aggregate":
        return Aggregate(spec["column"], spec["function"], spec["window"], spec["name"])
    return Field(spec["column"], spec["name"])


@dataclass(frozen=True)
class FeatureView:
    """Features of one or more entities computed from one source, point-in-time correct."""

    name: str
    entities: Sequence[Entity]
    source: Source
    features: Sequence[Feature]
    ttl: str | None = None
    online: bool = True
    owner: str = ""
    tags: Sequence[str] = ()
    description: str = ""
    inclusive: bool = False
    kind: ClassVar[str] = "feature_view"

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        if isinstance(self.entities, Entity):
            object.__setattr__(self, "entities", (self.entities,))
        if not self.entities or not all(isinstance(e, Entity) for e in self.entities):
            raise Invalid(f"feature view {self.name!r} needs entities=[Entity(...), ...]")
        keys = [key for entity in self.entities for key in entity.join_keys]
        shared = sorted({k for k in keys if keys.count(k) > 1})
        if shared:
            raise Invalid(
                f"feature view {self.name!r} has join key(s) {', '.join(shared)} in more than one entity; "
                "give each entity its own key columns"
            )
        if not isinstance(self.source, Source):
            raise Invalid(f"feature view {self.name!r} needs source=Source.parquet(...) or similar")
        if not self.features or not all(isinstance(f, Aggregate | Field) for f in self.features):
            raise Invalid(f"feature view {self.name!r} needs features=[Aggregate(...) or Field(...), ...]")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise Invalid(f"feature view {self.name!r} defines {', '.join(duplicates)} more than once")
        if self.ttl is not None:
            parse_duration(self.ttl)
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "tags", tuple(self.tags))

    @property
    def join_keys(self) -> tuple[str, ...]:
        """The view's key columns: the join keys of its entities, in order."""
        return tuple(key for entity in self.entities for key in entity.join_keys)

    @property
    def ttl_delta(self) -> timedelta | None:
        """The TTL as a timedelta (None: values never expire)."""
        return parse_duration(self.ttl) if self.ttl else None

    def feature(self, name: str) -> Feature:
        """The feature called ``name``; raises ``NotFound`` naming the ones that exist."""
        from openlearner.errors import NotFound

        for feature in self.features:
            if feature.name == name:
                return feature
        raise NotFound(
            f"feature view {self.name!r} has no feature {name!r}; it has "
            f"{', '.join(f.name for f in self.features)}"
        )

    def to_spec(self) -> dict[str, Any]:
        """The JSON form stored in the catalog."""
        return {
            "name": self.name,
            "entities": [e.to_spec() for e in self.entities],
            "source": self.source.to_spec(),
            "features": [f.to_spec() for f in self.features],
            "ttl": self.ttl,
            "online": self.online,
            "owner": self.owner,
            "tags": list(self.tags),
            "description": self.description,
            "inclusive": self.inclusive,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureView:
        """Rebuild from :meth:`to_spec`."""
        return cls(
            spec["name"],
            entities=[Entity.from_spec(e) for e in spec["entities"]],
            source=Source.from_spec(spec["source"]),
            features=[_feature_from_spec(f) for f in spec["features"]],
            ttl=spec.get("ttl"),
            online=spec.get("online", True),
            owner=spec.get("owner", ""),
            tags=spec.get("tags", ()),
            description=spec.get("description", ""),
            inclusive=spec.get("inclusive", False),
        )


@dataclass(frozen=True)
class FeatureService:
    """A named set of feature references that a model reads (``"view:feature"``)."""

    name: str
    features: Sequence[str]
    description: str = ""
    kind: ClassVar[str] = "feature_service"

    def __post_init__(self) -> None:
        _check_name("feature service", self.name)
        if isinstance(self.features, str) or not self.features:
            raise Invalid(f"feature service {self.name!r} needs features=['view:feature', ...]")
        refs = tuple(self.features)
        for ref in refs:
            split_ref(ref)
        if len(set(refs)) != len(refs):
            raise Invalid(f"feature service {self.name!r} lists a feature twice")
        object.__setattr__(self, "features", refs)

    @property
    def columns(self) -> list[str]:
        """The feature columns, in order, as training sets and online reads name them."""
        return [column_name(*split_ref(ref)) for ref in self.features]

    def to_spec(self) -> dict[str, Any]:
        """The JSON form stored in the catalog and with model versions."""
        return {"name": self.name, "features": list(self.features), "description": self.description}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureService:
        """Rebuild from :meth:`to_spec`."""
        return cls(spec["name"], features=spec["features"], description=spec.get("description", ""))


def flatten(objects: Iterable[object]) -> list[object]:
    """Flatten nested lists of definitions (so ``apply([user, [v1, v2]])`` works)."""
    out: list[object] = []
    for obj in objects:
        if isinstance(obj, list | tuple):
            out.extend(flatten(obj))
        else:
            out.append(obj)
    return out
