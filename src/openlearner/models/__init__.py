"""Model families, evaluation metrics and ONNX export.

Families are imported on first use, so serving (which only needs ONNX Runtime) never
imports a training framework.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openlearner.models.anomaly import IsolationForest
    from openlearner.models.base import Classifier, NotFittedError
    from openlearner.models.gbdt import GBDTClassifier, GBDTRegressor
    from openlearner.models.gbdt_lr import GBDTLogisticRegression
    from openlearner.models.linear import LinearSVM, LogisticRegression
    from openlearner.models.online import OnlineLogisticRegression
    from openlearner.models.sampling import NegativeDownsampled, downsample_negatives
    from openlearner.models.wrapped import WrappedModel, wrap

__all__ = [
    "Classifier",
    "GBDTClassifier",
    "GBDTLogisticRegression",
    "GBDTRegressor",
    "IsolationForest",
    "LinearSVM",
    "LogisticRegression",
    "NegativeDownsampled",
    "NotFittedError",
    "OnlineLogisticRegression",
    "WrappedModel",
    "downsample_negatives",
    "wrap",
]

_WHERE = {
    "Classifier": "base",
    "NotFittedError": "base",
    "GBDTClassifier": "gbdt",
    "GBDTRegressor": "gbdt",
    "GBDTLogisticRegression": "gbdt_lr",
    "IsolationForest": "anomaly",
    "LinearSVM": "linear",
    "LogisticRegression": "linear",
    "OnlineLogisticRegression": "online",
    "NegativeDownsampled": "sampling",
    "downsample_negatives": "sampling",
    "WrappedModel": "wrapped",
    "wrap": "wrapped",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"openlearner.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'openlearner.models' has no attribute {name!r}")
