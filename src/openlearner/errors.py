"""OpenLearner's errors: a small hierarchy that every public entry point raises.

Each error's message says what was wrong and how to fix it. Transports map the class to
their own vocabulary: the CLI prints ``error: <message>`` and exits non-zero, HTTP answers
``http_status`` with ``{"error": <message>}``.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Corrupt",
    "Invalid",
    "NotFound",
    "OpenLearnerError",
    "ParityError",
    "Unavailable",
]


class OpenLearnerError(Exception):
    """Base class of every error OpenLearner raises on purpose."""

    http_status = 500
    exit_code = 1


class Invalid(OpenLearnerError, ValueError):
    """The caller gave something malformed or inconsistent (fix the input and retry)."""

    http_status = 400
    exit_code = 2


class NotFound(OpenLearnerError, LookupError):
    """A named thing (model, version, alias, feature, workspace, artifact) does not exist."""

    http_status = 404
    exit_code = 3


class Conflict(OpenLearnerError):
    """The request clashes with what exists (an incompatible change, a duplicate)."""

    http_status = 409
    exit_code = 4


class Corrupt(OpenLearnerError):
    """Stored data failed its integrity check (an artifact whose sha256 no longer matches)."""

    http_status = 500
    exit_code = 5


class Unavailable(OpenLearnerError):
    """A backend or model is not ready to serve (a service down, a model still loading)."""

    http_status = 503
    exit_code = 6


class ParityError(Invalid):
    """An exported ONNX graph disagrees with its native model beyond the tolerance."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
