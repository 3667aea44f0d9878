"""The training loop every OpenLearner PyTorch classifier shares, and their common base class.

One loop for every network: mini-batches shuffled by a seeded generator, Adam, a
validation split (or an explicit ``eval_set``) with early stopping that restores the best
weights, and one :class:`EpochReport` per epoch sent to an optional callback and to the
``openlearner.models.nn`` logger (DEBUG, or INFO with ``verbose=True``; silent by default).

The device is chosen once per fit: ``device="auto"`` trains on CUDA when a GPU is present
and on the CPU otherwise, with the same code. The seed fixes the initial weights, the
split, the batch order and dropout, so CPU runs are reproducible.

A :class:`TorchClassifier` subclass only says how its rows become tensors and which
network to build; fitting, prediction, class handling and ONNX export (the protocol of
:mod:`openlearner.models.onnx`) live here.
"""

from __future__ import annotations

import copy
import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from openlearner.errors import Invalid
from openlearner.models.base import Classifier, NotFittedError, to_class_labels

__all__ = [
    "EpochReport",
    "ProgressCallback",
    "TorchClassifier",
    "TrainingResult",
    "TrainingSettings",
    "export_module",
    "select_device",
    "train_network",
]

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


@dataclass(frozen=True)
class EpochReport:
    """Progress after one epoch: losses are mean cross-entropy (``valid_loss`` None without validation)."""

    epoch: int
    epochs: int
    train_loss: float
    valid_loss: float | None
    best_epoch: int
    seconds: float
    device: str


ProgressCallback = Callable[[EpochReport], None]


@dataclass(frozen=True)
class TrainingSettings:
    """How :func:`train_network` trains (the shared hyper-parameters of the torch families)."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    validation_fraction: float = 0.1
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    verbose: bool = False

    def validate(self) -> None:
        """Raise ``Invalid`` naming the first setting out of range."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise Invalid(f"epochs must be a positive integer, not {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise Invalid(f"batch_size must be a positive integer, not {self.batch_size!r}")
        if not float(self.learning_rate) > 0:
            raise Invalid(f"learning_rate must be positive, not {self.learning_rate!r}")
        if not float(self.weight_decay) >= 0:
            raise Invalid(f"weight_decay must be >= 0, not {self.weight_decay!r}")
        if not 0 <= float(self.validation_fraction) < 1:
            raise Invalid(
                f"validation_fraction must be in [0, 1), not {self.validation_fraction!r} "
                "(0 trains on every row without early stopping)"
            )
        if not isinstance(self.patience, int) or self.patience < 1:
            raise Invalid(f"patience must be a positive integer, not {self.patience!r}")
        select_device(self.device)


@dataclass
class TrainingResult:
    """What :func:`train_network` did: per-epoch reports, the epoch kept, whether it stopped early."""

    history: list[EpochReport] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    device: str = "cpu"


def select_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when a GPU is present, else the CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as named."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise Invalid(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise Invalid(
            f"device {device!r} asked for, but no CUDA GPU is available; use device='auto' or 'cpu'"
        )
    if chosen.type not in ("cpu", "cuda"):
        raise Invalid(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}")
    return chosen


def _split(
    n: int, fraction: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    order = rng.permutation(n)
    n_valid = round(n * fraction) if fraction > 0 else 0
    if fraction > 0:
        n_valid = max(1, n_valid)
    if n - n_valid < 1:
        raise Invalid(
            f"{n} row(s) leave nothing to train on after a {fraction:.0%} validation split; "
            "pass more rows or validation_fraction=0"
        )
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def _tensors(arrays: Sequence[np.ndarray], rows: Any, device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a[rows])).to(device) for a in arrays]


def _mean_loss(
    network: nn.Module, inputs: list[torch.Tensor], targets: torch.Tensor, batch_size: int
) -> float:
    network.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, targets.shape[0], batch_size):
            part = [t[start : start + batch_size] for t in inputs]
            logits = network(*part)
            loss = nn.functional.cross_entropy(logits, targets[start : start + batch_size], reduction="sum")
            total += float(loss)
    return total / max(1, targets.shape[0])


def train_network(
    network: nn.Module,
    inputs: Sequence[np.ndarray],
    targets: npt.NDArray[np.int64],
    settings: TrainingSettings,
    *,
    validation: tuple[Sequence[np.ndarray], npt.NDArray[np.int64]] | None = None,
    progress: ProgressCallback | None = None,
) -> TrainingResult:
    """Train ``network`` (logits ``[batch, classes]``) with cross-entropy; returns what happened.

    ``inputs`` are the network's positional inputs, one array per input, rows first. Without
    ``validation`` a ``settings.validation_fraction`` of the rows is held out for early
    stopping; the weights of the best validation epoch are restored at the end.
    """
    settings.validate()
    if not inputs or any(a.shape[0] != targets.shape[0] for a in inputs):
        raise Invalid("train_network needs at least one input array, each with one row per target")
    device = select_device(settings.device)
    rng = np.random.default_rng(settings.seed)
    n = targets.shape[0]
    if validation is None:
        train_rows, valid_rows = _split(n, float(settings.validation_fraction), rng)
        train_x = _tensors(inputs, train_rows, device)
        train_y = torch.from_numpy(targets[train_rows]).to(device)
        valid_x = _tensors(inputs, valid_rows, device) if valid_rows.size else None
        valid_y = torch.from_numpy(targets[valid_rows]).to(device) if valid_rows.size else None
    else:
        all_rows = np.arange(n)
        train_x, train_y = _tensors(inputs, all_rows, device), torch.from_numpy(targets).to(device)
        valid_x = _tensors(validation[0], np.arange(validation[1].shape[0]), device)
        valid_y = torch.from_numpy(validation[1]).to(device)
    network.to(device)
    optimizer = torch.optim.Adam(
        network.parameters(), lr=float(settings.learning_rate), weight_decay=float(settings.weight_decay)
    )
    shuffle = torch.Generator().manual_seed(settings.seed)
    result = TrainingResult(device=str(device))
    best_loss, best_state, waited = float("inf"), None, 0
    log_level = logging.INFO if settings.verbose else logging.DEBUG
    n_train = train_y.shape[0]
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        network.train()
        order = torch.randperm(n_train, generator=shuffle).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, n_train, settings.batch_size):
            rows = order[start : start + settings.batch_size]
            logits = network(*[t[rows] for t in train_x])
            loss = nn.functional.cross_entropy(logits, train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * rows.shape[0]
        train_loss = float(total) / n_train
        if not np.isfinite(train_loss):
            raise Invalid(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower learning_rate "
                "or scale the inputs"
            )
        valid_loss = None
        if valid_x is not None and valid_y is not None:
            valid_loss = _mean_loss(network, valid_x, valid_y, max(settings.batch_size, 1024))
            if valid_loss < best_loss - 1e-7:
                best_loss, best_state, waited = valid_loss, copy.deepcopy(network.state_dict()), 0
                result.best_epoch = epoch
            else:
                waited += 1
        else:
            result.best_epoch = epoch
        report = EpochReport(
            epoch=epoch,
            epochs=settings.epochs,
            train_loss=train_loss,
            valid_loss=valid_loss,
            best_epoch=result.best_epoch,
            seconds=time.perf_counter() - started,
            device=str(device),
        )
        result.history.append(report)
        logger.log(
            log_level,
            "epoch %d/%d: train loss %.4f, validation loss %s (best epoch %d), %.2f s on %s",
            epoch,
            settings.epochs,
            train_loss,
            "—" if valid_loss is None else f"{valid_loss:.4f}",
            result.best_epoch,
            report.seconds,
            device,
        )
        if progress is not None:
            progress(report)
        if waited >= settings.patience:
            result.stopped_early = True
            break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return result


class _ClassifierHead(nn.Module):
    """A network's logits → the canonical outputs: ``label`` (index into ``classes_``) and probabilities."""

    def __init__(self, network: nn.Module, binary: bool) -> None:
        super().__init__()
        self.network = network
        self.binary = binary

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.network(*inputs), dim=1)
        if self.binary:
            positive = probabilities[:, 1]
            return (positive >= 0.5).long(), positive
        return torch.argmax(probabilities, dim=1), probabilities


def export_module(
    module: nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> Any:
    """``module`` as an ONNX model (legacy TorchScript exporter) with every batch dimension dynamic."""
    import onnx

    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example),
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted too
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    return graph


class TorchClassifier(Classifier):
    """Base of the PyTorch classifiers: binary or multi-class, labels of any type (ints, strings).

    Subclasses set ``_input_names`` (the exported graph's inputs) and implement
    ``_learn_inputs(X)`` (learn preprocessing from training rows), ``_feeds(X)`` (rows →
    the graph's input arrays, validated) and ``_build(inputs, n_classes)`` (the network,
    taking the arrays of ``_network_inputs`` positionally and returning logits).
    """

    _input_names: tuple[str, ...] = ("input",)

    # Set by each subclass's __init__ (the shared hyper-parameters).
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    validation_fraction: float
    patience: int
    seed: int
    device: str
    verbose: bool

    classes_: npt.NDArray[Any]
    network_: nn.Module
    history_: list[EpochReport]
    best_epoch_: int
    stopped_early_: bool
    device_: str

    # --- what subclasses provide -------------------------------------------------------------

    def _learn_inputs(self, X: Any) -> None:
        raise NotImplementedError

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _build(self, inputs: list[np.ndarray], n_classes: int) -> nn.Module:
        raise NotImplementedError

    def _network_inputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The network's positional inputs from the graph's feeds (default: the feeds in order)."""
        return [feeds[name] for name in self._input_names]

    def _validate(self) -> None:
        """Check the family's own hyper-parameters (the shared ones are checked by the loop)."""

    # --- the estimator contract --------------------------------------------------------------

    def _settings(self) -> TrainingSettings:
        return TrainingSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            validation_fraction=self.validation_fraction,
            patience=self.patience,
            seed=self.seed,
            device=self.device,
            verbose=self.verbose,
        )

    def _forget(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        eval_set: tuple[Any, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> TorchClassifier:
        """Train on rows ``X`` and integer class labels ``y``; returns self.

        With ``eval_set=(X_valid, y_valid)`` early stopping watches those rows instead of a
        split of ``X``. ``progress`` is called with an :class:`EpochReport` after each epoch.
        """
        settings = self._settings()
        settings.validate()
        self._validate()
        self._forget()  # a failed fit leaves an unfitted model, never a mix of old and new state
        try:
            self._learn_inputs(X)
            feeds = self._feeds(X)
            n = next(iter(feeds.values())).shape[0]
            targets, classes = to_class_labels(y, n)
            inputs = self._network_inputs(feeds)
            validation = None
            if eval_set is not None:
                valid_feeds = self._feeds(eval_set[0])
                valid_n = next(iter(valid_feeds.values())).shape[0]
                if valid_n == 0:
                    raise Invalid("eval_set has no rows; pass held-out rows or leave eval_set out")
                valid_targets, _ = to_class_labels(eval_set[1], valid_n, classes.tolist())
                validation = (self._network_inputs(valid_feeds), valid_targets)
            with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
                torch.manual_seed(self.seed)
                network = self._build(inputs, int(classes.size))
                result = train_network(
                    network, inputs, targets, settings, validation=validation, progress=progress
                )
        except BaseException:
            self._forget()
            raise
        self.classes_ = classes
        self.network_ = network
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.stopped_early_ = result.stopped_early
        self.device_ = result.device
        return self

    def _probabilities(
        self, inputs: list[np.ndarray], network: nn.Module | None = None
    ) -> npt.NDArray[np.float64]:
        network = self.network_ if network is None else network
        device = next(network.parameters()).device
        network.eval()
        n = inputs[0].shape[0] if inputs else 0
        parts = []
        with torch.no_grad():
            for start in range(0, n, 4096):
                batch = [
                    torch.from_numpy(np.ascontiguousarray(a[start : start + 4096])).to(device) for a in inputs
                ]
                parts.append(torch.softmax(network(*batch), dim=1).float().cpu().numpy())
        if not parts:
            return np.empty((0, self.classes_.size), np.float64)
        return np.concatenate(parts).astype(np.float64)

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Class probabilities, shape ``(n, len(classes_))``, columns in ``classes_`` order."""
        self._check_fitted()
        return self._probabilities(self._network_inputs(self._feeds(X)))

    def predict(self, X: Any) -> npt.NDArray[Any]:
        """The predicted class of each row (binary: the second class when its probability ≥ 0.5)."""
        probabilities = self.predict_proba(X)
        if self.classes_.size == 2:
            return self.classes_[(probabilities[:, 1] >= 0.5).astype(np.int64)]
        return self.classes_[np.argmax(probabilities, axis=1)]

    # --- the export protocol (openlearner.models.onnx) ---------------------------------------

    def _output_names(self) -> tuple[str, str]:
        from openlearner.models.onnx import LABEL, PROBABILITIES, PROBABILITY

        return (LABEL, PROBABILITY if self.classes_.size == 2 else PROBABILITIES)

    def _onnx_graph(self, sample: Any = None) -> Any:
        """The network plus softmax and class head, exported with a dynamic batch dimension.

        ``label`` is the index into ``classes_`` (recorded in the graph's ``classes`` metadata).
        """
        from openlearner.models.onnx import set_metadata

        self._check_fitted()
        network = copy.deepcopy(self.network_).cpu().eval()
        head = _ClassifierHead(network, self.classes_.size == 2).eval()
        example = self._example_inputs(sample)
        graph = export_module(head, example, self._input_names, self._output_names())
        return set_metadata(graph, classes=self.classes_.tolist())

    def _example_inputs(self, sample: Any) -> list[torch.Tensor]:
        """Two rows for tracing: from ``sample`` when given, else zeros of the learned shapes."""
        if sample is not None:
            inputs = self._network_inputs(self._feeds(sample))
            if inputs[0].shape[0] >= 2:
                return [torch.from_numpy(np.ascontiguousarray(a[:2])) for a in inputs]
        return [torch.zeros((2, *shape), dtype=dtype) for shape, dtype in self._row_specs()]

    def _row_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shape (without the batch) and dtype of each network input."""
        raise NotImplementedError

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return self._feeds(rows)

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The CPU copy the graph was exported from: GPU kernels (TF32 convolutions) round
        # differently, which says nothing about whether the export is faithful.
        network = copy.deepcopy(self.network_).cpu()
        probabilities = self._probabilities(self._network_inputs(feeds), network)
        name = self._output_names()[1]
        return {name: probabilities[:, 1] if self.classes_.size == 2 else probabilities}
