"""Lexicon scores: valences, negation, intensifiers, "but", "!", storage in the tokenizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstream.model.sentiment_lexicon import LEXICON_FEATURES, SentimentLexicon
from recstream.model.text_tokens import TextTokenizer

LEXICON = SentimentLexicon.from_lines(
    ["good\t1.9\t0.9\t[...]", "bad\t-2.5\t0.8", ":)\t2.0\t0.5", "Great\t3.1", "great\t1.0", "x"]
)


def _compound(total: float) -> float:
    return total / math.sqrt(total * total + 15)


def test_lines_are_normalised_and_the_stronger_clash_wins() -> None:
    assert LEXICON.valence == {"good": 1.9, "bad": -2.5, ":)": 2.0, "great": 3.1}


def test_word_valences_follow_the_rules() -> None:
    assert LEXICON.word_valences("good phone") == [1.9, 0.0]
    assert LEXICON.word_valences("not good") == [0.0, pytest.approx(1.9 * -0.74)]
    assert LEXICON.word_valences("isn't that good") == [0.0, 0.0, pytest.approx(1.9 * -0.74)]
    # a negation more than three words back no longer counts
    assert LEXICON.word_valences("not a b c good")[-1] == 1.9
    assert LEXICON.word_valences("very good") == [0.0, pytest.approx(1.9 + 0.293)]
    assert LEXICON.word_valences("very bad") == [0.0, pytest.approx(-2.5 - 0.293)]
    assert LEXICON.word_valences("slightly good") == [0.0, pytest.approx(1.9 - 0.293)]
    assert LEXICON.word_valences("good but bad") == [
        pytest.approx(0.95),
        0.0,
        pytest.approx(-3.75),
    ]
    assert LEXICON.word_valences("works :)") == [0.0, 2.0]


def test_features() -> None:
    compound, positive, negative = LEXICON.features("good!!")
    assert compound == pytest.approx(_compound(1.9 + 2 * 0.292))
    assert positive == pytest.approx(1.9 / 2.9) and negative == 0.0
    # exclamation marks (at most four) push in the direction of the sum
    assert LEXICON.features("bad!!!!!!")[0] == pytest.approx(_compound(-2.5 - 4 * 0.292))
    assert LEXICON.features("good and bad")[1:] == (
        pytest.approx(1.9 / 2.9),
        pytest.approx(2.5 / 3.5),
    )
    # no lexicon word: no opinion, exclamation marks or not
    assert LEXICON.features("很好!") == (0.0, 0.0, 0.0)
    assert LEXICON.features("") == (0.0, 0.0, 0.0)
    batch = LEXICON.features_batch(["good", "bad", "phone"])
    assert batch.shape == (3, LEXICON_FEATURES) and batch.dtype == np.float32
    assert batch[0, 0] > 0 > batch[1, 0] and not batch[2].any()


def test_round_trip_and_refusal() -> None:
    assert SentimentLexicon.from_dict(LEXICON.to_dict()) == LEXICON
    with pytest.raises(ValueError, match="unsupported lexicon"):
        SentimentLexicon.from_dict({**LEXICON.to_dict(), "version": 99})


def test_the_tokenizer_carries_the_lexicon_and_normalises_text() -> None:
    tokenizer = TextTokenizer.fit(["good phone"], min_count=1, lexicon=LEXICON)
    restored = TextTokenizer.from_dict(tokenizer.to_dict())
    texts = ["ＧＯＯＤ phone", "Not  GOOD", "手机"]
    scores = restored.lexicon_features(texts)
    assert np.allclose(scores, tokenizer.lexicon_features(texts))
    assert scores[0, 0] > 0 > scores[1, 0] and not scores[2].any()
    plain = TextTokenizer.fit(["good phone"], min_count=1)
    assert TextTokenizer.from_dict(plain.to_dict()).lexicon is None
    assert not plain.lexicon_features(texts).any()
    assert plain.lexicon_features(texts).shape == (3, LEXICON_FEATURES)


def test_the_packaged_lexicon_loads() -> None:
    pytest.importorskip("vaderSentiment", reason="vaderSentiment (train extra) not installed")
    lexicon = SentimentLexicon.from_vader_package()
    assert len(lexicon.valence) > 7000
    assert lexicon.valence["good"] > 0 > lexicon.valence["bad"]


def test_inputs_equal_the_separate_encodings() -> None:
    tokenizer = TextTokenizer.fit(["good phone"], min_count=1, lexicon=LEXICON)
    texts = ["ＧＯＯＤ phone!", "", "not good " * 40, "手机"]
    tokens, lengths, lexicon = tokenizer.inputs(texts, 32)
    expected_tokens, expected_lengths = tokenizer.encode_batch(texts, 32)
    assert np.array_equal(tokens, expected_tokens) and np.array_equal(lengths, expected_lengths)
    assert np.array_equal(lexicon, tokenizer.lexicon_features(texts))
    assert lexicon[0, 0] > 0 > lexicon[2, 0] and not lexicon[1].any()
