"""The transport-free data plane: model resolution, validation, feature join and inference.

REST (and later gRPC) are thin adapters over :class:`DataPlane`; library mode calls it
directly. Models are addressed by name and a version number or alias (default
``production``); an alias is re-resolved against the registry at most once per
``alias_refresh`` seconds, so the hot path stays in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Corrupt, Invalid, NotFound, Unavailable
from openlearner.models.onnx import INPUT
from openlearner.predictor.features import FeatureJoin
from openlearner.predictor.protocol import (
    DATATYPES,
    MAX_BATCH,
    InferenceRequest,
    InferenceResponse,
    InferOutput,
)
from openlearner.predictor.runtime import OnnxRuntime
from openlearner.registry.signature import TensorSpec

if TYPE_CHECKING:
    from openlearner.features.store import FeatureStore
    from openlearner.registry.store import ModelRegistry, ModelVersion

__all__ = ["DEFAULT_ALIAS", "DataPlane", "LoadedModel"]

log = logging.getLogger("openlearner.predictor")
DEFAULT_ALIAS = "production"
MAX_VERSION = 2**63 - 1
_OUTPUT_TYPES = {"label": "INT64", "probability": "FP32"}


@dataclass
class LoadedModel:
    """A model version ready to serve: its runtime and, if it reads features, its join."""

    version: ModelVersion
    runtime: OnnxRuntime
    join: FeatureJoin | None

    @property
    def inputs(self) -> list[TensorSpec]:
        """The tensors a client sends."""
        return self.version.signature.serving_inputs()


class DataPlane:
    """Serves every registered model by name and version or alias."""

    def __init__(
        self, registry: ModelRegistry, features: FeatureStore | None = None, *, alias_refresh: float = 1.0
    ) -> None:
        self.registry = registry
        self.features = features
        self.alias_refresh = alias_refresh
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._aliases: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

    # -- resolution ------------------------------------------------------------------------
    def _version_number(self, name: str, ref: str | None) -> int:
        ref = ref or DEFAULT_ALIAS
        if ref.isascii() and ref.isdigit():  # not str.isdigit alone: it takes '²' and other non-ASCII digits
            number = int(ref)
            if number > MAX_VERSION:  # beyond any stored version, and beyond what the database can compare
                known = ", ".join(str(v.version) for v in self.registry.versions(name))
                raise NotFound(f"model {name!r} has no version {ref}; versions: {known}")
            return number
        cached = self._aliases.get((name, ref))
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.alias_refresh:
            return cached[0]
        version = self.registry.get(name, alias=ref).version
        self._aliases[(name, ref)] = (version, now)
        return version

    def warm(self, name: str, ref: str | None = None) -> bool:
        """Whether serving ``name`` at ``ref`` needs no registry query and no loading right now."""
        ref = ref or DEFAULT_ALIAS
        if ref.isascii() and ref.isdigit():
            return (name, int(ref)) in self._loaded
        cached = self._aliases.get((name, ref))
        return (
            cached is not None
            and time.monotonic() - cached[1] < self.alias_refresh
            and (name, cached[0]) in self._loaded
        )

    def model(self, name: str, ref: str | None = None) -> LoadedModel:
        """The loaded model for ``name`` at version number or alias ``ref`` (default production)."""
        number = self._version_number(name, ref)
        loaded = self._loaded.get((name, number))
        if loaded is not None:
            return loaded
        with self._lock:
            loaded = self._loaded.get((name, number))
            if loaded is None:
                loaded = self._load(self.registry.get(name, version=number))
                self._loaded[(name, number)] = loaded
        return loaded

    def _load(self, version: ModelVersion) -> LoadedModel:
        if version.status == "archived":
            raise NotFound(f"{version.name} version {version.version} is archived and no longer served")
        try:
            graph = self.registry.read_graph(version)
        except NotFound as exc:  # the model exists, so this is the server's fault, not the caller's
            raise Corrupt(f"{version.name} version {version.version} cannot be served: {exc}") from None
        runtime = OnnxRuntime(graph)
        join = None
        if version.signature.serving is not None:
            if self.features is None:
                raise Unavailable(
                    f"model {version.name} reads the Feature Store, but this predictor was started without one"
                )
            names = dict.fromkeys(ref.split(":")[0] for ref in version.signature.serving.features)
            try:
                views = {name: self.features.view(name) for name in names}
                join = FeatureJoin(version.signature, self.features.online_store, views)
            except NotFound as exc:  # a view or feature it was trained on is gone from the catalog
                raise Unavailable(
                    f"{version.name} version {version.version} cannot be served: {exc}"
                ) from None
        return LoadedModel(version, runtime, join)

    def preload(self, alias: str = DEFAULT_ALIAS) -> list[str]:
        """Load every model's ``alias`` version now; returns what was loaded.

        Models without the alias are skipped, and so are models this predictor cannot serve
        (a corrupt or missing graph, a Feature Store model without a Feature Store): their
        requests answer 503 instead of keeping every other model from being served.
        """
        loaded = []
        for name in self.registry.models():
            try:
                model = self.model(name, alias)
            except NotFound:
                continue
            except (Unavailable, Corrupt) as exc:
                log.error("not serving %s: %s", name, exc)
                continue
            loaded.append(f"{name}:{model.version.version}")
        return loaded

    # -- metadata --------------------------------------------------------------------------
    @staticmethod
    def server_metadata() -> dict[str, Any]:
        """``GET /v2``."""
        from openlearner import __version__

        return {"name": "openlearner", "version": __version__, "extensions": []}

    def model_metadata(self, name: str, ref: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{ref}]``: the serving signature."""
        model = self.model(name, ref)
        versions = [str(v.version) for v in self.registry.versions(name) if v.status != "archived"]
        sig = model.version.signature
        return {
            "name": name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor(t) for t in model.inputs],
            "outputs": [_tensor(t) for t in sig.outputs],
        }

    # -- inference -------------------------------------------------------------------------
    def infer(self, name: str, ref: str | None, request: InferenceRequest) -> InferenceResponse:
        """Validate the request against the serving signature, join features, run the model."""
        model = self.model(name, ref)
        tensors, rows = _check_inputs(model.inputs, request)
        matrix = model.join.assemble(tensors, rows) if model.join is not None else tensors[INPUT]
        outputs = model.runtime.infer({INPUT: matrix.astype(np.float32, copy=False)})
        wanted = request.outputs or list(outputs)
        unknown = [o for o in wanted if o not in outputs]
        if unknown:
            raise Invalid(f"unknown output(s) {', '.join(unknown)}; this model gives {', '.join(outputs)}")
        return InferenceResponse(
            model_name=name,
            model_version=str(model.version.version),
            id=request.id,
            outputs=[
                InferOutput(o, _OUTPUT_TYPES.get(o, "FP32"), list(outputs[o].shape), outputs[o])
                for o in wanted
            ],
        )


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}


def _check_inputs(
    expected: list[TensorSpec], request: InferenceRequest
) -> tuple[dict[str, npt.NDArray[Any]], int]:
    """Match request tensors to the signature by name, datatype and shape; return them and the batch size."""
    given = {i.name: i for i in request.inputs}
    wanted = {t.name for t in expected}

    def signature() -> str:  # formatted only for an error message, not on every request
        return ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in expected)

    unknown = sorted(set(given) - wanted)
    missing = [t.name for t in expected if t.name not in given]
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown input(s) {', '.join(unknown)}")
        raise Invalid(f"{'; '.join(problems)}; the model expects: {signature()}")
    tensors: dict[str, npt.NDArray[Any]] = {}
    rows: int | None = None
    for spec in expected:
        tensor = given[spec.name]
        if tensor.datatype != spec.datatype:
            raise Invalid(
                f"input {spec.name!r} is {tensor.datatype} but the model expects {spec.datatype}; signature: {signature()}"
            )
        shape = tensor.shape
        if len(spec.shape) == 1:
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise Invalid(f"input {spec.name!r} has shape {shape}; expected [batch] or [batch, 1]")
            data = tensor.data.reshape(-1)
        else:
            if len(shape) != len(spec.shape) or any(
                s != -1 and s != d for s, d in zip(spec.shape, shape, strict=True)
            ):
                raise Invalid(f"input {spec.name!r} has shape {shape}; expected {spec.shape}")
            data = tensor.data
        if rows is not None and data.shape[0] != rows:
            raise Invalid(f"inputs disagree on the batch size ({rows} vs {data.shape[0]} for {spec.name!r})")
        rows = int(data.shape[0])
        tensors[spec.name] = data.astype(DATATYPES[spec.datatype], copy=False)
    assert rows is not None
    if rows == 0:
        raise Invalid("the batch is empty; send at least one row")
    if rows > MAX_BATCH:
        raise Invalid(f"a request may carry at most {MAX_BATCH} rows, not {rows}")
    return tensors, rows
