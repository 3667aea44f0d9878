"""The tokenizer text models carry with them: its settings and vocabulary are plain data.

One function, :meth:`Tokenizer.encode`, turns texts into token ids, both when a model
trains and when the predictor serves it: the predictor rebuilds the tokenizer with
:meth:`Tokenizer.from_dict` from the JSON stored with the model version and feeds the
ids to the ONNX graph. This module imports only numpy and the standard library.

Ids: 0 pads a short text, 1 stands for a word outside the vocabulary, words count from 2
(most frequent first, ties in alphabetical order).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from openlearner.errors import Invalid

__all__ = ["PAD", "UNKNOWN", "Tokenizer", "to_texts"]

PAD, UNKNOWN = 0, 1
_FORMAT = "openlearner.tokenizer/1"
_DEFAULT_PATTERN = r"[^\W_]+(?:'[^\W_]+)?"


def _text_column(texts: Any) -> Any:
    """The column of texts of a table (Arrow, pandas, dict): its ``text`` column, or its only one."""
    if isinstance(texts, dict):
        names = [str(k) for k in texts]
        column = texts.__getitem__
    elif hasattr(texts, "column_names") and hasattr(texts, "column"):
        names, column = list(texts.column_names), texts.column
    elif type(texts).__module__.startswith("pandas") and hasattr(texts, "columns"):
        names = [str(c) for c in texts.columns]
        column = texts.__getitem__
    else:
        return texts
    if "text" in names:
        return column("text")
    if len(names) == 1:
        return column(names[0])
    raise Invalid(f"a table of texts needs a 'text' column or a single column; it has {', '.join(names)}")


def to_texts(texts: Any) -> list[str]:
    """A list of strings from a list, numpy array, Arrow array, pandas Series, or a table's text column."""
    if isinstance(texts, str | bytes):
        raise Invalid("texts must be a sequence of strings, not a single string; wrap it in a list")
    texts = _text_column(texts)
    if hasattr(texts, "to_pylist"):
        texts = texts.to_pylist()
    elif hasattr(texts, "tolist"):
        texts = texts.tolist()
    if not isinstance(texts, Iterable):
        raise Invalid(f"texts must be a sequence of strings, not {type(texts).__name__}")
    out: list[str] = []
    for i, text in enumerate(texts):
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise Invalid(
                f"texts[{i}] is {type(text).__name__}, not a string; fill missing texts with '' first"
            )
        out.append(text)
    return out


class Tokenizer:
    """Lower-cases (optionally), splits words with a regular expression, maps them to ids.

    ``fit`` keeps the ``max_tokens`` most frequent words seen at least ``min_frequency``
    times; ``encode`` returns int64 ``[n, max_len]``, truncating long texts and padding
    short ones with 0.
    """

    def __init__(
        self,
        *,
        max_len: int = 64,
        max_tokens: int = 20000,
        min_frequency: int = 1,
        lowercase: bool = True,
        pattern: str = _DEFAULT_PATTERN,
        vocabulary: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(max_len, int) or max_len < 1:
            raise Invalid(f"max_len must be a positive integer, not {max_len!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise Invalid(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise Invalid(f"min_frequency must be a positive integer, not {min_frequency!r}")
        try:
            self._regex = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise Invalid(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        self.max_len = max_len
        self.max_tokens = max_tokens
        self.min_frequency = min_frequency
        self.lowercase = bool(lowercase)
        self.pattern = pattern
        self.vocabulary: list[str] | None = None
        self._ids: dict[str, int] = {}
        if vocabulary is not None:
            self._set_vocabulary(list(vocabulary))

    def _set_vocabulary(self, words: list[str]) -> None:
        if not all(isinstance(w, str) and w for w in words):
            raise Invalid("a tokenizer vocabulary must be a list of non-empty strings")
        if len(set(words)) != len(words):
            raise Invalid("a tokenizer vocabulary must not repeat a word")
        self.vocabulary = words
        self._ids = {word: i + 2 for i, word in enumerate(words)}

    @property
    def size(self) -> int:
        """Number of ids, the pad and unknown ids included (an embedding table's row count)."""
        return len(self._ids) + 2

    def tokens(self, text: str) -> list[str]:
        """The words of one text, in order."""
        return self._regex.findall(text.lower() if self.lowercase else text)

    def fit(self, texts: Any) -> Tokenizer:
        """Learn the vocabulary from training texts; returns self."""
        items = to_texts(texts)
        if not items:
            raise Invalid("there are no texts to learn a vocabulary from")
        counts: Counter[str] = Counter()
        for text in items:
            counts.update(self.tokens(text))
        kept = [(w, c) for w, c in counts.items() if c >= self.min_frequency]
        kept.sort(key=lambda wc: (-wc[1], wc[0]))
        if not kept:
            raise Invalid(
                f"no word occurs at least {self.min_frequency} time(s) in the texts; lower min_frequency "
                "or check the texts are not empty"
            )
        self._set_vocabulary([w for w, _ in kept[: self.max_tokens]])
        return self

    def encode(self, texts: Any) -> npt.NDArray[np.int64]:
        """Token ids, int64 ``[n, max_len]`` (0 = padding, 1 = unknown word)."""
        if self.vocabulary is None:
            raise Invalid("the tokenizer has no vocabulary yet; call fit(texts) or build it with from_dict")
        items = to_texts(texts)
        ids = np.zeros((len(items), self.max_len), dtype=np.int64)
        for row, text in enumerate(items):
            words = self.tokens(text)[: self.max_len]
            ids[row, : len(words)] = [self._ids.get(w, UNKNOWN) for w in words]
        return ids

    def to_dict(self) -> dict[str, Any]:
        """Settings and vocabulary as JSON-ready data (what the registry stores)."""
        if self.vocabulary is None:
            raise Invalid("the tokenizer has no vocabulary yet; call fit(texts) before saving it")
        return {
            "format": _FORMAT,
            "max_len": self.max_len,
            "max_tokens": self.max_tokens,
            "min_frequency": self.min_frequency,
            "lowercase": self.lowercase,
            "pattern": self.pattern,
            "vocabulary": list(self.vocabulary),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`'s data; malformed data raises ``Invalid``."""
        if not isinstance(data, dict):
            raise Invalid(f"tokenizer data must be a JSON object, not {type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise Invalid(f"tokenizer data has format {data.get('format')!r}; this version reads {_FORMAT!r}")
        missing = [k for k in ("max_len", "lowercase", "pattern", "vocabulary") if k not in data]
        if missing:
            raise Invalid(f"tokenizer data lacks {', '.join(missing)}")
        vocabulary = data["vocabulary"]
        if not isinstance(vocabulary, list):
            raise Invalid("tokenizer data's vocabulary must be a list of strings")
        return cls(
            max_len=data["max_len"],
            max_tokens=data.get("max_tokens", max(1, len(vocabulary))),
            min_frequency=data.get("min_frequency", 1),
            lowercase=data["lowercase"],
            pattern=data["pattern"],
            vocabulary=vocabulary,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        mine = (self.max_len, self.max_tokens, self.min_frequency, self.lowercase, self.pattern)
        theirs = (other.max_len, other.max_tokens, other.min_frequency, other.lowercase, other.pattern)
        return mine == theirs and self.vocabulary == other.vocabulary

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        words = "unfitted" if self.vocabulary is None else f"{len(self.vocabulary)} words"
        return f"Tokenizer(max_len={self.max_len}, {words})"
