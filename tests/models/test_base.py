"""Shared input handling: class labels for multi-class models."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from openlearner.errors import Invalid
from openlearner.models.base import to_class_labels


def test_class_labels_index_the_sorted_classes() -> None:
    index, classes = to_class_labels(["b", "a", "c", "a"], 4)
    assert classes.tolist() == ["a", "b", "c"]
    assert index.tolist() == [1, 0, 2, 0] and index.dtype == np.int64
    index, classes = to_class_labels(np.array([2.0, 0.0, 1.0]), 3)
    assert classes.tolist() == [0, 1, 2] and index.tolist() == [2, 0, 1]
    index, classes = to_class_labels(pa.array([3, 7, 3]), 3)
    assert classes.tolist() == [3, 7] and index.tolist() == [0, 1, 0]


def test_known_classes_allow_a_subset_and_refuse_strangers() -> None:
    index, classes = to_class_labels([1, 0], 2, classes=np.array([0, 1, 2]))
    assert index.tolist() == [1, 0] and classes.tolist() == [0, 1, 2]
    with pytest.raises(Invalid, match="not among"):
        to_class_labels([5, 0], 2, classes=np.array([0, 1, 2]))


@pytest.mark.parametrize(
    ("labels", "n", "fragment"),
    [
        ([], 0, "no rows"),
        ([1, 1], 2, "single class"),
        ([1, None], 2, "None"),
        (pa.array([1, None]), 2, "null"),
        ([0.5, 1.0], 2, "fractional"),
        ([np.nan, 1.0], 2, "NaN"),
        ([1, 2, 3], 2, "one value per row"),
    ],
)
def test_bad_class_labels(labels: object, n: int, fragment: str) -> None:
    with pytest.raises(Invalid, match=fragment):
        to_class_labels(labels, n)
