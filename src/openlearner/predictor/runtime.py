"""The runtime seam and its ONNX Runtime implementation (CPU, low-latency session settings)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from openlearner.errors import Corrupt
from openlearner.registry.signature import TensorSpec

__all__ = ["OnnxRuntime", "Runtime", "oip_datatype"]

_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def oip_datatype(ort_type: str) -> str:
    """The Open Inference Protocol datatype of an ONNX Runtime tensor type (``tensor(float)`` → FP32)."""
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise Corrupt(
            f"the model graph uses tensor type {ort_type}, which the predictor cannot serve"
        ) from None


def _spec(arg: Any) -> TensorSpec:
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(arg.name, oip_datatype(arg.type), dims)


class Runtime(Protocol):
    """Runs one loaded model graph."""

    def infer(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Outputs by name for inputs by name."""
        ...


class OnnxRuntime:
    """An ONNX Runtime CPU session; one intra-op thread keeps single-row latency low."""

    def __init__(self, graph: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad graphs
            raise Corrupt(f"the model graph cannot be loaded by ONNX Runtime: {exc}") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        """The graph's input tensors (OIP datatypes; -1 for a dynamic dimension)."""
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        """The graph's output tensors."""
        # The session's C++ object: InferenceSession.run checks each call's feed names against
        # the graph (ours come from it) and looks for device values (we feed numpy arrays),
        # a few microseconds a call on the hot path. Without it, the public method.
        native = getattr(self.session, "_sess", None)
        self._run = native.run if native is not None else self.session.run

    def infer(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run the graph."""
        results = self._run(self.output_names, inputs, None)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results, strict=True)}
