"""A multi-layer perceptron over dense features (News Feed / Search-style ranking)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from openlearner.errors import Invalid
from openlearner.models.base import to_matrix
from openlearner.models.nn import TorchClassifier

__all__ = ["MLPClassifier", "Standardize", "dense_layers"]


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training rows' statistics, kept in the exported graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, values: np.ndarray) -> None:
        super().__init__()
        wide = values.astype(np.float64)  # float32 squares of large features would overflow
        mean = wide.mean(axis=0) if wide.shape[0] else np.zeros(wide.shape[1:])
        std = wide.std(axis=0) if wide.shape[0] else np.ones(wide.shape[1:])
        std = np.where(std > 1e-6, std, 1.0)
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_buffer("std", torch.from_numpy(np.asarray(std, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def dense_layers(
    width: int, sizes: Sequence[int], dropout: float, *, last_activation: bool = True
) -> tuple[nn.Sequential, int]:
    """Linear → ReLU (→ Dropout) for each size; returns the stack and its output width."""
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(width, size))
        if last_activation or i < len(sizes) - 1:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width


def check_sizes(name: str, sizes: Any) -> None:
    """Raise ``Invalid`` unless ``sizes`` is a sequence of positive integers."""
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
        raise Invalid(f"{name} must be a sequence of layer widths such as (64, 32), not {sizes!r}")
    if not all(isinstance(s, int) and s > 0 for s in sizes):
        raise Invalid(f"{name} must hold positive integers, not {list(sizes)!r}")


def check_dropout(dropout: Any) -> None:
    """Raise ``Invalid`` unless ``0 <= dropout < 1``."""
    if not 0 <= float(dropout) < 1:
        raise Invalid(f"dropout must be in [0, 1), not {dropout!r}")


class _MLPNetwork(nn.Module):
    def __init__(self, values: np.ndarray, hidden: Sequence[int], dropout: float, n_classes: int) -> None:
        super().__init__()
        self.standardize = Standardize(values)
        self.hidden, width = dense_layers(values.shape[1], hidden, dropout)
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.hidden(self.standardize(x)))
        return out


class MLPClassifier(TorchClassifier):
    """Dense features → standardized → hidden ReLU layers → class logits.

    Takes the same tabular input as every OpenLearner model (Arrow, pandas, dicts or
    arrays, read as float32); the standardization learned in ``fit`` is part of the
    network, so the exported graph takes raw features in ``input`` ``[batch, features]``.
    Missing values are refused: impute them first.
    """

    def __init__(
        self,
        *,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        epochs: int = 20,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int = 3,
        seed: int = 0,
        device: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.device = device
        self.verbose = verbose

    def _validate(self) -> None:
        check_sizes("hidden_sizes", self.hidden_sizes)
        check_dropout(self.dropout)

    def _learn_inputs(self, X: Any) -> None:
        _, self.feature_names_ = to_matrix(X)

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        named = isinstance(X, dict) or hasattr(X, "column_names") or type(X).__module__.startswith("pandas")
        matrix, _ = to_matrix(X, self.feature_names_ if named else None)
        if matrix.shape[1] != len(self.feature_names_):
            raise Invalid(
                f"expected {len(self.feature_names_)} features ({', '.join(self.feature_names_)}), "
                f"got {matrix.shape[1]}"
            )
        missing = ~np.isfinite(matrix).all(axis=0)
        if missing.any():
            names = [self.feature_names_[i] for i in np.flatnonzero(missing)]
            raise Invalid(
                f"MLPClassifier takes no missing values, but column(s) {', '.join(names)} hold NaN/null "
                "(or infinity); impute them first (or use GBDTClassifier, which routes missing values)"
            )
        return {"input": matrix}

    def _build(self, inputs: list[np.ndarray], n_classes: int) -> nn.Module:
        return _MLPNetwork(inputs[0], tuple(self.hidden_sizes), float(self.dropout), n_classes)

    def _row_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((len(self.feature_names_),), torch.float32)]
