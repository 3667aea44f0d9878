"""Model families, evaluation metrics and ONNX export.

Families are imported on first use, so serving (which only needs ONNX Runtime) never
imports a training framework.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openlearner.models.base import Classifier, NotFittedError
    from openlearner.models.gbdt import GBDTClassifier

__all__ = ["Classifier", "GBDTClassifier", "NotFittedError"]

_WHERE = {"Classifier": "base", "NotFittedError": "base", "GBDTClassifier": "gbdt"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"openlearner.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'openlearner.models' has no attribute {name!r}")
