"""ONNX export and the parity gate: every model reaches production as a checked ONNX graph.

Exported classifiers take one float32 tensor ``input`` of shape ``[batch, features]`` and
answer ``label`` (int64 ``[batch]``) and ``probability`` (float32 ``[batch]``, the positive
class); the batch dimension is dynamic. :func:`check_parity` runs the native model and the
graph on the same held-out rows — the native model on the float32-rounded rows the graph
receives in serving — and reports the largest probability difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from openlearner.errors import Invalid, ParityError
from openlearner.models.base import Classifier, to_matrix

__all__ = ["INPUT", "LABEL", "PROBABILITY", "ParityReport", "check_parity", "export", "to_onnx"]

INPUT, LABEL, PROBABILITY = "input", "label", "probability"
DEFAULT_TOLERANCE = 1e-4
_OPSET = 15  # the newest opset onnxmltools converts LightGBM to


@dataclass(frozen=True)
class ParityReport:
    """How closely an ONNX graph reproduces its native model on held-out rows."""

    rows: int
    max_abs_diff: float
    class_agreement: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the largest difference is within the tolerance."""
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored with the model version)."""
        return {**asdict(self), "passed": self.passed}

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity {verdict}: max |Δp| = {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}) "
            f"over {self.rows} rows, class agreement {self.class_agreement:.4%}"
        )


def _binary_head(model: onnx.ModelProto, probabilities: str, label: str) -> onnx.ModelProto:
    """Rewire a converter's outputs to the canonical ``label`` and ``probability`` [batch]."""
    graph = model.graph
    graph.initializer.append(helper.make_tensor("__positive_class", TensorProto.INT64, [], [1]))
    graph.node.append(helper.make_node("Gather", [probabilities, "__positive_class"], [PROBABILITY], axis=1))
    if label != LABEL:
        graph.node.append(helper.make_node("Identity", [label], [LABEL]))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(PROBABILITY, TensorProto.FLOAT, ["batch"]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def to_onnx(model: Any, sample: Any = None) -> onnx.ModelProto:
    """Export a fitted OpenLearner model to ONNX with a dynamic batch dimension."""
    from openlearner.models.gbdt import GBDTClassifier

    if isinstance(model, Classifier):
        model._check_fitted()
    if isinstance(model, GBDTClassifier):
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        n_features = len(model.feature_names_)
        converted = convert_lightgbm(
            model.booster_,
            initial_types=[(INPUT, FloatTensorType([None, n_features]))],
            zipmap=False,
            target_opset=_OPSET,
        )
        outputs = [o.name for o in converted.graph.output]
        return _binary_head(converted, probabilities=outputs[1], label=outputs[0])
    raise Invalid(f"cannot export {type(model).__name__} to ONNX yet; supported: GBDTClassifier")


def check_parity(
    model: Any, graph: onnx.ModelProto | bytes, rows: Any, tolerance: float = DEFAULT_TOLERANCE
) -> ParityReport:
    """Run the native model and the ONNX graph on ``rows`` and compare probabilities."""
    import onnxruntime as ort

    names = getattr(model, "feature_names_", None)
    matrix, _ = to_matrix(rows, names if hasattr(rows, "column_names") or isinstance(rows, dict) else None)
    if matrix.shape[0] == 0:
        raise Invalid("the parity check needs at least one held-out row")
    payload = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else graph
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    onnx_p = session.run([PROBABILITY], {INPUT: matrix})[0].astype(np.float64)
    native_p = np.asarray(model.predict_proba(matrix), dtype=np.float64)[:, 1]
    diff = np.abs(onnx_p - native_p)
    return ParityReport(
        rows=int(matrix.shape[0]),
        max_abs_diff=float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"),
        class_agreement=float(np.mean((onnx_p >= 0.5) == (native_p >= 0.5))),
        tolerance=float(tolerance),
    )


def export(model: Any, rows: Any, tolerance: float = DEFAULT_TOLERANCE) -> tuple[bytes, ParityReport]:
    """Export to ONNX and gate on parity: the serialized graph and its report, or ``ParityError``."""
    graph = to_onnx(model, rows)
    report = check_parity(model, graph, rows, tolerance)
    if not report.passed:
        raise ParityError(f"ONNX export of {type(model).__name__} refused: {report}", report)
    return graph.SerializeToString(), report
