"""Gradient-boosted decision trees on LightGBM (Sigma-style tabular models, ads CTR)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import Classifier, to_labels, to_matrix

__all__ = ["GBDTClassifier"]


class GBDTClassifier(Classifier):
    """A binary GBDT classifier; missing values (NaN) are routed by LightGBM natively.

    With ``early_stopping_rounds`` and an ``eval_set`` it stops when the validation log
    loss has not improved for that many trees.
    """

    def __init__(
        self,
        *,
        num_trees: int = 200,
        num_leaves: int = 31,
        learning_rate: float = 0.1,
        min_child_samples: int = 20,
        early_stopping_rounds: int | None = None,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.num_trees = num_trees
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.num_threads = num_threads
        self.seed = seed

    def _validate(self) -> None:
        if not isinstance(self.num_trees, int) or self.num_trees < 1:
            raise Invalid(f"num_trees must be a positive integer, not {self.num_trees!r}")
        if not isinstance(self.num_leaves, int) or self.num_leaves < 2:
            raise Invalid(f"num_leaves must be an integer >= 2, not {self.num_leaves!r}")
        if not 0 < float(self.learning_rate) <= 1:
            raise Invalid(f"learning_rate must be in (0, 1], not {self.learning_rate!r}")

    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> GBDTClassifier:
        """Train on ``X`` (Arrow/pandas/array) and binary labels ``y``; returns self."""
        self._validate()
        matrix, names = to_matrix(X)
        labels = to_labels(y, matrix.shape[0])
        params: dict[str, Any] = {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "verbosity": -1,
        }
        train = lgb.Dataset(matrix, labels, feature_name=names, free_raw_data=True)
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        if eval_set is not None:
            vx, _ = to_matrix(eval_set[0], names)
            vy = to_labels(eval_set[1], vx.shape[0])
            valid_sets.append(lgb.Dataset(vx, vy, reference=train))
            if self.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        booster = lgb.train(
            params, train, num_boost_round=self.num_trees, valid_sets=valid_sets, callbacks=callbacks
        )
        if booster.best_iteration:
            # Keep only the trees up to the best iteration, so the ONNX export and every
            # prediction use exactly the same ensemble.
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        self.booster_ = booster
        self.feature_names_ = names
        return self

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Probabilities of class 0 and 1, shape (n, 2)."""
        self._check_fitted()
        matrix, _ = to_matrix(X, self.feature_names_ if _is_table(X) else None)
        if matrix.shape[1] != len(self.feature_names_):
            raise Invalid(
                f"expected {len(self.feature_names_)} features ({', '.join(self.feature_names_)}), got {matrix.shape[1]}"
            )
        p = np.asarray(self.booster_.predict(matrix), dtype=np.float64)
        return np.column_stack([1.0 - p, p])

    def _onnx_graph(self, sample: Any = None) -> Any:
        """The export protocol (:mod:`openlearner.models.onnx`): trees, then ``label``/``probability``."""
        from openlearner.models.onnx import binary_head, lightgbm_graph

        self._check_fitted()
        converted = lightgbm_graph(self.booster_, len(self.feature_names_))
        outputs = [o.name for o in converted.graph.output]
        return binary_head(converted, probabilities=outputs[1], label=outputs[0])


def _is_table(X: Any) -> bool:
    return isinstance(X, dict) or hasattr(X, "column_names") or type(X).__module__.startswith("pandas")
