"""Gradient-boosted decision trees on LightGBM (Sigma-style tabular models, ads CTR).

Missing values (NaN) are routed by LightGBM natively. Categorical inputs are declared by
name (``categorical_features``), never guessed: their values must be non-negative integer
codes. The levels seen in training are kept with the model (as data); at serving time a
level it never saw — and a missing value in a categorical column — goes to the "unknown"
bucket (code -1, which every categorical split sends to the side of "not one of my
levels"), both in the native model and in the exported graph. :meth:`unknown_levels`
counts them. The trees see each known level as its index among the training levels
(consecutive codes, as LightGBM prefers); the graph does the same mapping in front of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid
from openlearner.models.base import Classifier, Estimator, to_class_labels, to_labels

__all__ = ["UNKNOWN_LEVEL", "GBDTClassifier", "GBDTRegressor"]

#: The code every unknown (or missing) categorical level is mapped to before the trees.
UNKNOWN_LEVEL = -1.0
_REGRESSION_OBJECTIVES = ("regression", "regression_l1", "huber")


class _GBDT(Estimator):
    """What the LightGBM families share: hyper-parameters, categorical levels, training, export."""

    num_trees: int
    num_leaves: int
    learning_rate: float
    min_child_samples: int
    feature_fraction: float
    categorical_features: Sequence[str | int] | None
    boost_from_average: bool
    early_stopping_rounds: int | None
    num_threads: int
    seed: int
    booster_: lgb.Booster
    categories_: dict[str, npt.NDArray[np.float64]]

    def _validate(self) -> None:
        if not isinstance(self.num_trees, int) or self.num_trees < 1:
            raise Invalid(f"num_trees must be a positive integer, not {self.num_trees!r}")
        if not isinstance(self.num_leaves, int) or self.num_leaves < 2:
            raise Invalid(f"num_leaves must be an integer >= 2, not {self.num_leaves!r}")
        if not 0 < float(self.learning_rate) <= 1:
            raise Invalid(f"learning_rate must be in (0, 1], not {self.learning_rate!r}")
        if not 0 < float(self.feature_fraction) <= 1:
            raise Invalid(f"feature_fraction must be in (0, 1], not {self.feature_fraction!r}")

    def _categorical_indices(self, names: list[str]) -> list[int]:
        indices = []
        for key in self.categorical_features or ():
            if isinstance(key, int) and not isinstance(key, bool):
                if not 0 <= key < len(names):
                    raise Invalid(
                        f"categorical feature index {key} is out of range for {len(names)} features"
                    )
                indices.append(key)
            elif key in names:
                indices.append(names.index(key))
            else:
                raise Invalid(
                    f"categorical feature {key!r} is not a column; the columns are {', '.join(names)}"
                )
        return sorted(set(indices))

    def _learn_levels(self, matrix: npt.NDArray[np.float32], names: list[str]) -> None:
        self.categories_ = {}
        for i in self._categorical_indices(names):
            column = matrix[:, i]
            present = column[~np.isnan(column)]
            if present.size and ((present < 0).any() or (present != np.round(present)).any()):
                raise Invalid(
                    f"categorical feature {names[i]!r} must hold non-negative integer codes; "
                    "map its levels to 0, 1, 2, ... first"
                )
            if not present.size:
                raise Invalid(f"categorical feature {names[i]!r} holds no values in the training data")
            self.categories_[names[i]] = np.unique(present).astype(np.float64)

    def _encode(self, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Categorical levels → their index among the training levels (0, 1, ...; LightGBM works best
        with consecutive codes), unknown and missing levels → the unknown bucket. A copy when needed."""
        if not self.categories_:
            return matrix
        matrix = matrix.copy()
        for name, levels in self.categories_.items():
            i = self.feature_names_.index(name)
            known_levels = levels.astype(np.float32)
            column = matrix[:, i]
            known = np.isin(column, known_levels)
            index = np.searchsorted(known_levels, column)
            matrix[:, i] = np.where(known, index, UNKNOWN_LEVEL)
        return matrix

    def unknown_levels(self, X: Any) -> dict[str, int]:
        """Per declared categorical column: rows holding a level not seen in training (nulls excluded)."""
        matrix = self._rows(X, allow_nan=True)
        counts = {}
        for name, levels in self.categories_.items():
            column = matrix[:, self.feature_names_.index(name)]
            counts[name] = int((~np.isin(column, levels.astype(np.float32)) & ~np.isnan(column)).sum())
        return counts

    def _train(
        self,
        matrix: npt.NDArray[np.float32],
        names: list[str],
        labels: npt.NDArray[Any],
        objective: dict[str, Any],
        valid: tuple[npt.NDArray[np.float32], npt.NDArray[Any]] | None,
    ) -> None:
        self._validate()
        self._forget()
        self._learn_levels(matrix, names)
        self.feature_names_ = names
        params: dict[str, Any] = {
            **objective,
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "boost_from_average": self.boost_from_average,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "verbosity": -1,
        }
        categorical = self._categorical_indices(names)
        train = lgb.Dataset(
            self._encode(matrix),
            labels,
            feature_name=names,
            categorical_feature=categorical,
            free_raw_data=True,
        )
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        if valid is not None:
            valid_sets.append(lgb.Dataset(self._encode(valid[0]), valid[1], reference=train))
            if self.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        try:
            booster = lgb.train(
                params, train, num_boost_round=self.num_trees, valid_sets=valid_sets, callbacks=callbacks
            )
        except lgb.basic.LightGBMError as exc:
            self._forget()
            raise Invalid(f"LightGBM refused the training data: {exc}") from exc
        if booster.best_iteration:
            # Keep only the trees up to the best iteration, so the ONNX export and every
            # prediction use exactly the same ensemble.
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        self.booster_ = booster

    def _raw(self, X: Any, **kwargs: Any) -> npt.NDArray[np.float64]:
        matrix = self._encode(self._rows(X, allow_nan=True))
        return np.asarray(self.booster_.predict(matrix, **kwargs), dtype=np.float64)

    def _tree_graph(self, booster: lgb.Booster | None = None) -> Any:
        """The trees as ONNX (onnxmltools), behind the categorical encoding when there is one."""
        from openlearner.models.onnx import lightgbm_graph

        self._check_fitted()
        graph = lightgbm_graph(booster or self.booster_, len(self.feature_names_))
        if self.categories_:
            _prepend_level_encoding(graph, self.feature_names_, self.categories_)
        return graph

    def _onnx_feeds(self, rows: Any) -> dict[str, np.ndarray]:
        return {"input": self._rows(rows, allow_nan=True)}


class GBDTClassifier(_GBDT, Classifier):
    """A binary or multi-class GBDT classifier.

    Two classes (labels 0/1) export ``label``/``probability``; more classes (any labels)
    export ``label`` (the index into ``classes_``) and ``probabilities`` ``[batch, k]``.
    With ``early_stopping_rounds`` and an ``eval_set`` it stops when the validation log
    loss has not improved for that many trees.
    """

    def __init__(
        self,
        *,
        num_trees: int = 200,
        num_leaves: int = 31,
        learning_rate: float = 0.1,
        min_child_samples: int = 20,
        feature_fraction: float = 1.0,
        categorical_features: Sequence[str | int] | None = None,
        boost_from_average: bool = True,
        early_stopping_rounds: int | None = None,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.num_trees = num_trees
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.categorical_features = categorical_features
        self.boost_from_average = boost_from_average
        self.early_stopping_rounds = early_stopping_rounds
        self.num_threads = num_threads
        self.seed = seed

    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> GBDTClassifier:
        """Train on ``X`` (Arrow/pandas/array) and class labels ``y``; returns self."""
        self._validate()
        matrix, names = self._training_matrix(X, allow_nan=True)
        labels, classes = self._labels(y, matrix.shape[0], None)
        objective: dict[str, Any] = {"objective": "binary"}
        if classes.size > 2:
            objective = {"objective": "multiclass", "num_class": int(classes.size)}
        valid = None
        if eval_set is not None:
            vx, _ = _named(eval_set[0], names)
            valid = (vx, self._labels(eval_set[1], vx.shape[0], classes)[0])
        self._train(matrix, names, labels, objective, valid)
        self.classes_ = classes
        return self

    @staticmethod
    def _labels(y: Any, n: int, classes: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
        if classes is not None and classes.size == 2 and classes.tolist() == [0, 1]:
            return to_labels(y, n), classes
        index, known = to_class_labels(y, n, classes)
        if known.size == 2 and known.tolist() != [0, 1]:
            raise Invalid(f"binary labels must be 0 or 1, got {known.tolist()}; map the positive class to 1")
        return index, known

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Class probabilities, shape (n, classes) in ``classes_`` order."""
        p = self._raw(X)
        if p.ndim == 2:
            return p
        return np.column_stack([1.0 - p, p])

    def _onnx_graph(self, sample: Any = None) -> Any:
        """The export protocol (:mod:`openlearner.models.onnx`): trees, then the canonical head."""
        from openlearner.models.onnx import binary_head, multiclass_head, set_metadata

        converted = self._tree_graph()
        outputs = [o.name for o in converted.graph.output]
        if self.classes_.size == 2:
            return binary_head(converted, probabilities=outputs[1], label=outputs[0])
        graph = multiclass_head(converted, probabilities=outputs[1], label=outputs[0])
        return set_metadata(graph, classes=self.classes_.tolist())

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        proba = self.predict_proba(feeds["input"])
        if self.classes_.size == 2:
            return {"probability": proba[:, 1]}
        return {"probabilities": proba}


class GBDTRegressor(_GBDT):
    """A GBDT regressor; ``objective`` is ``regression`` (L2), ``regression_l1`` or ``huber``."""

    def __init__(
        self,
        *,
        num_trees: int = 200,
        num_leaves: int = 31,
        learning_rate: float = 0.1,
        min_child_samples: int = 20,
        feature_fraction: float = 1.0,
        categorical_features: Sequence[str | int] | None = None,
        boost_from_average: bool = True,
        objective: str = "regression",
        early_stopping_rounds: int | None = None,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.num_trees = num_trees
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.categorical_features = categorical_features
        self.boost_from_average = boost_from_average
        self.objective = objective
        self.early_stopping_rounds = early_stopping_rounds
        self.num_threads = num_threads
        self.seed = seed

    def fit(self, X: Any, y: Any, *, eval_set: tuple[Any, Any] | None = None) -> GBDTRegressor:
        """Train on ``X`` and real-valued targets ``y``; returns self."""
        self._validate()
        if self.objective not in _REGRESSION_OBJECTIVES:
            raise Invalid(
                f"objective must be one of {', '.join(_REGRESSION_OBJECTIVES)}, not {self.objective!r}"
            )
        matrix, names = self._training_matrix(X, allow_nan=True)
        target = _targets(y, matrix.shape[0])
        valid = None
        if eval_set is not None:
            vx, _ = _named(eval_set[0], names)
            valid = (vx, _targets(eval_set[1], vx.shape[0]))
        self._train(matrix, names, target, {"objective": self.objective}, valid)
        return self

    def predict(self, X: Any) -> npt.NDArray[np.float64]:
        """Predicted values, shape (n,)."""
        return self._raw(X)

    def _onnx_graph(self, sample: Any = None) -> Any:
        """Trees summed into the canonical ``prediction`` [batch]."""
        from openlearner.models.onnx import regression_head

        converted = self._tree_graph()
        return regression_head(converted, converted.graph.output[0].name)

    def _parity_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"prediction": self.predict(feeds["input"])}


def _targets(y: Any, n: int) -> npt.NDArray[np.float64]:
    if hasattr(y, "to_numpy") and not isinstance(y, np.ndarray):
        y = y.to_numpy(zero_copy_only=False) if "pyarrow" in type(y).__module__ else y.to_numpy()
    try:
        target = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"regression targets must be numbers: {exc}") from exc
    if target.ndim != 1 or target.shape[0] != n:
        raise Invalid(f"targets must be one value per row ({n}), got shape {target.shape}")
    if not np.isfinite(target).all():
        raise Invalid("targets hold NaN or infinite values; drop those rows first")
    return target


def _named(X: Any, names: list[str]) -> tuple[npt.NDArray[np.float32], list[str]]:
    from openlearner.models.base import is_table, to_matrix

    matrix, got = to_matrix(X, names if is_table(X) else None)
    if matrix.shape[1] != len(names):
        raise Invalid(f"the eval_set has {matrix.shape[1]} features; the training data has {len(names)}")
    return matrix, got


def _prepend_level_encoding(graph: Any, names: list[str], categories: dict[str, np.ndarray]) -> None:
    """Put the level encoding in front of the trees: a known level → its index, else ``UNKNOWN_LEVEL``."""
    from onnx import TensorProto, helper

    g = graph.graph
    for node in g.node:
        node.input[:] = ["__encoded" if i == "input" else i for i in node.input]
    nodes: list[Any] = []
    inits = [
        helper.make_tensor("__unknown", TensorProto.FLOAT, [], [UNKNOWN_LEVEL]),
        helper.make_tensor("__zero", TensorProto.FLOAT, [], [0.0]),
    ]
    columns = []
    for i, name in enumerate(names):
        inits.append(helper.make_tensor(f"__col{i}", TensorProto.INT64, [1], [i]))
        nodes.append(helper.make_node("Gather", ["input", f"__col{i}"], [f"__x{i}"], axis=1))
        if name not in categories:
            columns.append(f"__x{i}")
            continue
        levels = categories[name].astype(np.float32)
        inits.append(helper.make_tensor(f"__levels{i}", TensorProto.FLOAT, [1, levels.size], levels.tolist()))
        # Opset 9 (what the tree converter emits) has no float Equal: x == level is
        # not(|x - level| > 0), and NaN (equal to nothing) is excluded explicitly.
        nodes += [
            helper.make_node("Sub", [f"__x{i}", f"__levels{i}"], [f"__d{i}"]),
            helper.make_node("Abs", [f"__d{i}"], [f"__ad{i}"]),
            helper.make_node("Greater", [f"__ad{i}", "__zero"], [f"__ne{i}"]),
            helper.make_node("Not", [f"__ne{i}"], [f"__eq{i}"]),
            helper.make_node("Cast", [f"__eq{i}"], [f"__eqf{i}"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", [f"__eqf{i}"], [f"__anyf{i}"], axes=[1], keepdims=1),
            helper.make_node("Cast", [f"__anyf{i}"], [f"__hit{i}"], to=TensorProto.BOOL),
            helper.make_node("IsNaN", [f"__x{i}"], [f"__nan{i}"]),
            helper.make_node("Not", [f"__nan{i}"], [f"__present{i}"]),
            helper.make_node("And", [f"__hit{i}", f"__present{i}"], [f"__known{i}"]),
            # The level's index among the training levels, as the trees were trained on.
            helper.make_node("ArgMax", [f"__eqf{i}"], [f"__index{i}"], axis=1, keepdims=1),
            helper.make_node("Cast", [f"__index{i}"], [f"__indexf{i}"], to=TensorProto.FLOAT),
            helper.make_node("Where", [f"__known{i}", f"__indexf{i}", "__unknown"], [f"__enc{i}"]),
        ]
        columns.append(f"__enc{i}")
    nodes.append(helper.make_node("Concat", columns, ["__encoded"], axis=1))
    old = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *old])
    g.initializer.extend(inits)
