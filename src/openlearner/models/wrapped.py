"""Bring your own model: wrap a scikit-learn or LightGBM model so it exports like OpenLearner's.

``wrap(estimator)`` returns an object that keeps the estimator contract (``fit`` delegates
to the estimator), has ``feature_names_`` and implements the export protocol, so
:func:`openlearner.models.onnx.export` and the registry take it. What it exports is decided
by what the estimator is:

* a classifier: ``label`` (the index into ``classes_``) and ``probability`` (two classes)
  or ``probabilities`` (more);
* a regressor: ``prediction``;
* an outlier detector (e.g. ``IsolationForest``): ``label`` (1 = anomaly) and ``score``.

scikit-learn estimators and pipelines are converted with skl2onnx, LightGBM models
(``Booster``, ``LGBMClassifier``, ``LGBMRegressor``) with onnxmltools. Estimators the
converters do not know are refused with the converter's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import Estimator, is_table, to_class_labels, to_matrix

__all__ = ["WrappedModel", "wrap"]

_KINDS = ("binary", "multiclass", "regression", "anomaly")


class WrappedModel(Estimator):
    """A user's scikit-learn or LightGBM model behind OpenLearner's export protocol."""

    def __init__(self, estimator: Any, *, feature_names: Sequence[str] | None = None) -> None:
        self.estimator = estimator
        self.feature_names = feature_names

    # -- the estimator contract ----------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> WrappedModel:
        """Fit the wrapped estimator on ``X`` (and ``y``), then record its features; returns self."""
        from sklearn.base import is_classifier

        if _is_booster(self.estimator):
            raise Invalid("a LightGBM Booster is already trained; wrap it as it is, without fit")
        matrix, names = to_matrix(X, self.feature_names if is_table(X) else None)
        if matrix.shape[0] == 0:
            raise Invalid("there are no rows to learn from; pass at least one row")
        target = None if y is None else np.asarray(y)
        if target is not None and is_classifier(self.estimator):
            to_class_labels(target, matrix.shape[0])  # at least two classes, one label per row
        try:
            if target is None:
                self.estimator.fit(matrix, **fit_params)
            else:
                self.estimator.fit(matrix, target, **fit_params)
        except ValueError as exc:
            raise Invalid(f"{type(self.estimator).__name__} refused the training data: {exc}") from exc
        self._adopt(list(self.feature_names) if self.feature_names is not None else names)
        return self

    def _adopt(self, names: list[str] | None) -> None:
        """Record the kind and feature names of an already fitted estimator."""
        self.kind_ = _kind(self.estimator)
        count = _feature_count(self.estimator)
        if names is None:
            names = list(self.feature_names) if self.feature_names is not None else None
        if names is None:
            names = [f"f{i}" for i in range(count)]
        if len(names) != count:
            raise Invalid(f"{len(names)} feature names for an estimator fitted on {count} features")
        self.feature_names_ = names
        if self.kind_ in ("binary", "multiclass"):
            self.classes_ = np.asarray(_classes(self.estimator))

    def _native(self, X: Any) -> npt.NDArray[np.float32]:
        return self._rows(X, allow_nan=True)

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Class probabilities of a wrapped classifier, shape (n, classes)."""
        self._check_fitted()
        if self.kind_ not in ("binary", "multiclass"):
            raise Invalid(f"the wrapped {type(self.estimator).__name__} is not a classifier")
        matrix = self._native(X)
        if _is_booster(self.estimator):
            p = np.asarray(self.estimator.predict(matrix), np.float64)
            return p if p.ndim == 2 else np.column_stack([1.0 - p, p])
        return np.asarray(self.estimator.predict_proba(matrix), np.float64)

    def predict(self, X: Any) -> npt.NDArray[Any]:
        """The wrapped estimator's prediction (for a detector: 1 = anomaly, 0 = normal)."""
        self._check_fitted()
        if self.kind_ == "anomaly":
            return (self.score_samples(X) > 0).astype(np.int64)
        if self.kind_ in ("binary", "multiclass"):
            return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])
        return np.asarray(self.estimator.predict(self._native(X)), np.float64).ravel()

    def score_samples(self, X: Any) -> npt.NDArray[np.float64]:
        """A wrapped outlier detector's anomaly score: higher is more anomalous, above 0 flagged."""
        self._check_fitted()
        if self.kind_ != "anomaly":
            raise Invalid(f"the wrapped {type(self.estimator).__name__} is not an outlier detector")
        return -np.asarray(self.estimator.decision_function(self._native(X)), np.float64)

    # -- the export protocol ---------------------------------------------------------------
    def _onnx_graph(self, sample: Any = None) -> Any:
        from openlearner.models import onnx as ox

        self._check_fitted()
        from sklearn.ensemble import IsolationForest as SkIsolationForest

        if isinstance(self.estimator, SkIsolationForest) and self.estimator._max_features == len(
            self.feature_names_
        ):
            from openlearner.models.anomaly import _forest_graph

            return _forest_graph(self.estimator, len(self.feature_names_))
        converted = _convert(self.estimator, len(self.feature_names_))
        outputs = [o.name for o in converted.graph.output]
        if self.kind_ == "regression":
            return ox.regression_head(converted, outputs[0])
        if self.kind_ == "anomaly":
            return ox.anomaly_head(converted, label=outputs[0], score=outputs[1])
        label = _argmax_label(converted, outputs[1])
        if self.kind_ == "binary":
            return ox.binary_head(converted, probabilities=outputs[1], label=label)
        graph = ox.multiclass_head(converted, probabilities=outputs[1], label=label)
        return ox.set_metadata(graph, classes=self.classes_.tolist())

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return {"input": self._native(rows)}

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        X = feeds["input"]
        if self.kind_ == "regression":
            return {"prediction": self.predict(X)}
        if self.kind_ == "anomaly":
            return {"score": self.score_samples(X)}
        proba = self.predict_proba(X)
        return {"probability": proba[:, 1]} if self.kind_ == "binary" else {"probabilities": proba}


def wrap(estimator: Any, *, feature_names: Sequence[str] | None = None, **torch_options: Any) -> Any:
    """Wrap a scikit-learn or LightGBM model (fitted or not) so it can be exported and registered.

    ``feature_names`` names the input columns, in the order the estimator was fitted on.
    A trained ``torch.nn.Module`` is handed to :class:`openlearner.models.torch_wrap.TorchModel`
    with ``torch_options`` (``task``, ``input_names``, ``logits``, ``classes``).
    """
    if isinstance(estimator, WrappedModel):
        return estimator
    if any(c.__module__.startswith("torch.nn") for c in type(estimator).__mro__):
        from openlearner.models.torch_wrap import TorchModel

        return TorchModel(estimator, **torch_options)
    if torch_options:
        raise Invalid(f"unknown option(s) {', '.join(torch_options)} for a {type(estimator).__name__}")
    module = type(estimator).__module__.split(".")[0]
    if module not in ("sklearn", "lightgbm") and not _is_sklearn_like(estimator):
        raise Invalid(
            f"wrap() takes scikit-learn and LightGBM models, not {type(estimator).__name__} from {module}"
        )
    model = WrappedModel(estimator, feature_names=feature_names)
    if _is_fitted(estimator):
        model._adopt(None)
    return model


def _is_sklearn_like(estimator: Any) -> bool:
    return hasattr(estimator, "fit") and hasattr(estimator, "get_params")


def _is_booster(estimator: Any) -> bool:
    return type(estimator).__name__ == "Booster" and type(estimator).__module__.startswith("lightgbm")


def _is_fitted(estimator: Any) -> bool:
    if _is_booster(estimator):
        return True
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


def _kind(estimator: Any) -> str:
    if _is_booster(estimator):
        objective = str(estimator.dump_model().get("objective", "")).split()[0]
        if objective == "binary":
            return "binary"
        if objective in ("multiclass", "softmax"):
            return "multiclass"
        if objective.startswith("regression") or objective == "huber":
            return "regression"
        raise Invalid(f"cannot export a LightGBM booster with objective {objective!r}")
    from sklearn.base import is_classifier, is_outlier_detector, is_regressor

    if is_classifier(estimator):
        return "binary" if len(_classes(estimator)) == 2 else "multiclass"
    if is_regressor(estimator):
        return "regression"
    if is_outlier_detector(estimator):
        return "anomaly"
    raise Invalid(f"{type(estimator).__name__} is neither a classifier, a regressor nor an outlier detector")


def _classes(estimator: Any) -> Any:
    if _is_booster(estimator):
        k = int(estimator.dump_model().get("num_class", 1))
        return np.arange(max(k, 2))
    return estimator.classes_


def _feature_count(estimator: Any) -> int:
    if _is_booster(estimator):
        return int(estimator.num_feature())
    count = getattr(estimator, "n_features_in_", None)
    if count is None:
        raise Invalid(f"cannot tell how many features {type(estimator).__name__} takes; fit it first")
    return int(count)


def _convert(estimator: Any, n_features: int) -> Any:
    from openlearner.models.onnx import lightgbm_graph

    if _is_booster(estimator):
        return lightgbm_graph(estimator, n_features)
    if type(estimator).__module__.startswith("lightgbm"):
        return lightgbm_graph(estimator.booster_, n_features)
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    from sklearn.base import is_classifier

    options = {type(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        return convert_sklearn(
            estimator,
            initial_types=[("input", FloatTensorType([None, n_features]))],
            options=options,
            target_opset={"": 15, "ai.onnx.ml": 3},
        )
    except (MissingConverter, MissingShapeCalculator, RuntimeError) as exc:
        raise Invalid(
            f"skl2onnx cannot convert {type(estimator).__name__}: {str(exc).splitlines()[0]}"
        ) from exc


def _argmax_label(model: Any, probabilities: str) -> str:
    """Add ``label`` = index of the most probable class (the converters' label is the class value)."""
    from onnx import helper

    for node in model.graph.node:  # the converter's own label (a class value) gives way
        node.output[:] = ["__converter_label" if o == "label" else o for o in node.output]
    model.graph.node.append(
        helper.make_node("ArgMax", [probabilities], ["__argmax_label"], axis=1, keepdims=0)
    )
    return "__argmax_label"
