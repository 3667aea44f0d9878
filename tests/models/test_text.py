"""The tokenizer text models carry: one encode for training and serving, settings as plain data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from openlearner.errors import Invalid
from openlearner.models.text import PAD, UNKNOWN, Tokenizer

TEXTS = ["Free entry: win a prize now!", "Are we meeting now?", "win WIN win", "It's fine, we'll see"]


def test_encode_pads_truncates_and_marks_unknown_words() -> None:
    tokenizer = Tokenizer(max_len=4).fit(TEXTS)
    assert tokenizer.vocabulary is not None
    assert tokenizer.vocabulary[:2] == ["win", "now"]  # most frequent first, ties alphabetical
    ids = tokenizer.encode(["win now", "win zebra", "free entry win a prize now", ""])
    assert ids.dtype == np.int64 and ids.shape == (4, 4)
    assert ids[0].tolist() == [2, 3, PAD, PAD]
    assert ids[1].tolist() == [2, UNKNOWN, PAD, PAD]
    assert ids[2, 3] != PAD  # cut after max_len words
    assert ids[3].tolist() == [PAD] * 4
    assert tokenizer.size == len(tokenizer.vocabulary) + 2


def test_words_are_lower_cased_and_split_on_punctuation() -> None:
    tokenizer = Tokenizer().fit(TEXTS)
    assert tokenizer.tokens("It's FINE, we'll see") == ["it's", "fine", "we'll", "see"]
    assert Tokenizer(lowercase=False).fit(["Win win"]).vocabulary == ["Win", "win"]


def test_vocabulary_limits() -> None:
    assert Tokenizer(max_tokens=2).fit(TEXTS).vocabulary == ["win", "now"]
    assert Tokenizer(min_frequency=2).fit(TEXTS).vocabulary == ["win", "now"]  # "we" once, "we'll" once
    assert Tokenizer(min_frequency=2).fit([*TEXTS, "we"]).vocabulary == ["win", "now", "we"]
    with pytest.raises(Invalid, match="min_frequency"):
        Tokenizer(min_frequency=50).fit(TEXTS)


def test_settings_and_vocabulary_round_trip_through_json() -> None:
    tokenizer = Tokenizer(max_len=6, lowercase=True, min_frequency=1).fit(TEXTS)
    data = json.loads(json.dumps(tokenizer.to_dict()))  # plain data, never a pickle
    again = Tokenizer.from_dict(data)
    assert again == tokenizer
    probe = ["win a free prize", "unseen words only", "We'll MEET now"]
    assert np.array_equal(again.encode(probe), tokenizer.encode(probe))


def test_serving_needs_no_torch() -> None:
    code = (
        "import sys; from openlearner.models.text import Tokenizer; "
        "t = Tokenizer().fit(['a b']); Tokenizer.from_dict(t.to_dict()).encode(['a']); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_texts_from_arrow_numpy_and_bytes() -> None:
    tokenizer = Tokenizer(max_len=3).fit(TEXTS)
    expected = tokenizer.encode(["win now", "are we"])
    assert np.array_equal(tokenizer.encode(pa.array(["win now", "are we"])), expected)
    assert np.array_equal(tokenizer.encode(np.array(["win now", "are we"])), expected)
    assert np.array_equal(tokenizer.encode([b"win now", b"are we"]), expected)
    assert np.array_equal(tokenizer.encode(np.array([b"win now", b"are we"], dtype=object)), expected)
    assert np.array_equal(tokenizer.encode(pa.table({"text": ["win now", "are we"], "id": [1, 2]})), expected)
    assert np.array_equal(tokenizer.encode({"body": ["win now", "are we"]}), expected)
    with pytest.raises(Invalid, match="'text' column"):
        tokenizer.encode(pa.table({"a": ["x"], "b": ["y"]}))


def test_bad_input_is_refused() -> None:
    tokenizer = Tokenizer()
    with pytest.raises(Invalid, match="no vocabulary"):
        tokenizer.encode(["a"])
    with pytest.raises(Invalid, match="no vocabulary"):
        tokenizer.to_dict()
    with pytest.raises(Invalid, match="no texts"):
        tokenizer.fit([])
    with pytest.raises(Invalid, match="single string"):
        tokenizer.fit("one text")
    with pytest.raises(Invalid, match=r"texts\[1\] is NoneType"):
        tokenizer.fit(["a", None])
    with pytest.raises(Invalid, match="max_len"):
        Tokenizer(max_len=0)
    with pytest.raises(Invalid, match="regular expression"):
        Tokenizer(pattern="(")


def test_malformed_data_is_refused() -> None:
    good = Tokenizer().fit(TEXTS).to_dict()
    with pytest.raises(Invalid, match="JSON object"):
        Tokenizer.from_dict(["not", "a", "dict"])
    with pytest.raises(Invalid, match="format"):
        Tokenizer.from_dict({**good, "format": "something else"})
    with pytest.raises(Invalid, match="lacks vocabulary"):
        Tokenizer.from_dict({k: v for k, v in good.items() if k != "vocabulary"})
    with pytest.raises(Invalid, match="repeat"):
        Tokenizer.from_dict({**good, "vocabulary": ["a", "a"]})
    with pytest.raises(Invalid, match="max_len"):
        Tokenizer.from_dict({**good, "max_len": -3})
