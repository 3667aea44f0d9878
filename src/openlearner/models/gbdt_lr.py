"""The ads hybrid (He et al. 2014): boosted trees transform the input, a logistic regression predicts.

Each tree maps a row to the leaf it lands in; the one-hot leaf indices of all trees are the
features of an L2-regularised logistic regression. The exported graph is one ONNX graph:
since the regression's input is one-hot per tree, ``w · onehot(leaves) + b`` is the sum
over trees of the weight of the leaf each row lands in — so the weights are written into
the leaves of a copy of the trees (the intercept into the first tree's) and the tree
ensemble with a sigmoid computes exactly the regression's probability, without
materializing the one-hot vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import Classifier, to_labels
from openlearner.models.gbdt import GBDTClassifier

__all__ = ["GBDTLogisticRegression"]


class GBDTLogisticRegression(Classifier):
    """Binary classifier: LightGBM trees as a feature transform, then logistic regression on leaf indices.

    ``lr_C`` is the regression's inverse L2 strength. With ``eval_set`` the trees stop early
    (``early_stopping_rounds``); the regression is trained on the training rows.
    """

    def __init__(
        self,
        *,
        num_trees: int = 100,
        num_leaves: int = 31,
        learning_rate: float = 0.1,
        min_child_samples: int = 20,
        feature_fraction: float = 1.0,
        categorical_features: Sequence[str | int] | None = None,
        early_stopping_rounds: int | None = None,
        lr_C: float = 1.0,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.num_trees = num_trees
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.categorical_features = categorical_features
        self.early_stopping_rounds = early_stopping_rounds
        self.lr_C = lr_C
        self.num_threads = num_threads
        self.seed = seed

    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> GBDTLogisticRegression:
        """Train the trees, then the regression on their one-hot leaves; returns self."""
        from sklearn.linear_model import LogisticRegression as SkLogisticRegression

        if not float(self.lr_C) > 0:
            raise Invalid(f"lr_C must be positive, not {self.lr_C!r}")
        self._forget()
        trees = GBDTClassifier(
            num_trees=self.num_trees,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            min_child_samples=self.min_child_samples,
            feature_fraction=self.feature_fraction,
            categorical_features=self.categorical_features,
            early_stopping_rounds=self.early_stopping_rounds,
            num_threads=self.num_threads,
            seed=self.seed,
        ).fit(X, y, eval_set=eval_set)
        if trees.classes_.size != 2:
            raise Invalid("GBDTLogisticRegression is a binary classifier; labels must be 0 or 1")
        matrix = trees._rows(X, allow_nan=True)
        labels = to_labels(y, len(matrix))
        info = trees.booster_.dump_model()["tree_info"]
        self.leaves_per_tree_ = np.array([t["num_leaves"] for t in info], dtype=np.int64)
        self.offsets_ = np.concatenate([[0], np.cumsum(self.leaves_per_tree_)[:-1]]).astype(np.int64)
        self.trees_ = trees
        regression = SkLogisticRegression(C=self.lr_C, max_iter=2000, tol=1e-6)
        regression.fit(self._one_hot(matrix), labels)
        self.coef_ = regression.coef_.ravel().astype(np.float64)
        self.intercept_ = float(regression.intercept_[0])
        self.classes_ = np.array([0, 1])
        self.feature_names_ = trees.feature_names_
        return self

    def _one_hot(self, matrix: npt.NDArray[np.float32]) -> Any:
        import scipy.sparse as sp

        leaves = self.trees_._raw(matrix, pred_leaf=True).astype(np.int64).reshape(len(matrix), -1)
        columns = (leaves + self.offsets_).ravel()
        rows = np.repeat(np.arange(len(matrix)), leaves.shape[1])
        width = int(self.leaves_per_tree_.sum())
        return sp.csr_matrix((np.ones(columns.size), (rows, columns)), shape=(len(matrix), width))

    def leaf_features(self, X: Any) -> Any:
        """The one-hot leaf indices (SciPy CSR, one column per leaf of every tree) the regression reads."""
        return self._one_hot(self._rows(X, allow_nan=True))

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Probabilities of class 0 and 1, shape (n, 2)."""
        logit = np.asarray(self.leaf_features(X) @ self.coef_, np.float64) + self.intercept_
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.column_stack([1.0 - p, p])

    def _onnx_graph(self, sample: Any = None) -> Any:
        """One graph: the trees carrying the regression's leaf weights, then a sigmoid."""
        import lightgbm as lgb

        from openlearner.models.onnx import binary_head

        self._check_fitted()
        weights = [
            self.coef_[start : start + size] + (self.intercept_ if t == 0 else 0.0)
            for t, (start, size) in enumerate(zip(self.offsets_, self.leaves_per_tree_, strict=True))
        ]
        booster = lgb.Booster(model_str=_with_leaf_values(self.trees_.booster_.model_to_string(), weights))
        converted = self.trees_._tree_graph(booster)
        outputs = [o.name for o in converted.graph.output]
        return binary_head(converted, probabilities=outputs[1], label=outputs[0])

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return {"input": self._rows(rows, allow_nan=True)}


def _with_leaf_values(model: str, weights: list[npt.NDArray[np.float64]]) -> str:
    """A LightGBM model text whose tree ``t`` has leaf values ``weights[t]`` (same structure)."""
    out, tree = [], -1
    for line in model.splitlines():
        if line.startswith("tree_sizes="):
            continue  # sizes of the rewritten trees differ; LightGBM then parses them in order
        if line.startswith("Tree="):
            tree = int(line.split("=", 1)[1])
        elif line.startswith("leaf_value=") and tree >= 0:
            values = weights[tree]
            if len(line.split("=", 1)[1].split()) != values.size:
                raise Invalid(f"tree {tree} has a different number of leaves than the regression expects")
            line = "leaf_value=" + " ".join(repr(float(v)) for v in values)
        out.append(line)
    return "\n".join(out) + "\n"
