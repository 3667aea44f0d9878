"""Anomaly detection with an isolation forest (scikit-learn), trained on normal data only or on a mix.

Outputs follow the platform's anomaly contract: ``label`` 1 = anomaly, 0 = normal, and
``score`` where higher is more anomalous and above 0 means "anomaly" (the negated
scikit-learn ``decision_function``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import Estimator

__all__ = ["IsolationForest"]


class IsolationForest(Estimator):
    """Isolation forest: anomalies are isolated by fewer random splits than normal rows.

    ``contamination`` is the expected share of anomalies in the *training* data: ``"auto"``
    uses the original paper's threshold, a float in (0, 0.5] sets the threshold so that
    share of training rows is flagged. Trained on normal rows only, keep ``"auto"`` or a small value.
    """

    def __init__(
        self,
        *,
        num_trees: int = 100,
        max_samples: int | float | str = "auto",
        contamination: float | str = "auto",
        num_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.num_trees = num_trees
        self.max_samples = max_samples
        self.contamination = contamination
        self.num_threads = num_threads
        self.seed = seed

    def fit(self, X: Any, y: Any = None) -> IsolationForest:
        """Learn what normal rows look like from ``X`` (labels are not used); returns self."""
        from sklearn.ensemble import IsolationForest as SkIsolationForest

        if not isinstance(self.num_trees, int) or self.num_trees < 1:
            raise Invalid(f"num_trees must be a positive integer, not {self.num_trees!r}")
        if self.contamination != "auto" and not (
            isinstance(self.contamination, float) and 0 < self.contamination <= 0.5
        ):
            raise Invalid(f"contamination must be 'auto' or a float in (0, 0.5], not {self.contamination!r}")
        matrix, names = self._training_matrix(X, allow_nan=False)
        if matrix.shape[0] < 2:
            raise Invalid("an isolation forest needs at least two rows to split")
        forest = SkIsolationForest(
            n_estimators=self.num_trees,
            max_samples=self.max_samples,
            contamination=self.contamination,
            n_jobs=self.num_threads,
            random_state=self.seed,
        )
        forest.fit(matrix)
        self.estimator_ = forest
        self.feature_names_ = names
        return self

    def score_samples(self, X: Any) -> npt.NDArray[np.float64]:
        """Anomaly score per row: higher is more anomalous, above 0 is flagged."""
        matrix = self._rows(X, allow_nan=False)
        return -np.asarray(self.estimator_.decision_function(matrix), np.float64)

    def predict(self, X: Any) -> npt.NDArray[np.int64]:
        """1 for an anomaly, 0 for a normal row."""
        return (self.score_samples(X) > 0).astype(np.int64)

    def _onnx_graph(self, sample: Any = None) -> Any:
        """One tree ensemble summing each row's path lengths, then the score and the flag.

        Built directly from the fitted trees (skl2onnx's converter emits one sub-graph per
        tree and needs seconds per ten trees): leaf ``l`` of every tree carries
        ``depth(l) + c(n_l)`` (``c`` the average path length of ``n_l`` unsplit rows), the
        ensemble sums them to ``h``, and ``score = 2^(-h / (trees · c(max_samples))) + offset``.
        """
        self._check_fitted()
        return _forest_graph(self.estimator_, len(self.feature_names_))

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return {"input": self._rows(rows, allow_nan=False)}

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Labels are compared through the class agreement: a score within float32 rounding of 0
        # may flip, which is not a difference in the model.
        return {"score": self.score_samples(feeds["input"])}


def _forest_graph(forest: Any, n_features: int) -> Any:
    """The isolation forest's ``label``/``score`` as one ONNX graph (see ``IsolationForest._onnx_graph``)."""
    import onnx
    from onnx import TensorProto, helper
    from sklearn.ensemble._iforest import _average_path_length

    from openlearner.models.onnx import LABEL, SCORE

    if forest._max_features != n_features:
        raise Invalid("cannot export an isolation forest whose trees see a subset of the features")
    attrs: dict[str, list[Any]] = {
        k: []
        for k in (
            "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
            "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids", "target_weights",
        )
    }  # fmt: skip
    for t, (tree, depth, average) in enumerate(
        zip(
            forest.estimators_,
            forest._decision_path_lengths,
            forest._average_path_length_per_tree,
            strict=True,
        )
    ):
        nodes = tree.tree_
        for node in range(nodes.node_count):
            leaf = nodes.children_left[node] == -1
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(node)
            attrs["nodes_featureids"].append(0 if leaf else int(nodes.feature[node]))
            attrs["nodes_values"].append(0.0 if leaf else _float32_at_or_below(float(nodes.threshold[node])))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(0 if leaf else int(nodes.children_left[node]))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(nodes.children_right[node]))
            if leaf:
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(node)
                attrs["target_weights"].append(float(depth[node] + average[node] - 1.0))
    n = len(attrs["target_weights"])
    denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
    ensemble = helper.make_node("TreeEnsembleRegressor", ["input"], ["__path_sum"], domain="ai.onnx.ml")
    ensemble.attribute.extend(
        helper.make_attribute(key, value)
        for key, value in {
            "n_targets": 1,
            "aggregate_function": "SUM",
            "post_transform": "NONE",
            "target_ids": [0] * n,
            **attrs,
        }.items()
    )
    nodes = [
        ensemble,
        helper.make_node("Reshape", ["__path_sum", "__flat"], ["__h"]),
        helper.make_node("Div", ["__h", "__denominator"], ["__ratio"]),
        helper.make_node("Neg", ["__ratio"], ["__exponent"]),
        helper.make_node("Pow", ["__two", "__exponent"], ["__isolation"]),
        helper.make_node("Add", ["__isolation", "__offset"], [SCORE]),
        helper.make_node("Greater", [SCORE, "__zero"], ["__flagged"]),
        helper.make_node("Cast", ["__flagged"], [LABEL], to=TensorProto.INT64),
    ]
    initializers = [
        helper.make_tensor("__flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("__denominator", TensorProto.FLOAT, [], [denominator]),
        helper.make_tensor("__two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("__offset", TensorProto.FLOAT, [], [float(forest.offset_)]),
        helper.make_tensor("__zero", TensorProto.FLOAT, [], [0.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "isolation_forest",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["batch"]),
        ],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _float32_at_or_below(threshold: float) -> float:
    """The largest float32 not above ``threshold``: for float32 inputs ``x <= it`` iff ``x <= threshold``
    (scikit-learn compares float32 rows with float64 thresholds; the graph holds float32 ones)."""
    rounded = np.float32(threshold)
    if float(rounded) > threshold:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)
