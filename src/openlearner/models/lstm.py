"""An LSTM text classifier over token sequences (spam, topics; RNN-style language models)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from openlearner.errors import Invalid
from openlearner.models.mlp import check_dropout
from openlearner.models.nn import TorchClassifier
from openlearner.models.text import PAD, Tokenizer

__all__ = ["LSTMClassifier"]

TOKENS = "tokens"


class _LSTMNetwork(nn.Module):
    """Embeddings → LSTM → mean and max over the real (non-padding) positions → logits."""

    def __init__(
        self, vocabulary: int, embedding_dim: int, hidden: int, dropout: float, n_classes: int
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Texts are padded at the end, so the states at real positions never saw padding.
        states, _ = self.lstm(self.embedding(tokens))
        mask = (tokens != PAD).unsqueeze(-1).to(states.dtype)
        count = mask.sum(dim=1).clamp(min=1.0)
        mean = (states * mask).sum(dim=1) / count
        peak = (states * mask - (1.0 - mask) * 1e4).max(dim=1).values * (count > 0).to(states.dtype)
        out: torch.Tensor = self.out(self.dropout(torch.cat([mean, peak], dim=1)))
        return out


class LSTMClassifier(TorchClassifier):
    """Texts → :class:`~openlearner.models.text.Tokenizer` ids → LSTM → class probabilities.

    ``fit`` learns the tokenizer's vocabulary from the training texts; the model carries it
    as data (``tokenizer_.to_dict()``, also returned by ``_serving_metadata()``), and the
    exported graph takes the ids in ``tokens`` int64 ``[batch, max_len]``. ``X`` is a
    sequence of strings (list, numpy array, pandas Series, Arrow array).
    """

    _input_names = (TOKENS,)

    def __init__(
        self,
        *,
        max_len: int = 64,
        max_tokens: int = 20000,
        min_frequency: int = 1,
        lowercase: bool = True,
        embedding_dim: int = 64,
        hidden_size: int = 64,
        dropout: float = 0.0,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int = 2,
        seed: int = 0,
        device: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.max_len = max_len
        self.max_tokens = max_tokens
        self.min_frequency = min_frequency
        self.lowercase = lowercase
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
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
        for name in ("embedding_dim", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise Invalid(f"{name} must be a positive integer, not {value!r}")
        check_dropout(self.dropout)

    def _learn_inputs(self, X: Any) -> None:
        tokenizer = Tokenizer(
            max_len=self.max_len,
            max_tokens=self.max_tokens,
            min_frequency=self.min_frequency,
            lowercase=self.lowercase,
        )
        self.tokenizer_ = tokenizer.fit(X)

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        return {TOKENS: self.tokenizer_.encode(X)}

    def _build(self, inputs: list[np.ndarray], n_classes: int) -> nn.Module:
        return _LSTMNetwork(
            self.tokenizer_.size, self.embedding_dim, self.hidden_size, float(self.dropout), n_classes
        )

    def _row_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((self.tokenizer_.max_len,), torch.int64)]

    def _serving_metadata(self) -> dict[str, Any]:
        """What serving needs beside the graph: the tokenizer as data and the text input's name."""
        self._check_fitted()
        return {"tokenizer": self.tokenizer_.to_dict(), "text_input": "text"}
