"""A model version loaded for serving: its graph in ONNX Runtime, what clients send, and how
that becomes the graph's feeds (a feature join, a tokenizer, or the tensors as they are)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from openlearner.errors import Corrupt, Invalid, NotFound, Unavailable
from openlearner.predictor.batching import BatchResult, BatchSettings, DynamicBatcher
from openlearner.predictor.features import FeatureJoin
from openlearner.predictor.runtime import OnnxRuntime
from openlearner.predictor.usual import UsualRoad
from openlearner.registry.signature import TOKENS, TensorSpec, text_inputs

if TYPE_CHECKING:
    from concurrent.futures import Future

    from openlearner.features.store import FeatureStore
    from openlearner.predictor.metrics import Served
    from openlearner.registry.store import ModelRegistry, ModelVersion

__all__ = ["LoadedModel", "load_model"]

log = logging.getLogger("openlearner.predictor")
Tensors = dict[str, npt.NDArray[Any]]


@dataclass
class LoadedModel:
    """A model version ready to serve: its runtime and, if it reads features, its join."""

    version: ModelVersion
    runtime: OnnxRuntime
    join: FeatureJoin | None
    inputs: list[TensorSpec]
    """The tensors a client sends: entity keys and request inputs, a text input, or graph inputs."""
    outputs: list[TensorSpec]
    """The tensors it answers with (the graph's outputs)."""
    tokenizer: Any = None
    text_input: str | None = None
    token_input: str | None = None
    batcher: DynamicBatcher | None = field(default=None, repr=False)
    counted: Served | None = field(default=None, repr=False)
    """Where the data plane counts this version's answered requests (looked up once)."""
    road: UsualRoad | None = field(init=False, repr=False)
    """How its usual request is recognised and answered (None: it has none)."""
    _datatypes: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._datatypes = {o.name: o.datatype for o in self.outputs}
        self.road = UsualRoad.of(self)

    @property
    def name(self) -> str:
        """The model's name."""
        return self.version.name

    @property
    def number(self) -> int:
        """The version number."""
        return self.version.version

    def datatype(self, output: str) -> str:
        """The OIP datatype of ``output``."""
        return self._datatypes.get(output, "FP32")

    def run(self, tensors: Tensors, rows: int) -> tuple[Tensors, npt.NDArray[Any] | None, dict[int, str]]:
        """Outputs for ``rows`` rows of client tensors, the joined matrix (if any) and rows without features."""
        matrix = None
        missing: dict[int, str] = {}
        if self.join is not None:
            joined = self.join.join(tensors, rows)
            matrix, missing = joined.matrix, joined.missing
            feeds = {self.runtime.inputs[0].name: matrix}
        elif self.tokenizer is not None:
            assert self.text_input is not None and self.token_input is not None
            feeds = {k: v for k, v in tensors.items() if k != self.text_input}
            feeds[self.token_input] = self.tokenizer.encode(tensors[self.text_input].reshape(-1))
        else:
            feeds = tensors
        return self.runtime.infer(feeds), matrix, missing

    def start(
        self,
        settings: BatchSettings,
        on_batch: Callable[[int], Any] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        """Start this version's batching queue."""
        self.batcher = DynamicBatcher(
            self.run, settings, name=f"{self.name}:{self.number}", on_batch=on_batch, arriving=arriving
        )

    def submit(self, tensors: Tensors, rows: int, *, adaptive: bool = False) -> Future[BatchResult]:
        """Queue a request on this version's batcher (started by :meth:`start`)."""
        if self.batcher is None:
            raise Unavailable(f"{self.name} version {self.number} has no batching queue; start() it first")
        return self.batcher.submit(tensors, rows, adaptive=adaptive)

    def close(self) -> None:
        """Answer what is queued, then stop (the version is being replaced or shut down)."""
        if self.batcher is not None:
            self.batcher.close()


def load_model(registry: ModelRegistry, features: FeatureStore | None, version: ModelVersion) -> LoadedModel:
    """Load ``version`` for serving; ``Corrupt``/``Unavailable`` say why it cannot be served.

    Messages name the model and the fix but never a server path: the details go to the log.
    """
    where = f"{version.name} version {version.version}"
    if version.status == "archived":
        raise NotFound(f"{where} is archived and no longer served")
    try:
        graph = registry.read_graph(version)
    except NotFound as exc:  # the model exists, so this is the server's fault, not the caller's
        log.error("%s: %s", where, exc)
        raise Corrupt(
            f"{where} cannot be served: its artifact is missing from the artifact store; "
            "restore it from a replica or register the model again"
        ) from None
    except Corrupt as exc:
        log.error("%s: %s", where, exc)
        raise Corrupt(
            f"{where} cannot be served: its artifact is corrupt (its sha256 no longer matches); "
            "restore it from a replica or register the model again"
        ) from None
    try:
        runtime = OnnxRuntime(graph)
    except Corrupt as exc:
        log.error("%s: %s", where, exc)
        raise Corrupt(f"{where} cannot be served: ONNX Runtime cannot load its graph (corrupt)") from None
    signature = version.signature
    if signature.serving is not None:
        return LoadedModel(
            version, runtime, _join(version, features), signature.serving_inputs(), runtime.outputs
        )
    metadata = getattr(version, "serving_metadata", None) or {}
    if isinstance(metadata, dict) and metadata.get("tokenizer") is not None:
        return _text_model(version, runtime, metadata)
    return LoadedModel(version, runtime, None, list(runtime.inputs), runtime.outputs)


def _join(version: ModelVersion, features: FeatureStore | None) -> FeatureJoin:
    serving = version.signature.serving
    assert serving is not None
    where = f"{version.name} version {version.version}"
    if features is None:
        raise Unavailable(
            f"model {version.name} reads the Feature Store, but this predictor was started without one"
        )
    names = dict.fromkeys(ref.split(":")[0] for ref in serving.features)
    try:
        views = {name: features.view(name) for name in names}
        return FeatureJoin(version.signature, features.online_store, views)
    except NotFound as exc:  # a view or feature it was trained on is gone from the catalog
        raise Unavailable(f"{where} cannot be served: {exc}") from None


def _text_model(version: ModelVersion, runtime: OnnxRuntime, metadata: dict[str, Any]) -> LoadedModel:
    """A model whose graph takes token ids: clients send text, the predictor tokenizes."""
    from openlearner.models.text import Tokenizer

    where = f"{version.name} version {version.version}"
    try:
        tokenizer = Tokenizer.from_dict(metadata["tokenizer"])
    except Invalid as exc:
        raise Corrupt(f"{where} cannot be served: its stored tokenizer is unreadable ({exc})") from None
    found = text_inputs(list(runtime.inputs), metadata)
    if found is None:
        raise Corrupt(f"{where} cannot be served: its graph has no int64 '{TOKENS}' input for the token ids")
    token_spec, text = found
    inputs = [TensorSpec(text, "BYTES", [-1]) if t is token_spec else t for t in runtime.inputs]
    return LoadedModel(
        version,
        runtime,
        None,
        inputs,
        runtime.outputs,
        tokenizer=tokenizer,
        text_input=text,
        token_input=token_spec.name,
    )
