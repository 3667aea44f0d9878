"""Evaluation metrics for click (binary) and multi-class prediction, in pure numpy.

All functions accept any array-like of equal length: lists, numpy arrays, pyarrow
``Array``/``ChunkedArray`` (without nulls). Labels must be 0/1; probabilities must lie in
``[0, 1]``. Probabilities are clipped to ``[1e-15, 1 - 1e-15]`` before taking logarithms.

* :func:`log_loss` — ``-(1/N) Σ [y log p + (1-y) log(1-p)]`` (natural log).
* :func:`normalized_entropy` — log loss divided by the entropy of the base rate ``b``:
  ``NE = log_loss / -(b log b + (1-b) log(1-b))``. Lower is better; 1.0 is what always
  predicting the base rate scores.
* :func:`calibration` — ``mean(p) / mean(y)``; 1.0 is perfect.
* :func:`auc` — ROC AUC by the Mann–Whitney rank statistic, average ranks for ties.
* :func:`relative_information_gain` — ``RIG = 1 - NE`` (higher is better).
* :func:`calibration_curve` — equal-width bins of ``p`` over [0, 1]; per non-empty bin its
  row count, mean predicted probability and observed rate.
* :func:`accuracy` — share of rows whose predicted class equals the true class (any labels).
* :func:`precision_recall` — per class ``c``: precision = TP / (TP + FP) over rows predicted
  ``c``, recall = TP / (TP + FN) over rows labelled ``c`` (0.0 where the denominator is 0).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from openlearner.errors import Invalid

__all__ = [
    "CalibrationBin",
    "ClassReport",
    "accuracy",
    "auc",
    "calibration",
    "calibration_curve",
    "log_loss",
    "normalized_entropy",
    "precision_recall",
    "relative_information_gain",
]

#: Probabilities are clipped to ``[EPS, 1 - EPS]`` before any logarithm.
EPS = 1e-15

FloatArray = npt.NDArray[np.float64]


def log_loss(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> float:
    """Mean binary cross-entropy (natural log).

    ``log_loss = -(1/N) Σ_i [ y_i log p_i + (1 - y_i) log(1 - p_i) ]`` with ``p`` clipped to
    ``[1e-15, 1 - 1e-15]``.

    Raises:
        Invalid: empty or different-length inputs, labels not in {0, 1}, probabilities outside
            ``[0, 1]`` or NaN.
    """
    y, p = _labels_and_probs(y_true, y_prob, "y_prob")
    return _log_loss(y, p)


def normalized_entropy(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, base_rate: float | None = None) -> float:
    """Normalized entropy (He et al., 2014): log loss relative to predicting the base rate.

    ``NE = ( -(1/N) Σ_i [ y_i log p_i + (1 - y_i) log(1 - p_i) ] ) / ( -( b log b + (1-b) log(1-b) ) )``

    where ``b`` is the average empirical CTR of the *training* data (``base_rate``); when
    ``base_rate`` is None, ``b = mean(y_true)``. ``p`` is clipped to ``[1e-15, 1 - 1e-15]``.
    Lower is better; a constant prediction equal to ``b`` scores 1.0 when ``b`` is the
    evaluated data's own rate.

    Raises:
        Invalid: as :func:`log_loss`, plus ``base_rate`` not a number strictly inside (0, 1),
            or (``base_rate`` None) labels that are all 0 or all 1.
    """
    y, p = _labels_and_probs(y_true, y_prob, "y_prob")
    if base_rate is None:
        b = float(y.mean())
        if b <= 0.0 or b >= 1.0:
            raise Invalid(
                f"normalized_entropy needs a base rate strictly between 0 and 1, but y_true is all "
                f"{int(b)}s so its mean is {b}; pass base_rate= (the training data's CTR) explicitly"
            )
    else:
        if isinstance(base_rate, bool) or not isinstance(base_rate, numbers.Real):
            raise Invalid(
                f"base_rate must be a float strictly between 0 and 1, got {base_rate!r} "
                f"({type(base_rate).__name__}); pass the training data's CTR, e.g. base_rate=0.03"
            )
        b = float(base_rate)
        if not 0.0 < b < 1.0:  # also rejects NaN
            raise Invalid(
                f"base_rate must be strictly between 0 and 1, got {b}; pass the training data's "
                "CTR (a rate with both clicks and non-clicks), e.g. base_rate=0.03"
            )
    base_entropy = -(b * math.log(b) + (1.0 - b) * math.log(1.0 - b))
    return _log_loss(y, p) / base_entropy


def calibration(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> float:
    """Calibration ratio ``mean(p) / mean(y)``: predicted over observed rate (1.0 is perfect).

    Above 1 the model over-predicts, below 1 it under-predicts.

    Raises:
        Invalid: as :func:`log_loss`, plus an observed rate of 0 (no positive labels).
    """
    y, p = _labels_and_probs(y_true, y_prob, "y_prob")
    observed = float(y.mean())
    if observed == 0.0:
        raise Invalid(
            "calibration is undefined when the observed rate is 0 (y_true has no 1s); "
            "evaluate on data that contains at least one positive label"
        )
    return float(p.mean()) / observed


def auc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """ROC AUC via the Mann–Whitney rank statistic.

    With ``R_i`` the 1-based rank of ``score_i`` among all scores (tied scores get the
    average of their ranks), ``n1`` positives and ``n0`` negatives:

    ``AUC = ( Σ_{i: y_i = 1} R_i - n1 (n1 + 1) / 2 ) / (n1 · n0)``

    i.e. the probability that a random positive scores above a random negative, ties
    counting one half. Scores may be any real numbers (not only probabilities).

    Raises:
        Invalid: empty or different-length inputs, labels not in {0, 1}, NaN scores, or only
            one class present in ``y_true``.
    """
    y = _labels(y_true)
    s = _floats(y_score, "y_score")
    _same_length(y, s, "y_score")
    if np.isnan(s).any():
        raise Invalid("y_score contains NaN; remove or impute those rows before computing auc")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        only = 1 if n0 == 0 else 0
        raise Invalid(
            f"auc needs both classes, but y_true contains only {only}s; "
            "evaluate on data with at least one 0 and one 1"
        )
    ranks = _average_ranks(s)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def relative_information_gain(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, base_rate: float | None = None
) -> float:
    """Relative information gain ``RIG = 1 - NE`` (He et al. 2014): share of the base entropy explained."""
    return 1.0 - normalized_entropy(y_true, y_prob, base_rate)


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a calibration curve: predictions in ``[lower, upper)`` (the last bin includes 1.0)."""

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float


def calibration_curve(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, bins: int = 10) -> list[CalibrationBin]:
    """Equal-width bins of the predicted probability; per non-empty bin, mean prediction vs observed rate.

    A well-calibrated model has ``mean_predicted ≈ observed_rate`` in every bin.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise Invalid(f"bins must be a positive integer, not {bins!r}")
    y, p = _labels_and_probs(y_true, y_prob, "y_prob")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    curve = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            curve.append(
                CalibrationBin(
                    lower=b / bins,
                    upper=(b + 1) / bins,
                    count=count,
                    mean_predicted=float(p[inside].mean()),
                    observed_rate=float(y[inside].mean()),
                )
            )
    return curve


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Share of rows whose predicted class equals the true class (labels of any kind)."""
    y, pred = _classes_pair(y_true, y_pred)
    return float(np.mean(y == pred))


@dataclass(frozen=True)
class ClassReport:
    """Precision, recall and support (rows labelled with the class) of one class."""

    precision: float
    recall: float
    support: int


def precision_recall(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[Any, ClassReport]:
    """Per class (every class in ``y_true`` or ``y_pred``, sorted): precision, recall and support."""
    y, pred = _classes_pair(y_true, y_pred)
    report = {}
    for c in np.unique(np.concatenate([y, pred])):
        tp = int(np.sum((pred == c) & (y == c)))
        predicted, actual = int(np.sum(pred == c)), int(np.sum(y == c))
        report[c.item() if hasattr(c, "item") else c] = ClassReport(
            precision=tp / predicted if predicted else 0.0,
            recall=tp / actual if actual else 0.0,
            support=actual,
        )
    return report


def _classes_pair(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, pred = (
        np.asarray(v.to_numpy(zero_copy_only=False) if isinstance(v, pa.Array | pa.ChunkedArray) else v)
        for v in (y_true, y_pred)
    )
    for name, v in (("y_true", y), ("y_pred", pred)):
        if v.ndim != 1:
            raise Invalid(f"{name} must be 1-D (one class per row), got shape {v.shape}")
        if v.size == 0:
            raise Invalid(f"{name} is empty; metrics need at least one row")
    if y.size != pred.size:
        raise Invalid(f"y_true and y_pred must have the same length, got {y.size} and {pred.size}")
    if y.dtype.kind != pred.dtype.kind and "U" in (y.dtype.kind, pred.dtype.kind):
        raise Invalid(
            f"y_true holds {y.dtype} labels but y_pred holds {pred.dtype}; compare labels of one kind"
        )
    return y, pred


# --- helpers ---------------------------------------------------------------------------------


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks of ``values``; tied values share the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values in sorted order.
    is_start = np.empty(values.size, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], values.size)  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def _log_loss(y: FloatArray, p: FloatArray) -> float:
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _floats(values: npt.ArrayLike, name: str) -> FloatArray:
    """``values`` as a 1-D float64 array (pyarrow arrays without nulls accepted)."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if values.null_count:
            raise Invalid(
                f"{name} contains {values.null_count} null value(s); drop or fill the nulls before "
                "computing metrics"
            )
        values = values.to_numpy(zero_copy_only=False)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Invalid(
            f"{name} must be a 1-D array of numbers, but it could not be read as floats ({exc}); "
            "pass a list, numpy array or pyarrow array of numbers"
        ) from exc
    if arr.ndim != 1:
        raise Invalid(
            f"{name} must be 1-D, got an array of shape {arr.shape}; pass one value per row "
            "(for predict_proba output, take the positive-class column, e.g. proba[:, 1])"
        )
    if arr.size == 0:
        raise Invalid(f"{name} is empty; metrics need at least one row")
    return arr


def _labels(y_true: npt.ArrayLike) -> FloatArray:
    y = _floats(y_true, "y_true")
    bad = ~((y == 0.0) | (y == 1.0))
    if bad.any():
        examples = np.unique(y[bad])[:5].tolist()
        raise Invalid(
            f"y_true must contain only 0 and 1, found {int(bad.sum())} other value(s) such as {examples}; "
            "pass binary labels (1 = clicked, 0 = not clicked)"
        )
    return y


def _same_length(y: FloatArray, other: FloatArray, name: str) -> None:
    if y.size != other.size:
        raise Invalid(
            f"y_true and {name} must have the same length, got {y.size} and {other.size}; "
            "pass one prediction per label"
        )


def _labels_and_probs(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, name: str
) -> tuple[FloatArray, FloatArray]:
    y = _labels(y_true)
    p = _floats(y_prob, name)
    _same_length(y, p, name)
    if np.isnan(p).any():
        raise Invalid(f"{name} contains NaN; remove or impute those rows before computing metrics")
    if (p < 0.0).any() or (p > 1.0).any():
        raise Invalid(
            f"{name} must be probabilities in [0, 1], got values from {float(p.min())} to {float(p.max())}; "
            "pass predicted probabilities (e.g. apply a sigmoid to raw scores)"
        )
    return y, p
