"""A DLRM-style ranker: dense features and declared categorical columns (Naumov et al. 2019).

Dense features go through a bottom MLP to a vector of the embedding width; each
categorical column is looked up in its own embedding table; the pairwise dot products of
all these vectors, together with the dense vector, feed a top MLP that gives the class
logits.

Categorical columns are declared (``categorical_columns``), never guessed. Their levels
are integers (ids, hashed values); ``fit`` numbers the levels it saw at least
``min_frequency`` times from 1, and index 0 is reserved for every other level: a level
unseen in training (or too rare, or null) shares that "unknown" embedding, in Python and
in the exported graph alike, which maps raw ids with ``ai.onnx.ml.LabelEncoder``.
:meth:`EmbeddingRanker.count_unknown` counts them per column, and prediction logs the
counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pyarrow as pa
import torch
from onnx import helper
from torch import nn

from openlearner.errors import Invalid
from openlearner.models.base import to_matrix
from openlearner.models.mlp import Standardize, check_dropout, check_sizes, dense_layers
from openlearner.models.nn import TorchClassifier

__all__ = ["EmbeddingRanker"]

logger = logging.getLogger(__name__)

DENSE, CATEGORICAL = "dense", "categorical"
UNKNOWN_INDEX = 0
_NULL = np.iinfo(np.int64).min  # nulls become a level no vocabulary holds: the unknown bucket


class _RankerNetwork(nn.Module):
    pairs: torch.Tensor

    def __init__(
        self,
        dense: np.ndarray,
        cardinalities: Sequence[int],
        dim: int,
        bottom: Sequence[int],
        top: Sequence[int],
        dropout: float,
        n_classes: int,
    ) -> None:
        super().__init__()
        self.standardize = Standardize(dense)
        self.bottom, _ = dense_layers(dense.shape[1], [*bottom, dim], 0.0)
        tables = [nn.Embedding(levels + 1, dim) for levels in cardinalities]
        with torch.no_grad():
            for table in tables:
                nn.init.uniform_(table.weight, -0.05, 0.05)
                table.weight[UNKNOWN_INDEX].zero_()  # neutral until rare levels train it
        self.embeddings = nn.ModuleList(tables)
        count = 1 + len(cardinalities)
        rows, cols = torch.tril_indices(count, count, offset=-1)
        self.register_buffer("pairs", rows * count + cols)
        self.top, width = dense_layers(dim + int(rows.numel()), top, dropout)
        self.out = nn.Linear(width, n_classes)

    def forward(self, dense: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x = self.bottom(self.standardize(dense))
        vectors = [x] + [table(categorical[:, i]) for i, table in enumerate(self.embeddings)]
        stacked = torch.stack(vectors, dim=1)  # [batch, features, dim]
        dots = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)
        out: torch.Tensor = self.out(self.top(torch.cat([x, dots.index_select(1, self.pairs)], dim=1)))
        return out


class EmbeddingRanker(TorchClassifier):
    """DLRM-style classifier over named columns: ``categorical_columns`` are embedded, the rest are dense.

    ``X`` is a table (Arrow, pandas or a dict of columns). The exported graph takes
    ``dense`` float32 ``[batch, len(dense_columns_)]`` and ``categorical`` int64
    ``[batch, len(categorical_columns)]`` holding the raw levels, columns in the fitted order.
    """

    _input_names = (DENSE, CATEGORICAL)

    def __init__(
        self,
        *,
        categorical_columns: Sequence[str] = (),
        dense_columns: Sequence[str] | None = None,
        embedding_dim: int = 16,
        bottom_sizes: Sequence[int] = (64,),
        top_sizes: Sequence[int] = (64, 32),
        min_frequency: int = 1,
        dropout: float = 0.0,
        epochs: int = 10,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int = 2,
        seed: int = 0,
        device: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.categorical_columns = categorical_columns
        self.dense_columns = dense_columns
        self.embedding_dim = embedding_dim
        self.bottom_sizes = bottom_sizes
        self.top_sizes = top_sizes
        self.min_frequency = min_frequency
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
        columns = self.categorical_columns
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
            raise Invalid(
                "EmbeddingRanker needs categorical_columns=[...] naming at least one categorical column "
                "(for dense features alone, use MLPClassifier)"
            )
        if self.dense_columns is not None and isinstance(self.dense_columns, str):
            raise Invalid("dense_columns must be a list of column names, not a single string")
        if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
            raise Invalid(f"embedding_dim must be a positive integer, not {self.embedding_dim!r}")
        if not isinstance(self.min_frequency, int) or self.min_frequency < 1:
            raise Invalid(f"min_frequency must be a positive integer, not {self.min_frequency!r}")
        check_sizes("bottom_sizes", self.bottom_sizes)
        check_sizes("top_sizes", self.top_sizes)
        check_dropout(self.dropout)

    @staticmethod
    def _table(X: Any) -> pa.Table:
        if isinstance(X, dict):
            X = pa.table(X)
        if type(X).__module__.startswith("pandas"):
            X = pa.Table.from_pandas(X, preserve_index=False)
        if not isinstance(X, pa.Table):
            raise Invalid(
                f"EmbeddingRanker reads named columns: pass an Arrow table, a pandas DataFrame or a dict "
                f"of columns, not {type(X).__name__}"
            )
        return X

    def _raw_levels(self, table: pa.Table) -> npt.NDArray[np.int64]:
        missing = [c for c in self.categorical_columns if c not in table.column_names]
        if missing:
            raise Invalid(f"input lacks categorical column(s) {', '.join(missing)}")
        columns = []
        for name in self.categorical_columns:
            column = table.column(name)
            if not (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
                raise Invalid(
                    f"categorical column {name!r} is {column.type}; levels must be integers "
                    "(ids or hashed values): encode it first, e.g. pyarrow.compute.dictionary_encode"
                )
            values = column.cast(pa.int64()).fill_null(_NULL)
            columns.append(values.to_numpy(zero_copy_only=False).astype(np.int64))
        return np.column_stack(columns) if columns else np.empty((table.num_rows, 0), np.int64)

    def _learn_inputs(self, X: Any) -> None:
        table = self._table(X)
        categorical = list(self.categorical_columns)
        if len(set(categorical)) != len(categorical):
            raise Invalid("categorical_columns repeats a column")
        if self.dense_columns is None:
            dense = [c for c in table.column_names if c not in categorical]
        else:
            dense = list(self.dense_columns)
            both = sorted(set(dense) & set(categorical))
            if both:
                raise Invalid(f"column(s) {', '.join(both)} are declared both dense and categorical")
        if not dense:
            raise Invalid(
                "EmbeddingRanker needs at least one dense column beside the categorical ones "
                "(its bottom MLP); add one, e.g. a constant 1.0"
            )
        self.dense_columns_ = dense
        self.feature_names_ = [*dense, *categorical]
        raw = self._raw_levels(table)
        levels = []
        for j in range(raw.shape[1]):
            values, counts = np.unique(raw[:, j], return_counts=True)
            levels.append(values[(counts >= self.min_frequency) & (values != _NULL)])
        self.levels_ = levels

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        table = self._table(X)
        dense, _ = to_matrix(table, self.dense_columns_)
        if not np.isfinite(dense).all():
            bad = [self.dense_columns_[i] for i in np.flatnonzero(~np.isfinite(dense).all(axis=0))]
            raise Invalid(f"dense column(s) {', '.join(bad)} hold NaN/null (or infinity); impute them first")
        return {DENSE: dense, CATEGORICAL: self._raw_levels(table)}

    def _indices(self, raw: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        if raw.ndim != 2 or raw.shape[1] != len(self.levels_):
            raise Invalid(f"expected {len(self.levels_)} categorical columns, got shape {raw.shape}")
        out = np.zeros(raw.shape, dtype=np.int64)
        for j, levels in enumerate(self.levels_):
            if levels.size == 0:
                continue
            at = np.searchsorted(levels, raw[:, j]).clip(max=levels.size - 1)
            out[:, j] = np.where(levels[at] == raw[:, j], at + 1, UNKNOWN_INDEX)
        return out

    def _network_inputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        dense = np.asarray(feeds[DENSE], np.float32)
        if dense.ndim != 2 or dense.shape[1] != len(self.dense_columns_):
            raise Invalid(f"expected {len(self.dense_columns_)} dense features, got shape {dense.shape}")
        return [dense, self._indices(np.asarray(feeds[CATEGORICAL], np.int64))]

    def count_unknown(self, X: Any) -> dict[str, int]:
        """Rows per categorical column whose level maps to the unknown bucket (unseen, rare or null)."""
        self._check_fitted()
        indices = self._indices(self._raw_levels(self._table(X)))
        counts = (indices == UNKNOWN_INDEX).sum(axis=0)
        return {name: int(c) for name, c in zip(self.categorical_columns, counts, strict=True)}

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Class probabilities; levels unknown to the model use the reserved embedding (and are logged)."""
        self._check_fitted()
        feeds = self._feeds(X)
        inputs = self._network_inputs(feeds)
        unknown = (inputs[1] == UNKNOWN_INDEX).sum(axis=0)
        if unknown.any():
            counts = ", ".join(
                f"{name}: {int(c)}" for name, c in zip(self.categorical_columns, unknown, strict=True) if c
            )
            logger.info("%d rows: unknown categorical levels mapped to index 0 (%s)", len(inputs[0]), counts)
        return self._probabilities(inputs)

    def _build(self, inputs: list[np.ndarray], n_classes: int) -> nn.Module:
        return _RankerNetwork(
            inputs[0],
            [int(levels.size) for levels in self.levels_],
            self.embedding_dim,
            tuple(self.bottom_sizes),
            tuple(self.top_sizes),
            float(self.dropout),
            n_classes,
        )

    def _row_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((len(self.dense_columns_),), torch.float32), ((len(self.levels_),), torch.int64)]

    def _example_inputs(self, sample: Any) -> list[torch.Tensor]:
        return [torch.zeros((2, *shape), dtype=dtype) for shape, dtype in self._row_specs()]

    def _onnx_graph(self, sample: Any = None) -> Any:
        """The network's graph, preceded by one LabelEncoder per column: raw levels → indices."""
        graph = super()._onnx_graph(sample)
        return _with_level_lookup(graph, self.levels_)


def _with_level_lookup(model: onnx.ModelProto, levels: list[npt.NDArray[np.int64]]) -> onnx.ModelProto:
    """Rename the graph's ``categorical`` input to indices and compute them from raw levels."""
    graph = model.graph
    indices = "categorical_index"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == CATEGORICAL:
                node.input[i] = indices
    nodes, parts = [], []
    for j, known in enumerate(levels):
        column, part = f"categorical_{j}_raw", f"categorical_{j}_index"
        position = f"categorical_{j}_position"
        graph.initializer.append(helper.make_tensor(position, onnx.TensorProto.INT64, [1], [j]))
        nodes.append(helper.make_node("Gather", [CATEGORICAL, position], [column], axis=1))
        keys = [int(v) for v in known] or [_NULL]  # an empty vocabulary maps everything to unknown
        values = list(range(1, len(known) + 1)) or [UNKNOWN_INDEX]
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [column],
                [part],
                domain="ai.onnx.ml",
                keys_int64s=keys,
                values_int64s=values,
                default_int64=UNKNOWN_INDEX,
            )
        )
        parts.append(part)
    nodes.append(helper.make_node("Concat", parts, [indices], axis=1))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    if not any(o.domain == "ai.onnx.ml" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    onnx.checker.check_model(model)
    return model
