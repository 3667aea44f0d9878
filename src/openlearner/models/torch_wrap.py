"""A user's own trained PyTorch module, exported and served like any OpenLearner model."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from openlearner.errors import Invalid
from openlearner.models.nn import export_module

__all__ = ["TorchModel"]

_TASKS = ("binary", "multiclass", "regression")


class _TorchModelHead(nn.Module):
    """The module's raw output → the canonical outputs of its task."""

    def __init__(self, module: nn.Module, task: str, logits: bool) -> None:
        super().__init__()
        self.module, self.task, self.logits = module, task, logits

    def forward(self, *inputs: torch.Tensor) -> Any:
        out = self.module(*inputs)
        if not isinstance(out, torch.Tensor):
            raise Invalid(
                f"the module returned {type(out).__name__}; TorchModel needs one tensor [batch, ...]"
            )
        out = out.float()
        if self.task == "regression":
            return out.reshape(-1)
        if self.task == "binary" and (out.dim() == 1 or out.shape[1] == 1):
            score = out.reshape(-1)
            positive = torch.sigmoid(score) if self.logits else score
            return (positive >= 0.5).long(), positive
        probabilities = torch.softmax(out, dim=1) if self.logits else out
        if self.task == "binary":
            positive = probabilities[:, 1]
            return (positive >= 0.5).long(), positive
        return torch.argmax(probabilities, dim=1), probabilities


class TorchModel:
    """Wrap a trained ``torch.nn.Module`` so it exports with the parity gate and serves.

    ``task`` says what the module's output means: ``"binary"`` (one logit per row, or two
    class logits), ``"multiclass"`` (class logits) or ``"regression"`` (one value per row).
    With ``logits=False`` the module already returns probabilities. ``input_names`` name
    the module's positional inputs in the graph; rows are a numpy array (one input) or a
    dict of arrays keyed by those names; float arrays are fed as float32, integer ones as
    int64. The graph's ``label`` is the index of the class; ``classes`` names the classes in
    output order (recorded in the graph's metadata; ``predict`` returns them).

    >>> model = TorchModel(my_net, task="binary")
    >>> payload, report = openlearner.models.onnx.export(model, held_out_rows)
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        task: str = "binary",
        input_names: Sequence[str] = ("input",),
        logits: bool = True,
        classes: Sequence[Any] | None = None,
    ) -> None:
        self.module = module
        self.task = task
        self.input_names = input_names
        self.logits = logits
        self.classes = classes

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters, as scikit-learn's ``clone`` expects."""
        return {
            "module": self.module,
            "task": self.task,
            "input_names": self.input_names,
            "logits": self.logits,
            "classes": self.classes,
        }

    def _check(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise Invalid(f"TorchModel wraps a torch.nn.Module, not {type(self.module).__name__}")
        if self.task not in _TASKS:
            raise Invalid(f"task must be one of {', '.join(_TASKS)}, not {self.task!r}")
        names = list(self.input_names)
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise Invalid(f"input_names must be distinct non-empty names, not {self.input_names!r}")

    def _check_fitted(self) -> None:
        """A wrapped module comes trained; this checks the wrapping is usable."""
        self._check()

    def _classes(self, width: int) -> npt.NDArray[Any]:
        if self.classes is not None:
            classes = np.asarray(list(self.classes))
        else:
            classes = np.arange(max(width, 2), dtype=np.int64)
        if self.task == "binary" and classes.size != 2:
            raise Invalid(f"a binary model has two classes, not {classes.tolist()}")
        if self.task == "multiclass" and classes.size != width:
            raise Invalid(f"the module returns {width} class scores, but classes lists {classes.size}")
        return classes

    def _feeds(self, rows: Any) -> dict[str, np.ndarray]:
        self._check()
        names = list(self.input_names)
        if isinstance(rows, dict):
            missing = [n for n in names if n not in rows]
            if missing:
                raise Invalid(f"rows lack input(s) {', '.join(missing)}; the module takes {', '.join(names)}")
            arrays = [np.asarray(rows[n]) for n in names]
        elif len(names) == 1:
            arrays = [np.asarray(rows)]
        else:
            raise Invalid(f"the module takes {len(names)} inputs; pass rows as a dict keyed by {names}")
        feeds = {}
        for name, array in zip(names, arrays, strict=True):
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            elif array.dtype.kind in "iub":
                array = array.astype(np.int64)
            else:
                raise Invalid(f"input {name!r} must be numeric, not {array.dtype}")
            if array.ndim < 1 or array.shape[0] == 0:
                raise Invalid(f"input {name!r} has no rows")
            feeds[name] = array
        if len({a.shape[0] for a in feeds.values()}) != 1:
            raise Invalid("every input must have the same number of rows")
        return feeds

    def _head(self, feeds: dict[str, np.ndarray]) -> tuple[_TorchModelHead, npt.NDArray[Any]]:
        """The module (copied to the CPU) with its output head, and its classes."""
        module = copy.deepcopy(self.module).cpu().eval()
        with torch.no_grad():
            out = module(*[torch.from_numpy(feeds[n][:1]) for n in self.input_names])
        width = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() > 1 else 1
        classes = self._classes(width) if self.task != "regression" else np.zeros(0)
        return _TorchModelHead(module, self.task, bool(self.logits)).eval(), classes

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[Any, npt.NDArray[Any]]:
        head, classes = self._head(feeds)
        with torch.no_grad():
            out = head(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names])
        return out, classes

    def predict_proba(self, rows: Any) -> npt.NDArray[np.float64]:
        """Class probabilities ``(n, classes)`` of a classifying module."""
        if self.task == "regression":
            raise Invalid("a regression module has no class probabilities; call predict")
        (_, probabilities), _ = self._run(self._feeds(rows))
        p = probabilities.double().numpy()
        return np.column_stack([1.0 - p, p]) if self.task == "binary" else p

    def predict(self, rows: Any) -> npt.NDArray[Any]:
        """Labels of a classifying module, values of a regression module."""
        out, classes = self._run(self._feeds(rows))
        if self.task == "regression":
            return np.asarray(out.double().numpy())
        return classes[out[0].numpy()]

    # --- the export protocol (openlearner.models.onnx) ---------------------------------------

    def _output_names(self) -> list[str]:
        from openlearner.models.onnx import LABEL, PREDICTION, PROBABILITIES, PROBABILITY

        if self.task == "regression":
            return [PREDICTION]
        return [LABEL, PROBABILITY if self.task == "binary" else PROBABILITIES]

    def _onnx_graph(self, sample: Any = None) -> Any:
        if sample is None:
            raise Invalid("exporting a TorchModel needs sample rows to trace the module with")
        from openlearner.models.onnx import set_metadata

        feeds = self._feeds(sample)
        example = [torch.from_numpy(np.ascontiguousarray(feeds[n][:2])) for n in self.input_names]
        head, classes = self._head(feeds)
        graph = export_module(head, example, list(self.input_names), self._output_names())
        return set_metadata(graph, classes=classes.tolist()) if classes.size else graph

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return self._feeds(rows)

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, _ = self._run(feeds)
        names = self._output_names()
        if self.task == "regression":
            return {names[0]: out.double().numpy()}
        return {names[1]: out[1].double().numpy()}
