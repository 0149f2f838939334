"""Feature encoding shared by training and serving."""

from __future__ import annotations

from recstream.model import features


def test_query_hashes_are_stable_padded_and_in_range() -> None:
    hashes = features.query_hashes("Red Running shoes")
    assert hashes == features.query_hashes("red running SHOES")
    assert len(hashes) == features.WORDS_PER_SEARCH
    assert hashes[-1] == features.PAD
    assert all(0 < h < features.WORD_BUCKETS for h in hashes[:3])


def test_query_words_handle_chinese_and_punctuation() -> None:
    assert features.query_words("红色 跑鞋, size-42!") == ["红色", "跑鞋", "size", "42"]
    assert features.query_hashes("") == [features.PAD] * features.WORDS_PER_SEARCH


def test_action_ids_leave_zero_for_padding() -> None:
    assert features.PAD not in features.ACTION_IDS.values()
    assert max(features.ACTION_IDS.values()) + 1 == features.N_ACTIONS
