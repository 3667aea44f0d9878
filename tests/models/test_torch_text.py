"""LSTMClassifier: texts in, the tokenizer carried as data, the serving path reproduced."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from openlearner.errors import Invalid
from openlearner.models import LSTMClassifier
from openlearner.models.onnx import export, to_onnx
from openlearner.models.text import Tokenizer

torch.set_num_threads(1)  # small networks: one thread beats several competing for busy cores


@pytest.fixture(scope="module")
def sms(shared_data: Callable[[str], Path]) -> tuple[list[str], np.ndarray]:
    with shared_data("text/SMSSpamCollection.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = rows[:1600]
    return [r[1] for r in rows], np.array([r[0] for r in rows])


@pytest.fixture(scope="module")
def spam_model(sms: tuple[list[str], np.ndarray]) -> LSTMClassifier:
    texts, labels = sms
    model = LSTMClassifier(max_len=30, embedding_dim=16, hidden_size=16, epochs=6, learning_rate=5e-3, seed=0)
    return model.fit(texts[:1200], labels[:1200])


def test_spam_is_told_from_ham_on_real_messages(
    spam_model: LSTMClassifier, sms: tuple[list[str], np.ndarray]
) -> None:
    texts, labels = sms
    assert spam_model.classes_.tolist() == ["ham", "spam"]
    predicted = spam_model.predict(texts[1200:])
    accuracy = float(np.mean(predicted == labels[1200:]))
    majority = float(np.mean(labels[1200:] == "ham"))
    assert accuracy > majority + 0.04 and accuracy > 0.92, (accuracy, majority)


def test_the_serving_path_gives_the_models_probabilities(
    spam_model: LSTMClassifier, sms: tuple[list[str], np.ndarray]
) -> None:
    texts, _ = sms
    metadata = json.loads(json.dumps(spam_model._serving_metadata()))  # what the registry stores
    assert metadata["text_input"] == "text"
    tokenizer = Tokenizer.from_dict(metadata["tokenizer"])
    graph = to_onnx(spam_model, texts[1200:1300])
    assert [i.name for i in graph.graph.input] == ["tokens"]
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = [*texts[1200:1300], "", "zzzz qqqq unseen words", "WINNER!! Claim your free prize now"]
    label, probability = session.run(None, {"tokens": tokenizer.encode(probe)})
    expected = spam_model.predict_proba(probe)[:, 1]
    assert np.max(np.abs(probability - expected)) < 1e-5
    assert np.array_equal(spam_model.classes_[label], spam_model.predict(probe))
    _, report = export(spam_model, probe)
    assert report.passed


def test_the_tokenizer_is_learned_from_the_training_texts_only() -> None:
    texts = ["good day", "bad day", "good good", "bad bad"] * 20
    model = LSTMClassifier(max_len=5, embedding_dim=4, hidden_size=4, epochs=1).fit(texts, [1, 0, 1, 0] * 20)
    assert sorted(model.tokenizer_.vocabulary or []) == ["bad", "day", "good"]
    assert model.tokenizer_.max_len == 5
    assert model._serving_metadata()["tokenizer"] == model.tokenizer_.to_dict()


def test_bad_text_input() -> None:
    with pytest.raises(Invalid, match="single string"):
        LSTMClassifier(epochs=1).fit("just one text", [1])
    with pytest.raises(Invalid, match="not a string"):
        LSTMClassifier(epochs=1).fit(["a", 3], [0, 1])
    with pytest.raises(Invalid, match="no texts"):
        LSTMClassifier(epochs=1).fit([], [])
    with pytest.raises(Invalid, match="hidden_size"):
        LSTMClassifier(hidden_size=0).fit(["a", "b"], [0, 1])
    model = LSTMClassifier(epochs=1, max_len=4, embedding_dim=4, hidden_size=4).fit(
        ["a b", "c d"] * 10, [0, 1] * 10
    )
    with pytest.raises(Invalid, match="not a string"):
        model.predict([None])
