"""Provenance of a model version: who registered it, with which libraries and framework, its metrics.

Everything here becomes plain JSON in the version's row (no pickles).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import math
import platform
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import Any

from openlearner.errors import Invalid

__all__ = ["clean_metrics", "framework_of", "library_versions", "model_serving_metadata", "registering_user"]

LIBRARIES = (
    "openlearner",
    "lightgbm",
    "scikit-learn",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxmltools",
    "skl2onnx",
    "numpy",
)


def registering_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


@functools.cache
def _installed() -> tuple[tuple[str, str], ...]:
    found = [("python", platform.python_version())]
    for name in LIBRARIES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            found.append((name, importlib_metadata.version(name)))
    return tuple(found)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that export and serve models (read once per process)."""
    return dict(_installed())


def clean_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    clean: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise Invalid(f"metric {key!r} is {value!r}; metrics are numbers") from None
        if not math.isfinite(number):
            raise Invalid(f"metric {key!r} is {number}; metrics are finite numbers (JSON has no NaN)")
        clean[str(key)] = number
    return clean


def model_serving_metadata(model: Any) -> dict[str, Any]:
    """The model's ``_serving_metadata()`` (a JSON object), or ``{}`` when it has none."""
    produce = getattr(model, "_serving_metadata", None)
    if not callable(produce):
        return {}
    found = produce()
    if not isinstance(found, dict):
        raise Invalid(
            f"{type(model).__name__}._serving_metadata() returned {type(found).__name__}, not a dict"
        )
    try:
        return dict(json.loads(json.dumps(found, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise Invalid(
            f"{type(model).__name__}._serving_metadata() is not plain JSON ({exc}); the registry stores "
            "no pickles, so give strings, numbers, lists and dicts"
        ) from exc


FRAMEWORKS = {"openlearner.models.gbdt": "lightgbm"}


def framework_of(model: Any) -> str:
    """The framework that trained ``model``, read from the model (importing nothing)."""
    module = type(model).__module__
    if module in FRAMEWORKS:
        return FRAMEWORKS[module]
    if hasattr(model, "network_"):  # OpenLearner's PyTorch families keep their network there
        return "torch"
    return module.split(".")[0]
