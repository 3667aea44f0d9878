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
    from openlearner.models.cnn import CNNClassifier
    from openlearner.models.gbdt import GBDTClassifier, GBDTRegressor
    from openlearner.models.gbdt_lr import GBDTLogisticRegression
    from openlearner.models.linear import LinearSVM, LogisticRegression
    from openlearner.models.lstm import LSTMClassifier
    from openlearner.models.mlp import MLPClassifier
    from openlearner.models.online import OnlineLogisticRegression
    from openlearner.models.ranker import EmbeddingRanker
    from openlearner.models.sampling import NegativeDownsampled, downsample_negatives
    from openlearner.models.text import Tokenizer
    from openlearner.models.torch_wrap import TorchModel
    from openlearner.models.wrapped import WrappedModel, wrap

__all__ = [
    "CNNClassifier",
    "Classifier",
    "EmbeddingRanker",
    "GBDTClassifier",
    "GBDTLogisticRegression",
    "GBDTRegressor",
    "IsolationForest",
    "LSTMClassifier",
    "LinearSVM",
    "LogisticRegression",
    "MLPClassifier",
    "NegativeDownsampled",
    "NotFittedError",
    "OnlineLogisticRegression",
    "Tokenizer",
    "TorchModel",
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
    "MLPClassifier": "mlp",
    "EmbeddingRanker": "ranker",
    "CNNClassifier": "cnn",
    "LSTMClassifier": "lstm",
    "Tokenizer": "text",
    "TorchModel": "torch_wrap",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"openlearner.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'openlearner.models' has no attribute {name!r}")
