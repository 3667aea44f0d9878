"""ONNX export and the parity gate: every model reaches production as a checked ONNX graph.

The canonical outputs of an exported graph (the registry and the predictor rely on them):

* binary classifiers: ``label`` (int64 ``[batch]``) and ``probability`` (float32 ``[batch]``,
  the positive class);
* multi-class classifiers: ``label`` (int64 ``[batch]``) and ``probabilities`` (float32
  ``[batch, classes]``);
* regressors: ``prediction`` (float32 ``[batch]``);
* anomaly detectors: ``label`` (int64 ``[batch]``, 1 = anomaly) and ``score`` (float32
  ``[batch]``, higher = more anomalous).

Tabular models take one float32 tensor ``input`` of shape ``[batch, features]``; models with
other inputs (token ids, images, categorical embeddings) name theirs. The batch dimension is
always dynamic. Facts the serving side needs travel in the graph's metadata (JSON values,
:func:`set_metadata`): ``classes`` (what each ``label`` index means, multi-class models) and
``negative_sampling_rate`` (down-sampled models, whose ``probability`` is re-calibrated).

A model takes part in export through three methods (the export protocol):

* ``_onnx_graph(sample) -> onnx.ModelProto`` builds the graph with the canonical outputs;
* ``_onnx_feeds(rows) -> dict[str, np.ndarray]`` turns held-out rows into the graph's inputs
  (default: ``{"input": float32 matrix}``);
* ``_parity_outputs(feeds) -> dict[str, np.ndarray]`` runs the native model on the same
  feeds and returns the outputs to compare, keyed by graph output name (default: the positive
  class's ``probability`` from ``predict_proba``).

:func:`check_parity` runs the native model and the graph on the same held-out rows — the
native model on the float32-rounded values the graph receives in serving — and reports the
largest difference over the compared outputs, and how often the two agree on the class.
Probabilities are compared absolutely; unbounded outputs (``prediction``, ``score``)
relative to their magnitude where it exceeds 1 (``|a - b| / max(1, |b|)``), as float32
holds about seven significant digits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from openlearner.errors import Invalid, ParityError
from openlearner.models.base import to_matrix

__all__ = [
    "INPUT",
    "LABEL",
    "PREDICTION",
    "PROBABILITIES",
    "PROBABILITY",
    "SCORE",
    "ParityReport",
    "anomaly_head",
    "binary_head",
    "check_parity",
    "default_feeds",
    "export",
    "lightgbm_graph",
    "linear_graph",
    "multiclass_head",
    "recalibration_head",
    "regression_head",
    "set_metadata",
    "to_onnx",
]

INPUT, LABEL, PROBABILITY = "input", "label", "probability"
PROBABILITIES, PREDICTION, SCORE = "probabilities", "prediction", "score"
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


def binary_head(model: onnx.ModelProto, probabilities: str, label: str) -> onnx.ModelProto:
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


def multiclass_head(model: onnx.ModelProto, probabilities: str, label: str) -> onnx.ModelProto:
    """Rewire a converter's outputs to the canonical ``label`` [batch] and ``probabilities`` [batch, k]."""
    graph = model.graph
    classes = _last_dim(graph, probabilities)
    for source, target in ((probabilities, PROBABILITIES), (label, LABEL)):
        if source != target:
            graph.node.append(helper.make_node("Identity", [source], [target]))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", classes]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def regression_head(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """Rewire a converter's ``[batch, 1]`` output to the canonical ``prediction`` float32 ``[batch]``."""
    graph = model.graph
    graph.initializer.append(helper.make_tensor("__flat", TensorProto.INT64, [1], [-1]))
    graph.node.append(helper.make_node("Reshape", [output, "__flat"], [PREDICTION]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PREDICTION, TensorProto.FLOAT, ["batch"]))
    onnx.checker.check_model(model)
    return model


def anomaly_head(model: onnx.ModelProto, label: str, score: str) -> onnx.ModelProto:
    """Rewire scikit-learn's outlier outputs (label -1 = outlier, ``score`` higher = more normal)
    to the canonical ``label`` (int64, 1 = anomaly) and ``score`` (float32, higher = more anomalous)."""
    graph = model.graph
    graph.initializer.extend(
        [
            helper.make_tensor("__flat_a", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("__inlier", TensorProto.INT64, [], [0]),
        ]
    )
    for node in graph.node:  # free the canonical names for the rewired outputs
        node.output[:] = [{LABEL: "__sk_label", SCORE: "__sk_score"}.get(o, o) for o in node.output]
        node.input[:] = [{LABEL: "__sk_label", SCORE: "__sk_score"}.get(i, i) for i in node.input]
    label = {LABEL: "__sk_label", SCORE: "__sk_score"}.get(label, label)
    score = {LABEL: "__sk_label", SCORE: "__sk_score"}.get(score, score)
    graph.node.extend(
        [
            helper.make_node("Reshape", [label, "__flat_a"], ["__sk_label_flat"]),
            helper.make_node("Less", ["__sk_label_flat", "__inlier"], ["__is_anomaly"]),
            helper.make_node("Cast", ["__is_anomaly"], [LABEL], to=TensorProto.INT64),
            helper.make_node("Reshape", [score, "__flat_a"], ["__sk_score_flat"]),
            helper.make_node("Neg", ["__sk_score_flat"], [SCORE]),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["batch"]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def linear_graph(coef: np.ndarray, intercept: float, name: str = "linear") -> onnx.ModelProto:
    """``probability = sigmoid(input · coef + intercept)`` and ``label = probability >= 0.5``, one graph."""
    weights = np.asarray(coef, np.float32).reshape(-1, 1)
    nodes = [
        helper.make_node("MatMul", [INPUT, "__coef"], ["__dot"]),
        helper.make_node("Add", ["__dot", "__intercept"], ["__logit"]),
        helper.make_node("Sigmoid", ["__logit"], ["__p2d"]),
        helper.make_node("Reshape", ["__p2d", "__flat"], [PROBABILITY]),
        helper.make_node("GreaterOrEqual", [PROBABILITY, "__half"], ["__positive"]),
        helper.make_node("Cast", ["__positive"], [LABEL], to=TensorProto.INT64),
    ]
    initializers = [
        helper.make_tensor("__coef", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist()),
        helper.make_tensor("__intercept", TensorProto.FLOAT, [1], [float(intercept)]),
        helper.make_tensor("__flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("__half", TensorProto.FLOAT, [], [0.5]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(PROBABILITY, TensorProto.FLOAT, ["batch"]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def recalibration_head(model: onnx.ModelProto, rate: float) -> onnx.ModelProto:
    """Undo negative down-sampling at rate ``w`` inside the graph: ``q = p / (p + (1 - p) / w)``.

    The graph's ``probability`` becomes ``q`` and ``label`` becomes ``q >= 0.5``.
    """
    if not 0.0 < rate <= 1.0:
        raise Invalid(f"the down-sampling rate must be in (0, 1], not {rate!r}")
    graph = model.graph
    renamed = {PROBABILITY: "__p_sampled", LABEL: "__label_sampled"}
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    graph.initializer.extend(
        [
            helper.make_tensor("__one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("__inv_rate", TensorProto.FLOAT, [], [1.0 / rate]),
            helper.make_tensor("__q_half", TensorProto.FLOAT, [], [0.5]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Sub", ["__one", "__p_sampled"], ["__p_neg"]),
            helper.make_node("Mul", ["__p_neg", "__inv_rate"], ["__p_neg_w"]),
            helper.make_node("Add", ["__p_sampled", "__p_neg_w"], ["__q_den"]),
            helper.make_node("Div", ["__p_sampled", "__q_den"], [PROBABILITY]),
            # q >= 0.5 as not(q < 0.5): GreaterOrEqual needs opset 12, tree converters emit 9.
            helper.make_node("Less", [PROBABILITY, "__q_half"], ["__q_negative"]),
            helper.make_node("Not", ["__q_negative"], ["__q_positive"]),
            helper.make_node("Cast", ["__q_positive"], [LABEL], to=TensorProto.INT64),
        ]
    )
    onnx.checker.check_model(model)
    return model


def set_metadata(model: onnx.ModelProto, **entries: Any) -> onnx.ModelProto:
    """Record facts about the model in the graph's metadata (values JSON-encoded), e.g. classes or a rate."""
    import json

    known = {p.key: p for p in model.metadata_props}
    for key, value in entries.items():
        text = json.dumps(value, default=str)
        if key in known:
            known[key].value = text
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=text))
    return model


def _last_dim(graph: onnx.GraphProto, name: str) -> int | str:
    for value in [*graph.output, *graph.value_info]:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[-1].HasField("dim_value"):
                return int(dims[-1].dim_value)
    return "classes"


def to_onnx(model: Any, sample: Any = None) -> onnx.ModelProto:
    """Export a fitted model to ONNX with a dynamic batch dimension and the canonical outputs."""
    check = getattr(model, "_check_fitted", None)
    if callable(check):
        check()
    build = getattr(model, "_onnx_graph", None)
    if not callable(build):
        raise Invalid(
            f"cannot export {type(model).__name__} to ONNX; export takes OpenLearner models "
            "(openlearner.models), which implement the export protocol"
        )
    graph = build(sample)
    if not isinstance(graph, onnx.ModelProto):
        raise Invalid(
            f"{type(model).__name__}._onnx_graph returned {type(graph).__name__}, not an ONNX model"
        )
    return graph


def lightgbm_graph(booster: Any, n_features: int) -> onnx.ModelProto:
    """A LightGBM booster as ONNX (onnxmltools), input ``input`` float32 ``[batch, n_features]``."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    converted: onnx.ModelProto = convert_lightgbm(
        booster,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=_OPSET,
    )
    return converted


def default_feeds(model: Any, rows: Any) -> dict[str, np.ndarray]:
    """``{"input": float32 matrix}`` from tabular rows, columns in the model's order when named."""
    names = getattr(model, "feature_names_", None)
    named = (
        hasattr(rows, "column_names") or isinstance(rows, dict) or type(rows).__module__.startswith("pandas")
    )
    matrix, _ = to_matrix(rows, names if named else None)
    return {INPUT: matrix}


def check_parity(
    model: Any, graph: onnx.ModelProto | bytes, rows: Any, tolerance: float = DEFAULT_TOLERANCE
) -> ParityReport:
    """Run the native model and the ONNX graph on ``rows`` and compare their outputs."""
    import onnxruntime as ort

    feeds_of = getattr(model, "_onnx_feeds", None)
    feeds: dict[str, np.ndarray] = feeds_of(rows) if callable(feeds_of) else default_feeds(model, rows)
    n = next(iter(feeds.values())).shape[0] if feeds else 0
    if n == 0:
        raise Invalid("the parity check needs at least one held-out row")
    payload = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else graph
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    native_of = getattr(model, "_parity_outputs", None)
    if callable(native_of):
        native: dict[str, np.ndarray] = native_of(feeds)
    else:
        native = {PROBABILITY: np.asarray(model.predict_proba(feeds[INPUT]), dtype=np.float64)[:, 1]}
    names = [o.name for o in session.get_outputs()]
    missing = [k for k in native if k not in names]
    if missing:
        raise Invalid(f"the ONNX graph lacks output(s) {', '.join(missing)}; it has {', '.join(names)}")
    produced = dict(zip(names, session.run(names, feeds), strict=True))
    worst = 0.0
    for key, expected in native.items():
        want = np.asarray(expected, np.float64)
        diff = np.abs(np.asarray(produced[key], np.float64) - want)
        if key in (PREDICTION, SCORE):
            # Unbounded outputs: float32 carries ~7 digits, so compare relative to the magnitude.
            diff = diff / np.maximum(1.0, np.abs(want))
        if diff.size and not np.isfinite(diff).all():
            worst = float("inf")
        elif diff.size:
            worst = max(worst, float(diff.max()))
    return ParityReport(
        rows=int(n),
        max_abs_diff=worst,
        class_agreement=_agreement(native, produced),
        tolerance=float(tolerance),
    )


def _agreement(native: dict[str, np.ndarray], produced: dict[str, np.ndarray]) -> float:
    """How often both sides pick the same class (1.0 where there are no classes to pick)."""
    if PROBABILITY in native:
        a, b = np.asarray(native[PROBABILITY]) >= 0.5, np.asarray(produced[PROBABILITY]) >= 0.5
        return float(np.mean(a == b))
    if PROBABILITIES in native:
        a = np.argmax(np.asarray(native[PROBABILITIES]), axis=1)
        b = np.argmax(np.asarray(produced[PROBABILITIES]), axis=1)
        return float(np.mean(a == b))
    if LABEL in native:
        return float(np.mean(np.asarray(native[LABEL]) == np.asarray(produced[LABEL])))
    if SCORE in native and LABEL in produced:  # anomaly detectors: flagged when the score is above 0
        return float(np.mean((np.asarray(native[SCORE]) > 0) == (np.asarray(produced[LABEL]) == 1)))
    return 1.0


def export(model: Any, rows: Any, tolerance: float = DEFAULT_TOLERANCE) -> tuple[bytes, ParityReport]:
    """Export to ONNX and gate on parity: the serialized graph and its report, or ``ParityError``."""
    graph = to_onnx(model, rows)
    report = check_parity(model, graph, rows, tolerance)
    if not report.passed:
        raise ParityError(f"ONNX export of {type(model).__name__} refused: {report}", report)
    return graph.SerializeToString(), report
