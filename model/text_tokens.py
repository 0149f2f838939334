"""Character tokenizer for review text in any script (torch-free; used by serving).

Text is normalised (Unicode NFKC, case-folded, control characters dropped, runs of
whitespace collapsed to one space, trimmed) and split into characters (code
points).  Each character becomes one integer id:

* ``0`` is padding;
* ``1 .. len(chars)`` are the characters seen at least ``min_count`` times in the
  training split (most frequent first);
* every other character is hashed by its code point into one of ``hash_buckets``
  ids after those, so an unseen script or emoji still gets a stable id.

Sub-word n-grams are not built here: the model hashes character bigrams and
trigrams from neighbouring ids inside its graph.

Texts longer than ``max_len`` characters keep their head and tail (the first
``max_len // 2`` characters and the last ``max_len - max_len // 2``): reviews tend
to state the verdict at the start or at the end.  An empty or whitespace-only text
encodes to length 0 (a row of padding); the caller decides what that means
(serving answers ``neutral`` with the flag ``empty_text``).

A tokenizer may carry a :class:`~recstream.model.sentiment_lexicon.SentimentLexicon`:
:meth:`TextTokenizer.lexicon_features` then gives the model's second text input,
a few lexicon scores per text (zeros without a lexicon).

:func:`word_char_mask` tells the model which ids are word characters (letters,
digits and apostrophes of the scripts written with spaces between words), from
which it hashes whole words and word pairs inside its graph.

Encoding uses numpy only: code points come from one ``utf-32`` encode, ids from one
lookup table over all of Unicode.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from recstream.model.sentiment_lexicon import LEXICON_FEATURES, SentimentLexicon

TOKENIZER_KIND: Final = "char-hash"
TOKENIZER_VERSION: Final = 2
PAD_ID: Final = 0
#: One past the largest Unicode code point.
UNICODE_SIZE: Final = 0x110000

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


def normalize(text: str) -> str:
    """NFKC, case-fold, drop control/format characters, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _CONTROL.sub("", text)
    return " ".join(text.split())


#: Code points from here up (CJK and later blocks) are never word characters:
#: those scripts are written without spaces, so they rely on character n-grams.
_SPACELESS_FROM: Final = 0x2E80


def is_word_char(char: str) -> bool:
    """Letters, digits and apostrophes of scripts that separate words by spaces."""
    return ord(char) < _SPACELESS_FROM and (char.isalnum() or char in "'\u2019")


class TextTokenizer:
    """Maps texts to right-padded character id arrays; see the module docstring."""

    def __init__(
        self, chars: str, hash_buckets: int = 512, lexicon: SentimentLexicon | None = None
    ) -> None:
        if hash_buckets < 1:
            raise ValueError("hash_buckets must be >= 1")
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be distinct")
        self.chars = chars
        self.hash_buckets = hash_buckets
        self.lexicon = lexicon
        known = len(chars)
        table = (known + 1 + np.arange(UNICODE_SIZE, dtype=np.int64) % hash_buckets).astype(
            np.int32
        )
        if known:
            code_points = np.fromiter((ord(c) for c in chars), dtype=np.int64, count=known)
            table[code_points] = np.arange(1, known + 1, dtype=np.int32)
        self._table = table

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding included (the model's embedding size)."""
        return 1 + len(self.chars) + self.hash_buckets

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        *,
        min_count: int = 2,
        max_chars: int = 12_000,
        hash_buckets: int = 512,
        lexicon: SentimentLexicon | None = None,
    ) -> TextTokenizer:
        """Learn the character list from training texts (most frequent first)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(normalize(text))
        kept = [c for c, n in counts.items() if n >= min_count and c != " "]
        kept.sort(key=lambda c: (-counts[c], ord(c)))
        # The space is always known: it separates English words.
        chars = " " + "".join(kept[: max_chars - 1])
        return cls(chars, hash_buckets, lexicon)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored in checkpoints and ONNX metadata)."""
        return {
            "kind": TOKENIZER_KIND,
            "version": TOKENIZER_VERSION,
            "chars": self.chars,
            "hash_buckets": self.hash_buckets,
            "lexicon": None if self.lexicon is None else self.lexicon.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextTokenizer:
        """Rebuild a tokenizer written by :meth:`to_dict`."""
        if data.get("kind") != TOKENIZER_KIND or data.get("version") != TOKENIZER_VERSION:
            raise ValueError(
                f"unsupported tokenizer {data.get('kind')!r} v{data.get('version')!r}; "
                f"expected {TOKENIZER_KIND!r} v{TOKENIZER_VERSION}"
            )
        lexicon = data.get("lexicon")
        return cls(
            str(data["chars"]),
            int(data["hash_buckets"]),
            None if lexicon is None else SentimentLexicon.from_dict(lexicon),
        )

    def encode(self, text: str, max_len: int) -> npt.NDArray[np.int64]:
        """Ids of one text, at most ``max_len`` of them (head and tail kept)."""
        return self._ids(normalize(text), max_len)

    def _ids(self, clean: str, max_len: int) -> npt.NDArray[np.int64]:
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        if not clean:
            return np.zeros(0, dtype=np.int64)
        code_points = np.frombuffer(clean.encode("utf-32-le"), dtype=np.uint32)
        ids = self._table[code_points].astype(np.int64)
        if ids.shape[0] > max_len:
            head = max_len // 2
            ids = np.concatenate([ids[:head], ids[ids.shape[0] - (max_len - head) :]])
        return ids

    def encode_batch(
        self, texts: Sequence[str], max_len: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(tokens int64[B, T], lengths int64[B])``, right-padded with 0.

        ``T`` is the longest encoded text in the batch (at least 1, so an all-empty
        batch still has a column).
        """
        return pad_rows([self.encode(text, max_len) for text in texts])

    def inputs(
        self, texts: Sequence[str], max_len: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(tokens, lengths, lexicon)`` for the model, each text normalised once."""
        clean = [normalize(text) for text in texts]
        tokens, lengths = pad_rows([self._ids(text, max_len) for text in clean])
        return tokens, lengths, self._scores(clean)

    def lexicon_features(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``float32 [B, LEXICON_FEATURES]``: the lexicon's scores, zeros without one."""
        return self._scores([normalize(text) for text in texts])

    def _scores(self, clean: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.lexicon is None:
            return np.zeros((len(clean), LEXICON_FEATURES), dtype=np.float32)
        return self.lexicon.features_batch(clean)


def pad_rows(
    rows: Sequence[npt.NDArray[np.int64]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad encoded rows into ``(tokens [B, T], lengths [B])`` (``T`` at least 1)."""
    lengths = np.fromiter((r.shape[0] for r in rows), dtype=np.int64, count=len(rows))
    width = max(1, int(lengths.max())) if rows else 1
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : row.shape[0]] = row
    return tokens, lengths


def word_char_mask(tokenizer: TextTokenizer) -> npt.NDArray[np.bool_]:
    """``bool[vocab_size]``: which ids are word characters (hashed ids never are)."""
    mask = np.zeros(tokenizer.vocab_size, dtype=bool)
    for index, char in enumerate(tokenizer.chars, start=1):
        mask[index] = is_word_char(char)
    return mask
