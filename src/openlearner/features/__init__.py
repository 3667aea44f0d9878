"""Feature Store: shared feature definitions, point-in-time training sets, online values."""

from openlearner.features.definitions import (
    Aggregate,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Source,
    parse_duration,
)
from openlearner.features.store import FeatureStore

__all__ = [
    "Aggregate",
    "Entity",
    "FeatureService",
    "FeatureStore",
    "FeatureView",
    "Field",
    "Source",
    "parse_duration",
]
