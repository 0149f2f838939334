"""Leave-one-out splits, vocabulary building and the sampled-negatives protocol."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recstream.model.features import FIRST_ITEM, OOV, PAD
from recstream.model.sequences import build_vocab, pad_batch, training_batch, user_histories
from recstream.model.splits import (
    choose_users,
    heldout_positions,
    sample_negatives,
    split_histories,
)
from recstream.streams.records import Click, Review, Search
from recstream.streams.scoring import Token


def views(*items: str) -> list[Token]:
    return [Token(i, "view") for i in items]


def toy_histories(users: int = 30, items: int = 200, length: int = 8) -> dict[str, list[Token]]:
    rng = np.random.default_rng(1)
    return {
        f"u{u}": views(*(f"i{int(x)}" for x in rng.integers(0, items, size=length)))
        for u in range(users)
    }


def test_heldout_positions_skip_searches() -> None:
    tokens = [*views("a", "b"), Token(None, "search", "q"), *views("c"), Token(None, "search", "r")]
    assert heldout_positions(tokens) == (1, 3)
    assert heldout_positions(views("a", "b")) == (-1, -1)


def test_split_keeps_heldout_items_out_of_training() -> None:
    split = split_histories({"u": views("a", "b", "c", "d"), "short": views("a", "e")})
    u = split.users.index("u")
    train = split.train_seq(u)
    assert [split.vocab.item(int(i)) for i in train.items] == ["a", "b"]
    valid_input, valid_target = split.heldout(u, "valid")
    test_input, test_target = split.heldout(u, "test")
    assert split.vocab.item(valid_target) == "c"
    assert split.vocab.item(test_target) == "d"
    assert len(valid_input) == 2 and len(test_input) == 3  # test input includes the valid item
    # users with fewer than 3 items are training data only
    short = split.users.index("short")
    assert len(split.train_seq(short)) == 2
    with pytest.raises(ValueError):
        split.heldout(short, "test")
    assert split.evaluable().tolist() == [u]
    # c and d were never trained on: they rank after every trained item in the vocabulary
    assert split.train_counts["c"] == 0 and split.train_counts["d"] == 0
    assert set(split.vocab.items[-2:]) == {"c", "d"}


def test_vocab_ranked_by_frequency_and_capped() -> None:
    vocab = build_vocab(Counter({"x": 1, "y": 5, "z": 5}), ["x", "y", "z", "w"], max_items=2)
    assert vocab.items == ("y", "z")
    assert vocab.index("y") == FIRST_ITEM
    assert vocab.index("x") == OOV and vocab.index("never") == OOV
    assert vocab.index(None) == PAD
    with pytest.raises(IndexError):
        vocab.item(OOV)


def test_negatives_never_in_history_and_deterministic() -> None:
    split = split_histories(toy_histories())
    users = split.evaluable()
    negs = sample_negatives(split, users, n=100, seed=3)
    assert negs.shape == (len(users), 100)
    for row, user in zip(negs, users, strict=True):
        history = set(split.seqs[int(user)].items.tolist())
        assert not history & set(row.tolist())
        assert len(set(row.tolist())) == 100  # no repeats
        assert row.min() >= FIRST_ITEM and row.max() < split.vocab.size
    assert np.array_equal(negs, sample_negatives(split, users, n=100, seed=3))
    assert not np.array_equal(negs, sample_negatives(split, users, n=100, seed=4))


def test_negatives_shrink_to_a_tiny_catalogue() -> None:
    split = split_histories({"u": views("a", "b", "c", "d"), "v": views("e", "f", "g")})
    negs = sample_negatives(split, split.evaluable(), n=100, seed=0)
    assert negs.shape == (2, 3)  # u saw 4 of 7 items: only 3 left for everyone


def test_choose_users_caps_with_seed() -> None:
    candidates = np.arange(50)
    picked = choose_users(candidates, 10, seed=0)
    assert len(picked) == 10 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, choose_users(candidates, 10, seed=0))
    assert np.array_equal(choose_users(candidates, None, seed=0), candidates)


def test_user_histories_time_order_searches_and_reviews() -> None:
    events: list[Click | Search | Review] = [
        Click("e1", "u", "b", "view", 20.0),
        Search("e2", "u", "red shoes", 10.0),
        Review("e3", "u", "b", "nice", 30.0),
        Click("e4", "u", "c", "purchase", 20.0),
        Click("e5", "v", "a", "add_to_cart", 5.0),
    ]
    histories = user_histories(events)
    assert histories["u"] == [
        Token(None, "search", "red shoes"),
        Token("b", "view"),
        Token("c", "purchase"),
    ]
    assert histories["v"] == [Token("a", "add_to_cart")]
    assert user_histories(events, with_searches=False)["u"] == [*views("b"), Token("c", "purchase")]


def test_encoding_and_training_batch() -> None:
    tokens = [Token("a", "view"), Token(None, "search", "Red shoes"), Token("b", "purchase")]
    split = split_histories({"u": tokens + views("c", "d")})
    seq = split.seqs[0]
    assert seq.items[1] == PAD and seq.actions.tolist() == [1, 4, 3, 1, 1]
    assert (seq.words[1] > 0).sum() == 2 and (seq.words[0] == 0).all()
    batch, targets = training_batch([seq, seq.head(3)], max_len=3)
    # the input drops the last token and keeps the last 3 of the rest
    assert batch.lengths.tolist() == [3, 2]
    assert batch.items[0].tolist() == seq.items[1:4].tolist()
    # after the search the target is b; the target of a position followed by a search is 0
    assert targets[0].tolist() == seq.items[2:5].tolist()
    assert targets[1].tolist() == [PAD, seq.items[2], PAD]
    with pytest.raises(ValueError):
        pad_batch([seq.head(0)], 5)
