"""The real-data examples' cores on small slices of the shared data (skipped without it; failed under CI)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _example(name: str) -> ModuleType:
    """An example script as a module (registered, as its dataclasses need)."""
    key = f"openlearner_example_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def test_ads_ctr_study_on_a_slice(shared_data: Callable[[str], Path]) -> None:
    example = _example("ads_ctr_talkingdata")
    table = example.load(shared_data(example.CSV))
    # A window of the log in time: the last 30,000 training clicks, the test day's first 8,000.
    _, _, test = example.features(table)
    sliced = table.slice(int((~test).sum()) - 30_000, 38_000)
    results = example.study(sliced, rate=0.2, parity_rows=300, num_trees=20)
    assert [r.model.split(" (")[0] for r in results[1:]] == [
        name for name in ("LR", "online LR", "GBDT", "GBDT+LR") for _ in range(2)
    ]
    assert example.failures(results, ne_share=0.95, min_auc=0.7) == []
    assert all(r.parity < 1e-5 for r in results[1:])
    assert "| GBDT+LR | w=0.2 |" in example.table_text(results)


def test_trailing_counts_see_only_the_past() -> None:
    import numpy as np

    example = _example("ads_ctr_talkingdata")
    keys = np.array([1, 1, 2, 1, 1])
    seconds = np.array([0, 0, 10, 3600, 7 * 3600])
    # Row 0 and 1 share an instant (neither sees the other); row 3 sees rows 0, 1; row 4 (7 h
    # later) sees only row 3, within the six-hour window.
    assert example._trailing_counts(keys, seconds).tolist() == [0, 0, 0, 2, 1]


def test_kdd_studies_on_a_slice(shared_data: Callable[[str], Path]) -> None:
    example = _example("kdd99_intrusion")
    train = example.load(shared_data(example.TRAIN), rows=30_000)
    test = example.load(shared_data(example.TEST), rows=10_000)
    classified = example.classify(train, test, num_trees=10, parity_rows=300)
    detected = example.detect(train, test, num_trees=15, parity_rows=300)
    assert classified.figures["accuracy"] > classified.baseline["accuracy"]
    assert detected.figures["AUC"] > 0.8
    assert classified.parity < 1e-5 and detected.parity < 1e-5
    assert "normal-only" in example.table_text([classified, detected])
