"""Linear classifiers on scikit-learn: logistic regression (CTR) and a linear SVM (per-entity models).

Both take dense input (Arrow, pandas, arrays) or a SciPy sparse matrix; the exported graph
takes the dense float32 row ``input`` ``[batch, features]``. Neither takes missing values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import Classifier, NotFittedError, is_table, to_labels, to_matrix

__all__ = ["LinearClassifier", "LinearSVM", "LogisticRegression"]


class LinearClassifier(Classifier):
    """Base of the linear models: reads dense tables/arrays through :func:`to_matrix` and SciPy
    sparse matrices as CSR float32 (the exported graph takes the dense row)."""

    def _fit_input(self, X: Any) -> tuple[Any, list[str]]:
        import scipy.sparse as sp

        if sp.issparse(X):
            matrix = sp.csr_matrix(X, dtype=np.float32)
            if matrix.shape[0] == 0 or matrix.shape[1] == 0:
                raise Invalid(
                    f"cannot learn from a sparse matrix of shape {matrix.shape}; pass rows and features"
                )
            if np.isnan(matrix.data).any():
                raise Invalid(f"{type(self).__name__} does not take missing values; impute the NaNs first")
            return matrix, [f"f{i}" for i in range(matrix.shape[1])]
        return self._training_matrix(X, allow_nan=False)

    def _predict_input(self, X: Any) -> Any:
        import scipy.sparse as sp

        if not sp.issparse(X):
            return self._rows(X, allow_nan=False)
        self._check_fitted()
        matrix = sp.csr_matrix(X, dtype=np.float32)
        if matrix.shape[1] != len(self.feature_names_):
            raise Invalid(f"expected {len(self.feature_names_)} features, got {matrix.shape[1]}")
        if np.isnan(matrix.data).any():
            raise Invalid(f"{type(self).__name__} does not take missing values; impute the NaNs first")
        return matrix

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        import scipy.sparse as sp

        if sp.issparse(rows):
            return {"input": np.asarray(sp.csr_matrix(rows, dtype=np.float32).toarray())}
        matrix, _ = to_matrix(rows, self.feature_names_ if is_table(rows) else None)
        return {"input": matrix}


class LogisticRegression(LinearClassifier):
    """Binary L2-regularised logistic regression (scikit-learn, lbfgs or saga for large sparse data).

    ``C`` is the inverse regularisation strength, as in scikit-learn.
    """

    def __init__(
        self, *, C: float = 1.0, max_iter: int = 1000, solver: str = "lbfgs", tol: float = 1e-6
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.solver = solver
        self.tol = tol

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticRegression:
        """Train on ``X`` (dense or sparse) and binary labels ``y``; returns self."""
        from sklearn.linear_model import LogisticRegression as SkLogisticRegression

        if not float(self.C) > 0:
            raise Invalid(f"C must be positive, not {self.C!r}")
        matrix, names = self._fit_input(X)
        labels = to_labels(y, matrix.shape[0])
        model = SkLogisticRegression(C=self.C, max_iter=self.max_iter, solver=self.solver, tol=self.tol)
        model.fit(matrix, labels, sample_weight=sample_weight)
        self.estimator_ = model
        self.coef_ = model.coef_.ravel().astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        self.classes_ = np.array([0, 1])
        self.feature_names_ = names
        return self

    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """The logit ``w·x + b``."""
        rows = self._predict_input(X)
        return np.asarray(self.estimator_.decision_function(rows), np.float64)

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Probabilities of class 0 and 1, shape (n, 2)."""
        rows = self._predict_input(X)
        return np.asarray(self.estimator_.predict_proba(rows), np.float64)

    def _onnx_graph(self, sample: Any = None) -> Any:
        """skl2onnx's logistic regression, rewired to ``label``/``probability``."""
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        from openlearner.models.onnx import binary_head

        self._check_fitted()
        converted = convert_sklearn(
            self.estimator_,
            initial_types=[("input", FloatTensorType([None, len(self.feature_names_)]))],
            options={id(self.estimator_): {"zipmap": False}},
            target_opset={"": 15, "ai.onnx.ml": 3},
        )
        outputs = [o.name for o in converted.graph.output]
        return binary_head(converted, probabilities=outputs[1], label=outputs[0])


class LinearSVM(LinearClassifier):
    """A linear SVM (scikit-learn ``LinearSVC``, hinge loss) with Platt-scaled probabilities.

    Probability: Platt scaling. A sigmoid ``p = 1 / (1 + exp(-(a·s + b)))`` is fitted by
    logistic regression on the SVM's decision scores ``s``, taken out of fold (``cv`` folds)
    so it does not learn from scores of rows the SVM was trained on; the final SVM is then
    trained on all rows. Since ``s = w·x + c`` is linear, ``p = sigmoid((a·w)·x + a·c + b)``:
    the export is one linear graph. ``label`` is ``p >= 0.5`` (consistent with ``probability``;
    ``decision_function`` keeps the raw margin).
    """

    def __init__(self, *, C: float = 1.0, max_iter: int = 5000, cv: int = 3, seed: int = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.cv = cv
        self.seed = seed

    def fit(self, X: Any, y: Any) -> LinearSVM:
        """Train on ``X`` (dense or sparse) and binary labels ``y``; returns self."""
        from sklearn.linear_model import LogisticRegression as SkLogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.svm import LinearSVC

        if not float(self.C) > 0:
            raise Invalid(f"C must be positive, not {self.C!r}")
        if not isinstance(self.cv, int) or self.cv < 2:
            raise Invalid(f"cv must be an integer >= 2 (folds for Platt scaling), not {self.cv!r}")
        matrix, names = self._fit_input(X)
        labels = to_labels(y, matrix.shape[0])
        if np.bincount(labels).min() < self.cv:
            raise Invalid(f"each class needs at least cv={self.cv} rows for Platt scaling; pass more rows")
        svm = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.seed)
        scores = cross_val_predict(svm, matrix, labels, cv=folds, method="decision_function")
        platt = SkLogisticRegression(C=1e6).fit(scores.reshape(-1, 1), labels)
        svm.fit(matrix, labels)
        self.estimator_ = svm
        self.platt_ = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
        a, b = self.platt_
        self.coef_ = a * svm.coef_.ravel().astype(np.float64)
        self.intercept_ = a * float(svm.intercept_[0]) + b
        self.classes_ = np.array([0, 1])
        self.feature_names_ = names
        return self

    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """The SVM margin ``w·x + c`` (positive: class 1)."""
        rows = self._predict_input(X)
        return np.asarray(self.estimator_.decision_function(rows), np.float64)

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Platt-scaled probabilities of class 0 and 1, shape (n, 2)."""
        margin = self.decision_function(X)
        a, b = self.platt_
        p = 1.0 / (1.0 + np.exp(-(a * margin + b)))
        return np.column_stack([1.0 - p, p])

    def _onnx_graph(self, sample: Any = None) -> Any:
        """The SVM with its Platt sigmoid folded in, as one linear graph."""
        from openlearner.models.onnx import linear_graph

        if not hasattr(self, "coef_"):
            raise NotFittedError("LinearSVM is not fitted yet; call fit(X, y) first")
        return linear_graph(self.coef_, self.intercept_, name="linear_svm")
