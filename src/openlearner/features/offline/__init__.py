"""Offline stores: point-in-time-correct training sets over event sources."""

from openlearner.features.offline.base import OfflineStore
from openlearner.features.offline.duckdb import DuckDBOfflineStore

__all__ = ["DuckDBOfflineStore", "OfflineStore"]
