"""Synthetic data sets with a planted, documented ground truth.

``simulate_ads`` produces an ads click log (one row per impression) whose click probability
follows a known logistic model that drifts from day to day, so features, training and
evaluation can be exercised end to end and checked against the truth.
"""

from __future__ import annotations

from openlearner.datasets.ads import simulate_ads

__all__ = ["simulate_ads"]
