"""Negative down-sampling and its undoing (He et al. 2014).

Click data holds few positives; training on all positives and a fraction ``w`` of the
negatives is faster and loses little. The model then over-predicts: its probability ``p``
is for data with ``1/w`` times fewer negatives. Re-calibration undoes that exactly:
``q = p / (p + (1 - p) / w)``.

``downsample_negatives(model, rate)`` wraps any binary OpenLearner model: it fits the
model on down-sampled data, records the rate with the model (``rate``, and in the
exported graph's metadata ``negative_sampling_rate``), and both ``predict_proba`` and the
exported graph — one graph: the model's, then the re-calibration nodes — give ``q``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from openlearner.errors import Invalid
from openlearner.models.base import Classifier, to_labels

__all__ = ["NegativeDownsampled", "downsample_negatives", "recalibrate", "sample_negatives"]


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < float(rate) <= 1.0:
        raise Invalid(f"the negative sampling rate must be a number in (0, 1] (e.g. 0.025), not {rate!r}")
    return float(rate)


def recalibrate(p: npt.ArrayLike, rate: float) -> npt.NDArray[np.float64]:
    """Undo negative down-sampling at ``rate`` ``w``: ``q = p / (p + (1 - p) / w)``."""
    w = _check_rate(rate)
    prob = np.asarray(p, np.float64)
    return prob / (prob + (1.0 - prob) / w)


def sample_negatives(X: Any, y: Any, rate: float, *, seed: int = 0) -> tuple[Any, npt.NDArray[np.int64]]:
    """Keep every positive row and each negative with probability ``rate``; rows keep their order.

    ``X`` may be an Arrow table, a pandas frame, a numpy array or a SciPy sparse matrix.
    """
    w = _check_rate(rate)
    n = X.num_rows if isinstance(X, pa.Table) else X.shape[0]
    return _keep(X, to_labels(y, n), w, np.random.default_rng(seed))


def _binary(y: Any, n: int) -> npt.NDArray[np.int64]:
    """0/1 labels of a stream batch (one class alone is fine there)."""
    labels = np.asarray(y.to_numpy(zero_copy_only=False) if isinstance(y, pa.Array | pa.ChunkedArray) else y)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise Invalid(f"labels must be one value per row ({n}), got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise Invalid("labels must be 0 or 1 for a binary classifier")
    return labels.astype(np.int64)


def _keep(X: Any, labels: npt.NDArray[np.int64], rate: float, rng: np.random.Generator) -> tuple[Any, Any]:
    keep = (labels == 1) | (rng.random(labels.size) < rate)
    index = np.flatnonzero(keep)
    if isinstance(X, pa.Table):
        return X.take(pa.array(index)), labels[index]
    if type(X).__module__.startswith("pandas"):
        return X.iloc[index], labels[index]
    return X[index], labels[index]


class NegativeDownsampled(Classifier):
    """A binary model trained on all positives and a ``rate`` fraction of negatives, re-calibrated.

    ``model`` is an unfitted OpenLearner binary classifier (it is cloned, as in scikit-learn
    meta-estimators). ``fit`` keyword arguments (e.g. ``eval_set``) go to the model as given.
    """

    def __init__(self, model: Any, *, rate: float = 0.025, seed: int = 0) -> None:
        self.model = model
        self.rate = rate
        self.seed = seed

    def fit(self, X: Any, y: Any, **fit_params: Any) -> NegativeDownsampled:
        """Down-sample the negatives of ``X``, ``y`` and fit a clone of the model on them; returns self."""
        from sklearn.base import clone

        w = _check_rate(self.rate)
        kept, labels = sample_negatives(X, y, w, seed=self.seed)
        if labels.size and np.unique(labels).size < 2:
            raise Invalid(f"down-sampling at rate {w} left a single class; raise the rate or pass more rows")
        model = clone(self.model)
        model.fit(kept, labels, **fit_params)
        self.model_ = model
        self.sampled_rows_ = int(labels.size)
        self.classes_ = np.array([0, 1])
        self.feature_names_ = list(model.feature_names_)
        return self

    def partial_fit(self, X: Any, y: Any) -> NegativeDownsampled:
        """Down-sample a new batch's negatives and continue training an online model on it; returns self.

        The wrapped model must have ``partial_fit`` (e.g. ``OnlineLogisticRegression``). Batches
        are sampled by one seeded generator, so the same stream gives the same model.
        """
        from sklearn.base import clone

        if not callable(getattr(self.model, "partial_fit", None)):
            raise Invalid(f"{type(self.model).__name__} cannot learn online (it has no partial_fit); use fit")
        w = _check_rate(self.rate)
        if not hasattr(self, "model_"):
            self.model_ = clone(self.model)
            self.stream_ = np.random.default_rng(self.seed)
            self.sampled_rows_ = 0
        n = X.num_rows if isinstance(X, pa.Table) else X.shape[0]
        kept, labels = _keep(X, _binary(y, n), w, self.stream_)
        if labels.size:
            self.model_.partial_fit(kept, labels)
            self.sampled_rows_ += int(labels.size)
            self.classes_ = np.array([0, 1])
            self.feature_names_ = list(self.model_.feature_names_)
        return self

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Re-calibrated probabilities of class 0 and 1, shape (n, 2)."""
        self._check_fitted()
        q = recalibrate(np.asarray(self.model_.predict_proba(X), np.float64)[:, 1], self.rate)
        return np.column_stack([1.0 - q, q])

    def _onnx_graph(self, sample: Any = None) -> Any:
        """The model's graph followed by the re-calibration nodes, with the rate in the metadata."""
        from openlearner.models.onnx import recalibration_head, set_metadata, to_onnx

        self._check_fitted()
        graph = recalibration_head(to_onnx(self.model_, sample), float(self.rate))
        return set_metadata(graph, negative_sampling_rate=float(self.rate))

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        from openlearner.models.onnx import default_feeds

        feeds_of = getattr(self.model_, "_onnx_feeds", None)
        return feeds_of(rows) if callable(feeds_of) else default_feeds(self.model_, rows)

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        native_of = getattr(self.model_, "_parity_outputs", None)
        if callable(native_of):
            p = np.asarray(native_of(feeds)["probability"], np.float64)
        else:
            p = np.asarray(self.model_.predict_proba(feeds["input"]), np.float64)[:, 1]
        return {"probability": recalibrate(p, self.rate)}


def downsample_negatives(model: Any, rate: float = 0.025, *, seed: int = 0) -> NegativeDownsampled:
    """``model`` trained on every positive and a ``rate`` fraction of negatives, re-calibrated on output.

    ``rate`` is ``w`` in ``q = p / (p + (1 - p) / w)``; 0.025 was best in He et al. 2014.
    """
    _check_rate(rate)
    return NegativeDownsampled(model, rate=rate, seed=seed)
