"""Lexicon scores of a review: a few rule-adjusted sums of word valences (torch-free).

The sentiment model takes these as a small extra input beside the characters: a
public lexicon knows thousands of polar English words that a 1,000-sentence
training set never shows.  The lexicon is the word list with mean valences (-4 ..
+4) that ships inside the ``vaderSentiment`` package; it is read once at training
time and stored in the model's metadata (serving never imports that package).

Rules, over the words of a text already normalised by
:func:`recstream.model.text_tokens.normalize` (the tokenizer calls this module):

* a word's valence is its lexicon entry (0 if it has none);
* a negation among the three words before it flips and damps it (x -0.74);
* an intensifier among the three words before it adds 0.293 in the valence's
  direction (0.95x and 0.9x that for the second and third word back); a
  softener takes the same amount away;
* in a text with "but", valences before the first "but" count half, after it
  one and a half times;
* each "!" (at most 4) adds 0.292 in the direction of the sum.

The scaling constants are the ones the VADER paper (Hutto and Gilbert, 2014)
reports; the word lists and the code are this module's.  Features, in order:
``sum / sqrt(sum**2 + 15)`` (in -1 .. 1), and the positive and the negative parts of
the sum as ``x / (1 + x)``.  Text without lexicon words (Chinese, for one) scores
``(0, 0, 0)``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

#: Number of features per text (the model's ``lexicon`` input width).
LEXICON_FEATURES: Final = 3
LEXICON_KIND: Final = "valence-rules"
LEXICON_VERSION: Final = 1

_NEGATION_SCALE: Final = -0.74
_BOOST: Final = 0.293
_BOOST_DECAY: Final = (1.0, 0.95, 0.9)
_EXCLAMATION: Final = 0.292
_NORMALISER: Final = 15.0

_NEGATIONS: Final = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "nowhere",
        "cannot",
        "without",
        "hardly",
        "rarely",
        "seldom",
        "barely",
        "dont",
        "didnt",
        "doesnt",
        "isnt",
        "wasnt",
        "werent",
        "arent",
        "wont",
        "wouldnt",
        "couldnt",
        "shouldnt",
        "cant",
        "aint",
        "hasnt",
        "havent",
        "hadnt",
    ]
)
_INTENSIFIERS: Final = frozenset(
    [
        "very",
        "really",
        "extremely",
        "so",
        "totally",
        "absolutely",
        "completely",
        "highly",
        "incredibly",
        "truly",
        "super",
        "quite",
        "most",
        "especially",
        "definitely",
        "too",
        "utterly",
        "thoroughly",
        "much",
        "pretty",
    ]
)
_SOFTENERS: Final = frozenset(
    ["slightly", "somewhat", "kinda", "sorta", "little", "marginally", "partly", "occasionally"]
)
#: Words (letters, digits, inner apostrophes) and the common emoticons.
_TOKEN: Final = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|[:;=8][-'^]?[()\[\]dp/\\|*3o]|<3")


def _is_negation(word: str) -> bool:
    return word in _NEGATIONS or word.endswith(("n't", "n\u2019t"))


@dataclass(frozen=True)
class SentimentLexicon:
    """Word valences (-4 .. +4, keys normalised) and the rules of the module docstring."""

    valence: dict[str, float]

    @classmethod
    def from_vader_package(cls) -> SentimentLexicon:
        """The lexicon file shipped in the installed ``vaderSentiment`` package."""
        import vaderSentiment

        path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
        return cls.from_lines(path.read_text(encoding="utf-8").splitlines())

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> SentimentLexicon:
        """``word<TAB>mean valence[<TAB>...]`` lines; on a clash the stronger entry wins."""
        valence: dict[str, float] = {}
        for line in lines:
            parts = line.split("\t")
            if len(parts) < 2 or not parts[0].strip():
                continue
            word = unicodedata.normalize("NFKC", parts[0].strip()).casefold()
            value = float(parts[1])
            if abs(value) > abs(valence.get(word, 0.0)):
                valence[word] = value
        return cls(valence)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored in checkpoints and ONNX metadata)."""
        return {"kind": LEXICON_KIND, "version": LEXICON_VERSION, "valence": self.valence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentimentLexicon:
        """Rebuild a lexicon written by :meth:`to_dict`."""
        if data.get("kind") != LEXICON_KIND or data.get("version") != LEXICON_VERSION:
            raise ValueError(
                f"unsupported lexicon {data.get('kind')!r} v{data.get('version')!r}; "
                f"expected {LEXICON_KIND!r} v{LEXICON_VERSION}"
            )
        return cls({str(k): float(v) for k, v in dict(data["valence"]).items()})

    def word_valences(self, text: str) -> list[float]:
        """Rule-adjusted valence of every word of normalised ``text`` (0 if not in the lexicon)."""
        words = _TOKEN.findall(text)
        values = []
        for i, word in enumerate(words):
            value = self.valence.get(word, 0.0)
            if value:
                before = words[max(0, i - 3) : i]
                for back, previous in enumerate(reversed(before)):
                    if previous in _INTENSIFIERS:
                        value += math.copysign(_BOOST * _BOOST_DECAY[back], value)
                    elif previous in _SOFTENERS:
                        value -= math.copysign(_BOOST * _BOOST_DECAY[back], value)
                if any(_is_negation(previous) for previous in before):
                    value *= _NEGATION_SCALE
            values.append(value)
        if "but" in words:
            turn = words.index("but")
            values = [v * (0.5 if i < turn else 1.5) for i, v in enumerate(values)]
        return values

    def features(self, text: str) -> tuple[float, float, float]:
        """``(compound, positive part, negative part)`` of normalised ``text``."""
        values = self.word_valences(text)
        total = sum(values)
        if total:
            total += math.copysign(_EXCLAMATION * min(4, text.count("!")), total)
        positive = sum(v for v in values if v > 0)
        negative = -sum(v for v in values if v < 0)
        return (
            total / math.sqrt(total * total + _NORMALISER),
            positive / (1.0 + positive),
            negative / (1.0 + negative),
        )

    def features_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``float32 [len(texts), LEXICON_FEATURES]`` of normalised texts."""
        out = np.zeros((len(texts), LEXICON_FEATURES), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self.features(text)
        return out
