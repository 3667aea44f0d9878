"""Logistic regression trained online, one mini-batch at a time (He et al. 2014), in numpy.

Each coordinate ``i`` (every weight and the intercept) has its own learning rate
``η_i = α / (β + sqrt(Σ g_i²))``, where the sum runs over all gradients of that coordinate
seen so far — the schedule the paper found best (α = 0.1, β = 1). Coordinates that are
rarely active keep a large rate; frequent ones anneal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import to_labels
from openlearner.models.linear import LinearClassifier

__all__ = ["OnlineLogisticRegression"]


class OnlineLogisticRegression(LinearClassifier):
    """Binary logistic regression with per-coordinate adaptive SGD and ``partial_fit``.

    ``g`` is the gradient of the log loss averaged over a mini-batch of ``batch_size`` rows
    (``batch_size=1`` is the paper's per-example update), plus ``l2 · w``. ``fit`` starts
    afresh and makes ``epochs`` passes (shuffled, or in the given order — time order for a
    click log — with ``shuffle=False``); ``partial_fit`` continues from the current
    state, so a model can follow a stream of fresh data. Dense input or a SciPy sparse
    matrix (one-hot CTR features): with sparse rows (and ``l2=0``) only the active
    coordinates' gradients are non-zero, so the others keep their rate.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        beta: float = 1.0,
        l2: float = 0.0,
        batch_size: int = 1,
        epochs: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.alpha = alpha
        self.beta = beta
        self.l2 = l2
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.seed = seed

    def _validate(self) -> None:
        if not float(self.alpha) > 0:
            raise Invalid(f"alpha must be positive, not {self.alpha!r}")
        if not float(self.beta) > 0:
            raise Invalid(f"beta must be positive (it keeps the first steps finite), not {self.beta!r}")
        if not float(self.l2) >= 0:
            raise Invalid(f"l2 must be >= 0, not {self.l2!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise Invalid(f"batch_size must be a positive integer, not {self.batch_size!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise Invalid(f"epochs must be a positive integer, not {self.epochs!r}")

    def fit(self, X: Any, y: Any) -> OnlineLogisticRegression:
        """Start afresh and make ``epochs`` passes over ``X``, binary labels ``y``; returns self."""
        self._validate()
        matrix, names = self._fit_input(X)
        labels = to_labels(y, matrix.shape[0])
        for attr in ("coef_", "feature_names_"):
            self.__dict__.pop(attr, None)
        self._start(names)
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            order = rng.permutation(matrix.shape[0]) if self.shuffle else np.arange(matrix.shape[0])
            self._steps(matrix[order], labels[order].astype(np.float64))
        return self

    def partial_fit(self, X: Any, y: Any) -> OnlineLogisticRegression:
        """One pass over a new batch of rows, in their order (one class alone is fine here); returns self."""
        self._validate()
        if hasattr(self, "feature_names_"):
            matrix = self._predict_input(X)
        else:
            matrix, names = self._fit_input(X)
            self._start(names)
        labels = np.asarray(y.to_numpy(zero_copy_only=False) if hasattr(y, "to_numpy") else y)
        if labels.ndim != 1 or labels.shape[0] != matrix.shape[0]:
            raise Invalid(f"labels must be one value per row ({matrix.shape[0]}), got shape {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise Invalid("labels must be 0 or 1 for a binary classifier")
        self._steps(matrix, labels.astype(np.float64))
        return self

    def _start(self, names: list[str]) -> None:
        n = len(names)
        self.coef_ = np.zeros(n)
        self.intercept_ = 0.0
        self.squared_gradients_ = np.zeros(n + 1)  # the last one is the intercept's
        self.rows_seen_ = 0
        self.classes_ = np.array([0, 1])
        self.feature_names_ = names

    def _steps(self, X: Any, y: npt.NDArray[np.float64]) -> None:
        import scipy.sparse as sp

        w = np.append(self.coef_, self.intercept_)
        G = self.squared_gradients_
        size, l2 = self.batch_size, float(self.l2)
        ones = np.ones((X.shape[0], 1))
        if sp.issparse(X):
            Xb: Any = sp.hstack([sp.csr_matrix(X, dtype=np.float64), sp.csr_matrix(ones)], format="csr")
        else:
            Xb = np.hstack([np.asarray(X, np.float64), ones])
        for start in range(0, X.shape[0], size):
            rows, target = Xb[start : start + size], y[start : start + size]
            p = 1.0 / (1.0 + np.exp(-np.clip(rows @ w, -35.0, 35.0)))
            g = np.asarray(rows.T @ (p - target)).ravel() / rows.shape[0]
            if l2:
                g[:-1] += l2 * w[:-1]
            G += g * g
            w -= self.alpha / (self.beta + np.sqrt(G)) * g
        self.coef_, self.intercept_ = w[:-1].copy(), float(w[-1])
        self.squared_gradients_ = G
        self.rows_seen_ += int(X.shape[0])

    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """The logit ``w·x + b``."""
        matrix = self._predict_input(X)
        return np.asarray(matrix.astype(np.float64) @ self.coef_ + self.intercept_, np.float64).ravel()

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Probabilities of class 0 and 1, shape (n, 2)."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def _onnx_graph(self, sample: Any = None) -> Any:
        """One linear graph: ``sigmoid(input · w + b)``."""
        from openlearner.models.onnx import linear_graph

        self._check_fitted()
        return linear_graph(self.coef_, self.intercept_, name="online_logistic_regression")
