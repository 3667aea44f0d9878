"""Predictor: real-time CPU inference for every registered model over OIP v2."""

from openlearner.predictor.dataplane import DataPlane
from openlearner.predictor.server import Predictor, serve

__all__ = ["DataPlane", "Predictor", "serve"]
