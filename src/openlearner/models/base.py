"""What every OpenLearner model shares: the scikit-learn estimator contract and tabular input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from openlearner.errors import Invalid

__all__ = [
    "Classifier",
    "Estimator",
    "NotFittedError",
    "is_table",
    "to_class_labels",
    "to_labels",
    "to_matrix",
]


class NotFittedError(Invalid):
    """A model was used before ``fit``."""


def to_matrix(X: Any, columns: Sequence[str] | None = None) -> tuple[npt.NDArray[np.float32], list[str]]:
    """A float32 matrix (nulls → NaN) and its column names, from Arrow, pandas, dicts or arrays.

    float32 is what the ONNX graphs take, so training, parity checks and serving all see
    the same rounded values. ``columns`` selects and orders named columns.
    """
    if isinstance(X, dict):
        X = pa.table(X)
    if type(X).__module__.startswith("pandas"):
        X = pa.Table.from_pandas(X, preserve_index=False)
    if isinstance(X, pa.Table):
        names = list(columns) if columns is not None else X.column_names
        missing = [c for c in names if c not in X.column_names]
        if missing:
            raise Invalid(f"input lacks column(s) {', '.join(missing)}; it has {', '.join(X.column_names)}")
        arrays = []
        for name in names:
            column = X.column(name)
            if not (
                pa.types.is_integer(column.type)
                or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)
            ):
                raise Invalid(
                    f"column {name!r} is {column.type}; models take numeric columns (encode it first)"
                )
            arrays.append(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        matrix = (
            np.column_stack(arrays).astype(np.float32) if arrays else np.empty((X.num_rows, 0), np.float32)
        )
        return matrix, names
    try:
        matrix = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"cannot read the input as a numeric matrix: {exc}") from exc
    if matrix.ndim != 2:
        raise Invalid(f"input must be 2-dimensional (rows × features), not of shape {matrix.shape}")
    names = list(columns) if columns is not None else [f"f{i}" for i in range(matrix.shape[1])]
    if len(names) != matrix.shape[1]:
        raise Invalid(f"{len(names)} column names for {matrix.shape[1]} columns")
    return matrix, names


def to_labels(y: Any, n: int) -> npt.NDArray[np.int64]:
    """Binary labels as int64, checked against the number of rows."""
    if isinstance(y, pa.ChunkedArray | pa.Array):
        y = y.to_numpy(zero_copy_only=False)
    labels = np.asarray(y)
    if n == 0:
        raise Invalid("there are no rows to learn from; pass at least one row per class")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise Invalid(f"labels must be one value per row ({n}), got shape {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise Invalid("labels must be 0 or 1 for a binary classifier")
    if labels.size and np.unique(labels).size < 2:
        raise Invalid("labels hold a single class; a classifier needs both 0s and 1s to learn from")
    return labels.astype(np.int64)


def to_class_labels(
    y: Any, n: int, classes: Sequence[Any] | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Multi-class labels as class indices (int64, 0..k-1) and the sorted classes they index.

    Labels may be integers, strings or booleans; ``classes`` fixes the known classes (for a
    validation set, pass the training set's ``classes_``), otherwise they are the sorted
    distinct labels and there must be at least two. Nulls and NaN are refused.
    """
    if isinstance(y, pa.ChunkedArray | pa.Array):
        if y.null_count:
            raise Invalid(f"labels hold {y.null_count} null(s); drop those rows or give them a class")
        y = y.to_numpy(zero_copy_only=False)
    labels = np.asarray(y)
    if n == 0:
        raise Invalid("there are no rows to learn from; pass at least one row per class")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise Invalid(f"labels must be one value per row ({n}), got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if np.isnan(labels).any():
            raise Invalid("labels hold NaN; drop those rows or give them a class")
        if not np.array_equal(labels, np.round(labels)):
            raise Invalid("labels are fractional numbers; a classifier takes class labels (ints or strings)")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "O":
        if any(v is None for v in labels):
            raise Invalid("labels hold None; drop those rows or give them a class")
        labels = labels.astype(str)
    if classes is None:
        known = np.unique(labels)
        if known.size < 2:
            raise Invalid(
                f"labels hold a single class ({known.tolist()[0]!r}); a classifier needs at least two classes"
            )
    else:
        known = np.asarray(classes)
        unseen = np.setdiff1d(np.unique(labels), known)
        if unseen.size:
            raise Invalid(
                f"labels {unseen[:5].tolist()} are not among the model's classes {known[:20].tolist()}"
            )
    index = np.searchsorted(known, labels)
    return index.astype(np.int64), known


def is_table(X: Any) -> bool:
    """Whether ``X`` carries column names (Arrow table, pandas frame or dict of columns)."""
    return isinstance(X, dict | pa.Table) or type(X).__module__.startswith("pandas")


class Estimator:
    """Base of every model: keyword hyper-parameters, learned state ending in ``_``, ``fit`` returns self."""

    feature_names_: list[str]

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    def _forget(self) -> None:
        """Drop all learned state (attributes ending in ``_``): a refit that fails leaves the model
        unfitted rather than half old, half new."""
        for key in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            del self.__dict__[key]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters, as scikit-learn's ``clone`` expects."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> Estimator:
        """Set hyper-parameters; unknown names raise ``Invalid``."""
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise Invalid(f"{type(self).__name__} has no parameter {key!r}; it has {', '.join(valid)}")
            setattr(self, key, value)
        return self

    def _training_matrix(self, X: Any, *, allow_nan: bool) -> tuple[npt.NDArray[np.float32], list[str]]:
        """Training rows as float32 with their column names; refuses empty input (and NaN unless allowed)."""
        matrix, names = to_matrix(X)
        if matrix.shape[0] == 0:
            raise Invalid("there are no rows to learn from; pass at least one row")
        if matrix.shape[1] == 0:
            raise Invalid("the input has no feature columns; pass at least one")
        if not allow_nan:
            _refuse_nan(matrix, type(self).__name__)
        return matrix, names

    def _rows(self, X: Any, *, allow_nan: bool) -> npt.NDArray[np.float32]:
        """Rows to predict on: named columns in training order, the training feature count, NaN policy."""
        self._check_fitted()
        matrix, _ = to_matrix(X, self.feature_names_ if is_table(X) else None)
        if matrix.shape[1] != len(self.feature_names_):
            shown = ", ".join(self.feature_names_[:20]) + (", ..." if len(self.feature_names_) > 20 else "")
            raise Invalid(f"expected {len(self.feature_names_)} features ({shown}), got {matrix.shape[1]}")
        if not allow_nan:
            _refuse_nan(matrix, type(self).__name__)
        return matrix


def _refuse_nan(matrix: npt.NDArray[np.float32], model: str) -> None:
    bad = np.isnan(matrix).any(axis=0)
    if bad.any():
        raise Invalid(
            f"{model} does not take missing values, but column(s) {np.flatnonzero(bad)[:10].tolist()} hold "
            "NaN/null; impute them first or use a GBDT model, which routes missing values itself"
        )


class Classifier(Estimator):
    """Base of classifiers: ``predict_proba`` gives one column per class in ``classes_`` order."""

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Class probabilities, shape (n, classes)."""
        raise NotImplementedError

    def predict(self, X: Any) -> npt.NDArray[Any]:
        """The most probable class: threshold 0.5 for binary models, else the arg-max of ``classes_``."""
        proba = self.predict_proba(X)
        if proba.shape[1] == 2 and not hasattr(self, "classes_"):
            return (proba[:, 1] >= 0.5).astype(np.int64)
        classes = np.asarray(getattr(self, "classes_", np.arange(proba.shape[1])))
        if proba.shape[1] == 2:
            return np.asarray(classes[(proba[:, 1] >= 0.5).astype(np.int64)])
        return np.asarray(classes[np.argmax(proba, axis=1)])
