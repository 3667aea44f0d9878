"""OpenLearner: an open machine-learning-as-a-service platform.

Feature Store, Flow and Predictor in one package, on a laptop or on engines you already run.
The names below are the public API; importing ``openlearner`` does not import torch,
ray, redis or grpc.
"""

from openlearner.config import Settings
from openlearner.errors import (
    Conflict,
    Corrupt,
    Invalid,
    NotFound,
    OpenLearnerError,
    ParityError,
    Unavailable,
)
from openlearner.features.definitions import Aggregate, Entity, FeatureService, FeatureView, Field, Source
from openlearner.predictor.server import Predictor
from openlearner.workspace import Workspace

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "Conflict",
    "Corrupt",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "Invalid",
    "NotFound",
    "OpenLearnerError",
    "ParityError",
    "Predictor",
    "Settings",
    "Source",
    "Unavailable",
    "Workspace",
    "__version__",
]
