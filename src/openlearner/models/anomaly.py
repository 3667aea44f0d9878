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
        """skl2onnx's forest, rewired to ``label`` (1 = anomaly) and ``score``."""
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        from openlearner.models.onnx import anomaly_head

        self._check_fitted()
        converted = convert_sklearn(
            self.estimator_,
            initial_types=[("input", FloatTensorType([None, len(self.feature_names_)]))],
            target_opset={"": 15, "ai.onnx.ml": 3},
        )
        outputs = [o.name for o in converted.graph.output]
        return anomaly_head(converted, label=outputs[0], score=outputs[1])

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return {"input": self._rows(rows, allow_nan=False)}

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Labels are compared through the class agreement: a score within float32 rounding of 0
        # may flip, which is not a difference in the model.
        return {"score": self.score_samples(feeds["input"])}
