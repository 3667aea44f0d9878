"""What flows between operators, by reference: Parquet datasets, models, small JSON values.

Every value an operator returns is stored before the next operator sees it: a
:class:`Dataset` as Parquet and a :class:`ModelArtifact` in a pickle-free, per-family
format, both in the content-addressed artifact store; small JSON values inline in the
reference (larger ones in the store as JSON). A *ref* is the JSON dict that names one
stored value; its ``digest`` is what cache keys and lineage use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from openlearner.errors import Invalid, NotFound
from openlearner.storage.artifacts.base import ArtifactStore, open_artifact_store

__all__ = [
    "Dataset",
    "ModelArtifact",
    "ModelFormat",
    "check_value",
    "load_value",
    "register_model_format",
    "save_value",
    "type_name",
]

INLINE_LIMIT = 64 * 1024
"""JSON values up to this many bytes travel inside their reference instead of the store."""


class Dataset:
    """A table passed between operators; stored as Parquet, loaded on first use.

    Build one from an Arrow table (or anything ``pa.table`` accepts, e.g. a dict of
    columns or a pandas frame); inside operators read it with :attr:`table`.
    """

    def __init__(self, data: Any) -> None:
        if isinstance(data, pa.Table):
            self._table: pa.Table | None = data
        elif type(data).__module__.startswith("pandas"):
            self._table = pa.Table.from_pandas(data, preserve_index=False)
        else:
            try:
                self._table = pa.table(data)
            except (TypeError, ValueError, pa.ArrowException) as exc:
                raise Invalid(f"cannot make a Dataset of {type(data).__name__}: {exc}") from exc
        self._digest: str | None = None
        self._store: ArtifactStore | None = None

    @classmethod
    def _stored(cls, digest: str, store: ArtifactStore) -> Dataset:
        dataset = cls.__new__(cls)
        dataset._table, dataset._digest, dataset._store = None, digest, store
        return dataset

    @property
    def table(self) -> pa.Table:
        """The rows as an Arrow table (read from the artifact store on first access)."""
        if self._table is None:
            assert self._store is not None and self._digest is not None
            self._table = pq.read_table(io.BytesIO(self._store.get(self._digest)))
        return self._table

    @property
    def digest(self) -> str | None:
        """The sha256 of the stored Parquet bytes (None until stored)."""
        return self._digest

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return int(self.table.num_rows)

    @property
    def column_names(self) -> list[str]:
        """Column names, in order."""
        return list(self.table.column_names)

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas)."""
        return self.table.to_pandas()

    def __repr__(self) -> str:
        if self._table is None:
            return f"Dataset(digest={self._digest!r})"
        return f"Dataset({self._table.num_rows} rows × {self._table.num_columns} columns)"


@dataclass(frozen=True)
class ModelFormat:
    """How one model family is stored without pickle: ``save`` to bytes and ``load`` back."""

    name: str
    cls: str
    """``module:QualifiedName`` of the model class this format handles."""
    save: Callable[[Any], bytes]
    load: Callable[[bytes], Any]


_FORMATS: dict[str, ModelFormat] = {}


def register_model_format(
    name: str, cls: str | type, save: Callable[[Any], bytes], load: Callable[[bytes], Any]
) -> ModelFormat:
    """Teach ModelArtifact a model family: ``save(model) -> bytes`` and ``load(bytes) -> model``.

    ``cls`` is the class or its ``"module:QualifiedName"`` (a string keeps the framework
    unimported until a model of that family is stored). The bytes must not be a pickle.
    """
    path = cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}"
    fmt = ModelFormat(name, path, save, load)
    _FORMATS[name] = fmt
    return fmt


def _format_of(model: Any) -> ModelFormat:
    for klass in type(model).__mro__:
        path = f"{klass.__module__}:{klass.__qualname__}"
        for fmt in _FORMATS.values():
            if fmt.cls == path:
                return fmt
    known = ", ".join(sorted(f.cls.split(":")[1] for f in _FORMATS.values()))
    raise Invalid(
        f"no ModelArtifact format for {type(model).__qualname__}; models are stored without pickle, so "
        f"register one with openlearner.flow.register_model_format (known: {known})"
    )


def _encode_state(value: Any, where: str) -> Any:
    """A learned attribute as JSON: boosters as their model text, arrays as lists with a dtype."""
    import numpy as np

    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iufbU":
            raise Invalid(f"{where}: an array of {value.dtype} cannot be stored without pickle")
        return {"$array": value.tolist(), "dtype": value.dtype.str}
    if type(value).__name__ == "Booster" and hasattr(value, "model_to_string"):
        return {"$lightgbm": value.model_to_string()}
    if isinstance(value, list | tuple):
        return [_encode_state(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"$dict": {k: _encode_state(v, where) for k, v in value.items()}}
    raise Invalid(
        f"{where}: a {type(value).__name__} cannot be stored without pickle; register a model format"
    )


def _decode_state(value: Any) -> Any:
    import numpy as np

    if isinstance(value, list):
        return [_decode_state(v) for v in value]
    if isinstance(value, dict):
        if "$array" in value:
            return np.asarray(value["$array"], dtype=np.dtype(value["dtype"]))
        if "$lightgbm" in value:
            import lightgbm as lgb

            return lgb.Booster(model_str=value["$lightgbm"])
        return {k: _decode_state(v) for k, v in value["$dict"].items()}
    return value


def estimator_save(model: Any) -> bytes:
    """An estimator as JSON: its hyper-parameters and every learned attribute (``name_``)."""
    check = getattr(model, "_check_fitted", None)
    if check is not None:
        check()
    learned = {
        k: _encode_state(v, f"{type(model).__name__}.{k}")
        for k, v in vars(model).items()
        if k.endswith("_") and not k.startswith("_")
    }
    return json.dumps({"params": model.get_params(), "learned": learned}).encode()


def estimator_loader(cls: str) -> Callable[[bytes], Any]:
    """The inverse of :func:`estimator_save` for the class ``module:QualifiedName``."""

    def load(data: bytes) -> Any:
        from importlib import import_module

        module, _, name = cls.partition(":")
        klass = getattr(import_module(module), name)
        doc = json.loads(data)
        model = klass(**doc["params"])
        for key, value in doc["learned"].items():
            setattr(model, key, _decode_state(value))
        return model

    return load


for _name, _cls in (
    ("lightgbm-gbdt/1", "openlearner.models.gbdt:GBDTClassifier"),
    ("lightgbm-gbdt-regressor/1", "openlearner.models.gbdt:GBDTRegressor"),
):
    register_model_format(_name, _cls, estimator_save, estimator_loader(_cls))


class ModelArtifact:
    """A trained model passed between operators; stored in its family's pickle-free format."""

    def __init__(self, model: Any) -> None:
        if isinstance(model, ModelArtifact):
            raise Invalid("ModelArtifact wraps a model, not another ModelArtifact")
        self._model: Any = model
        self._format: str | None = _format_of(model).name
        self._digest: str | None = None
        self._store: ArtifactStore | None = None

    @classmethod
    def _stored(cls, digest: str, fmt: str, store: ArtifactStore) -> ModelArtifact:
        artifact = cls.__new__(cls)
        artifact._model, artifact._format, artifact._digest, artifact._store = None, fmt, digest, store
        return artifact

    @property
    def model(self) -> Any:
        """The model object (loaded from the artifact store on first access)."""
        if self._model is None:
            assert self._store is not None and self._digest is not None and self._format is not None
            fmt = _FORMATS.get(self._format)
            if fmt is None:
                raise NotFound(f"model format {self._format!r} is not registered in this process")
            self._model = fmt.load(self._store.get(self._digest))
        return self._model

    @property
    def format(self) -> str | None:
        """The registered format name the model is stored in."""
        return self._format

    @property
    def digest(self) -> str | None:
        """The sha256 of the stored bytes (None until stored)."""
        return self._digest

    def __repr__(self) -> str:
        return f"ModelArtifact(format={self._format!r}, digest={self._digest!r})"


def type_name(annotation: Any) -> str:
    """A short readable name of a type annotation."""
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("openlearner.flow.values.", "").replace("typing.", "")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` if it fits ``annotation`` (tables and models are wrapped), else raise Invalid."""
    if annotation is Any or (annotation is None and value is None):
        return value
    if _is_union(annotation):
        for option in typing.get_args(annotation):
            try:
                return check_value(value, type(None) if option is None else option, where)
            except Invalid:
                continue
        raise Invalid(f"{where} returned {type(value).__name__}, which is not {type_name(annotation)}")
    if annotation is type(None) or annotation is None:
        if value is None:
            return None
    elif annotation is Dataset:
        if isinstance(value, Dataset):
            return value
        if isinstance(value, pa.Table):
            return Dataset(value)
    elif annotation is ModelArtifact:
        if isinstance(value, ModelArtifact):
            return value
        if hasattr(value, "fit"):
            return ModelArtifact(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    else:
        origin = typing.get_origin(annotation) or annotation
        if isinstance(origin, type) and isinstance(value, origin):
            return value
    raise Invalid(f"{where} returned {type(value).__name__}, which is not {type_name(annotation)}")


def _canonical(value: Any) -> bytes:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise Invalid(
            f"cannot store a {type(value).__name__} between operators: return a Dataset, a ModelArtifact "
            f"or a JSON value (numbers, strings, lists, dicts) ({exc})"
        ) from exc


def json_digest(value: Any) -> str:
    """The digest of a JSON value (sha256 of its canonical form)."""
    return hashlib.sha256(_canonical(value)).hexdigest()


def save_value(value: Any, store: ArtifactStore) -> dict[str, Any]:
    """Store one operator output and return its ref."""
    if isinstance(value, Dataset):
        if value._digest is None or value._store is not store:
            sink = io.BytesIO()
            pq.write_table(value.table, sink)
            value._digest = store.put(sink.getvalue())
        return {"kind": "dataset", "digest": value._digest, "rows": value.num_rows}
    if isinstance(value, ModelArtifact):
        if value._digest is None or value._store is not store:
            fmt = _format_of(value.model)
            value._digest, value._format = store.put(fmt.save(value.model)), fmt.name
        return {"kind": "model", "digest": value._digest, "format": value._format}
    data = _canonical(value)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) <= INLINE_LIMIT:
        return {"kind": "json", "digest": digest, "value": value}
    store.put(data)
    return {"kind": "json", "digest": digest}


def load_value(ref: dict[str, Any], store: ArtifactStore) -> Any:
    """The value a ref names (datasets and models load lazily)."""
    kind = ref.get("kind")
    if kind == "dataset":
        return Dataset._stored(ref["digest"], store)
    if kind == "model":
        return ModelArtifact._stored(ref["digest"], ref["format"], store)
    if kind == "json":
        return ref["value"] if "value" in ref else json.loads(store.get(ref["digest"]))
    raise Invalid(f"unknown value reference {ref!r}")


def stored(ref: dict[str, Any], store: ArtifactStore) -> bool:
    """Whether the bytes a ref names are still in the store (inline JSON always is)."""
    return "value" in ref or store.exists(ref["digest"])


_OPENED: dict[tuple[int, str], ArtifactStore] = {}


def store_at(uri: str) -> ArtifactStore:
    """The artifact store at ``uri`` (workers open it from the URI they are given).

    Opened once per process and URI: a worker running many operators (a Ray worker, a
    pool process) reuses its store, and with it an S3 client, rather than opening one per
    operator. Keyed by process id, so a forked worker opens its own.
    """
    key = (os.getpid(), uri)
    store = _OPENED.get(key)
    if store is None:
        store = _OPENED[key] = open_artifact_store(uri)
    return store
