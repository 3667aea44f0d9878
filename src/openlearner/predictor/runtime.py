"""The runtime seam and its ONNX Runtime implementation (CPU, low-latency session settings)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from openlearner.errors import Corrupt

__all__ = ["OnnxRuntime", "Runtime"]


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

    def infer(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run the graph."""
        results = self.session.run(self.output_names, inputs)
        return {name: np.asarray(value) for name, value in zip(self.output_names, results, strict=True)}
