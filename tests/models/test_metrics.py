"""Evaluation metrics: hand-computed examples, agreement with scikit-learn, and input validation."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from openlearner.errors import Invalid
from openlearner.models.metrics import auc, calibration, log_loss, normalized_entropy

Y = [1, 0, 0, 1]
P = [0.8, 0.1, 0.3, 0.6]


def test_log_loss_hand_computed() -> None:
    # -(ln 0.8 + ln 0.9 + ln 0.7 + ln 0.6) / 4
    # = (0.2231436 + 0.1053605 + 0.3566749 + 0.5108256) / 4 = 1.1960046 / 4 = 0.2990012
    assert log_loss(Y, P) == pytest.approx(0.2990012, abs=1e-7)


def test_normalized_entropy_hand_computed() -> None:
    # base 0.5: denominator -(0.5 ln 0.5 + 0.5 ln 0.5) = ln 2 = 0.6931472
    # NE = 0.2990012 / 0.6931472 = 0.4313675
    assert normalized_entropy(Y, P, base_rate=0.5) == pytest.approx(0.4313675, abs=1e-7)
    # base None -> b = mean(y) = 0.5, same as above
    assert normalized_entropy(Y, P) == pytest.approx(0.4313675, abs=1e-7)
    # base 0.25: denominator -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.3465736 + 0.2157616 = 0.5623351
    # NE = 0.2990012 / 0.5623351 = 0.5317134
    assert normalized_entropy(Y, P, base_rate=0.25) == pytest.approx(0.5317134, abs=1e-7)


def test_calibration_hand_computed() -> None:
    # mean p = (0.8 + 0.1 + 0.3 + 0.6) / 4 = 0.45; observed = 2 / 4 = 0.5; 0.45 / 0.5 = 0.9
    assert calibration(Y, P) == pytest.approx(0.9)
    assert calibration([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]) == pytest.approx(1.0)


def test_auc_hand_computed_with_ties() -> None:
    # positives score 0.9, 0.4, 0.2; negatives 0.4, 0.6 -> 6 pairs.
    # 0.9 beats both (2); 0.4 ties 0.4 (0.5) and loses to 0.6 (0); 0.2 loses both (0).
    # AUC = 2.5 / 6 = 0.4166667. Ranks: 0.2->1, 0.4,0.4->2.5, 0.6->4, 0.9->5;
    # (5 + 2.5 + 1 - 3*4/2) / (3*2) = 2.5 / 6.
    assert auc([1, 0, 1, 0, 1], [0.9, 0.4, 0.4, 0.6, 0.2]) == pytest.approx(2.5 / 6)
    assert auc(Y, P) == 1.0
    assert auc([0, 1], [0.7, 0.7]) == 0.5
    assert auc([0, 1, 1], [3.0, -1.0, -2.0]) == 0.0  # any real scores, not only probabilities


def test_perfect_and_clipped_predictions() -> None:
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-15), abs=1e-12)
    # A confidently wrong prediction is clipped to 1e-15: loss = -ln(1e-15) / 1 = 34.5387764
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))


def test_constant_prediction_at_base_rate_has_ne_one() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(10_000) < 0.03).astype(int)
    b = float(y.mean())
    assert normalized_entropy(y, np.full(y.size, b)) == pytest.approx(1.0, abs=1e-12)
    assert normalized_entropy(y, np.full(y.size, b), base_rate=b) == pytest.approx(1.0, abs=1e-12)


def test_informative_prediction_has_ne_below_one() -> None:
    rng = np.random.default_rng(1)
    p = 1 / (1 + np.exp(-rng.normal(-3.5, 1.2, 20_000)))
    y = (rng.random(p.size) < p).astype(int)
    assert normalized_entropy(y, p) < 0.95
    assert calibration(y, p) == pytest.approx(1.0, abs=0.1)
    assert auc(y, p) > 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5_000
    y = (rng.random(n) < 0.2).astype(int)
    # Coarse rounding creates many ties; the score is mildly informative.
    p = np.clip(np.round(0.15 + 0.2 * y * rng.random(n) + 0.3 * rng.random(n), 2), 0.01, 0.99)
    assert np.unique(p).size < 100
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-10)
    scores = np.round(rng.normal(size=n) + y, 1)  # real-valued scores with ties
    assert auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_accepts_lists_numpy_and_pyarrow() -> None:
    expected = auc(Y, P), log_loss(Y, P), calibration(Y, P), normalized_entropy(Y, P, 0.3)
    for y, p in [
        (np.array(Y), np.array(P)),
        (np.array(Y, dtype=bool), np.array(P, dtype=np.float32).astype(np.float64)),
        (pa.array(Y), pa.array(P)),
        (pa.chunked_array([[1, 0], [0, 1]]), pa.chunked_array([[0.8], [0.1, 0.3, 0.6]])),
        (tuple(Y), tuple(P)),
    ]:
        got = auc(y, p), log_loss(y, p), calibration(y, p), normalized_entropy(y, p, 0.3)
        assert got == pytest.approx(expected)


ALL_PROB_METRICS = [log_loss, calibration, normalized_entropy]


@pytest.mark.parametrize("metric", [*ALL_PROB_METRICS, auc])
@pytest.mark.parametrize(
    ("y", "p", "fragment"),
    [
        ([1, 0, 1], [0.5, 0.5], "same length"),
        ([], [], "empty"),
        ([1, 0, 2], [0.5, 0.5, 0.5], "only 0 and 1"),
        ([1, 0, 0.5], [0.5, 0.5, 0.5], "only 0 and 1"),
        ([1, 0, float("nan")], [0.5, 0.5, 0.5], "only 0 and 1"),
        ([1, 0, 1], [0.5, float("nan"), 0.5], "NaN"),
        (["a", "b"], [0.5, 0.5], "numbers"),
        ([[1, 0], [0, 1]], [[0.5, 0.5], [0.5, 0.5]], "1-D"),
        (pa.array([1, None, 0]), [0.5, 0.5, 0.5], "null"),
    ],
)
def test_bad_inputs_raise_invalid(metric: object, y: object, p: object, fragment: str) -> None:
    with pytest.raises(Invalid, match=fragment):
        metric(y, p)  # type: ignore[operator]


@pytest.mark.parametrize("metric", ALL_PROB_METRICS)
@pytest.mark.parametrize("p", [[0.5, 1.5], [-0.1, 0.5]])
def test_probabilities_outside_unit_interval_raise_invalid(metric: object, p: list[float]) -> None:
    with pytest.raises(Invalid, match=r"\[0, 1\]"):
        metric([1, 0], p)  # type: ignore[operator]


@pytest.mark.parametrize("base_rate", [0.0, 1.0, -0.2, 1.5, float("nan"), True, "0.5"])
def test_bad_base_rate_raises_invalid(base_rate: object) -> None:
    with pytest.raises(Invalid, match="base_rate"):
        normalized_entropy(Y, P, base_rate=base_rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_degenerate_labels(y: list[int]) -> None:
    p = [0.2, 0.3, 0.4]
    with pytest.raises(Invalid, match="base rate"):
        normalized_entropy(y, p)
    with pytest.raises(Invalid, match="both classes"):
        auc(y, p)
    # An explicit training base rate makes NE well defined.
    assert normalized_entropy(y, p, base_rate=0.3) > 0


def test_calibration_with_no_positives_raises_invalid() -> None:
    with pytest.raises(Invalid, match="observed rate is 0"):
        calibration([0, 0, 0], [0.1, 0.2, 0.3])
    assert calibration([1, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_relative_information_gain_hand_computed() -> None:
    # RIG = 1 - NE = 1 - 0.4313675 = 0.5686325 (base 0.5, see above)
    from openlearner.models.metrics import relative_information_gain

    assert relative_information_gain(Y, P) == pytest.approx(0.5686325, abs=1e-7)
    assert relative_information_gain(Y, P, base_rate=0.25) == pytest.approx(1 - 0.5317134, abs=1e-7)


def test_calibration_curve_hand_computed() -> None:
    from openlearner.models.metrics import CalibrationBin, calibration_curve

    # Two bins: [0, 0.5) holds 0.1, 0.3 (labels 0, 0): mean 0.2, observed 0;
    # [0.5, 1] holds 0.8, 0.6 (labels 1, 1): mean 0.7, observed 1.
    two = calibration_curve(Y, P, bins=2)
    assert two == [
        CalibrationBin(0.0, 0.5, 2, pytest.approx(0.2), 0.0),
        CalibrationBin(0.5, 1.0, 2, 0.7, 1.0),
    ]
    # Four bins: one prediction each; 0.5 and 1.0 fall in the upper bins; empty bins are left out.
    four = calibration_curve([0, 1, 1], [0.1, 0.5, 1.0], bins=4)
    assert [(b.lower, b.count, b.mean_predicted, b.observed_rate) for b in four] == [
        (0.0, 1, 0.1, 0.0),
        (0.5, 1, 0.5, 1.0),
        (0.75, 1, 1.0, 1.0),
    ]
    with pytest.raises(Invalid, match="bins"):
        calibration_curve(Y, P, bins=0)


def test_accuracy_and_per_class_precision_recall_hand_computed() -> None:
    from openlearner.models.metrics import ClassReport, accuracy, precision_recall

    y, pred = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    assert accuracy(y, pred) == pytest.approx(4 / 5)
    # class 0: TP 1 of 1 predicted, 1 actual -> 1, 1
    # class 1: TP 1 (row 4) of 1 predicted, 2 actual -> precision 1, recall 0.5
    # class 2: TP 2 (rows 2, 3) of 3 predicted (rows 1-3), 2 actual -> precision 2/3, recall 1
    assert precision_recall(y, pred) == {
        0: ClassReport(1.0, 1.0, 1),
        1: ClassReport(1.0, 0.5, 2),
        2: ClassReport(pytest.approx(2 / 3), 1.0, 2),
    }
    # A class that is predicted but never true has recall 0 and support 0; strings work too.
    report = precision_recall(["a", "a"], ["a", "b"])
    assert report["b"] == ClassReport(0.0, 0.0, 0) and report["a"] == ClassReport(1.0, 0.5, 2)
    with pytest.raises(Invalid, match="same length"):
        accuracy([1, 2], [1])
    with pytest.raises(Invalid, match="empty"):
        precision_recall([], [])
