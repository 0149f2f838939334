"""The benchmark's peer methods work offline and follow their label rules."""

from __future__ import annotations

import pytest

from recstream.model.sentiment_peers import TextBlobPeer, TfidfLogRegPeer, VaderPeer

BINARY = ["negative", "positive"]
THREE = ["negative", "neutral", "positive"]


def test_vader_rules() -> None:
    vader = VaderPeer()
    texts = ["I love it, great phone!", "Terrible, it broke.", "It is a phone."]
    assert vader.predict(texts, THREE) == ["positive", "negative", "neutral"]
    # binary: not positive by the 0.05 rule means negative
    assert vader.predict(texts, BINARY) == ["positive", "negative", "negative"]


def test_textblob_offline() -> None:
    blob = TextBlobPeer()
    assert blob.predict(["A wonderful, excellent case.", "Awful and bad."], BINARY) == [
        "positive",
        "negative",
    ]
    assert blob.predict(["It is a phone."], THREE) == ["neutral"]


def test_tfidf_learns_both_languages() -> None:
    pos = ["很好 喜欢", "good love it", "质量很好", "great value", "非常喜欢", "love this"]
    neg = ["太差 失望", "bad broke", "质量太差", "awful value", "非常失望", "hate this"]
    peer = TfidfLogRegPeer(grid=(1.0, 10.0)).fit(
        pos[:4] + neg[:4],
        ["positive"] * 4 + ["negative"] * 4,
        pos[4:] + neg[4:],
        ["positive"] * 2 + ["negative"] * 2,
    )
    assert peer.chosen_c in (1.0, 10.0)
    assert peer.predict(["很好", "太差", "love", "bad"], BINARY) == [
        "positive",
        "negative",
        "positive",
        "negative",
    ]


def test_tfidf_needs_fit() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        TfidfLogRegPeer().predict(["x"], BINARY)
