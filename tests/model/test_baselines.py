"""Most-popular and co-occurrence baselines on a toy log."""

from __future__ import annotations

import numpy as np

from recstream.model.baselines import Cooccurrence, MostPopular
from recstream.model.features import FIRST_ITEM
from recstream.model.splits import split_histories
from recstream.streams.scoring import Token


def views(*items: str) -> list[Token]:
    return [Token(i, "view") for i in items]


def toy() -> tuple[list, int, dict[str, int]]:
    split = split_histories(
        {
            "u1": views("a", "b", "c", "x", "y"),
            "u2": views("a", "b", "c", "x", "y"),
            "u3": views("d", "e", "a", "x", "y"),
            "u4": views("a", "x", "y"),
        }
    )
    train = [split.train_seq(u) for u in range(len(split.users))]
    index = {item: split.vocab.index(item) for item in split.vocab.items}
    return train, split.vocab.size, index


def test_most_popular_ranks_by_training_count() -> None:
    train, size, index = toy()
    scores = MostPopular(train, size)(train[:2])
    assert scores.shape == (2, size)
    assert np.isneginf(scores[:, :FIRST_ITEM]).all()
    assert scores[0, index["a"]] == 4  # a occurs 4 times in training parts
    assert scores[0, index["b"]] == 2
    assert scores[0, index["y"]] == 0  # y is always held out
    assert np.array_equal(scores[0], scores[1])


def test_cooccurrence_prefers_neighbours_of_recent_items() -> None:
    train, size, index = toy()
    model = Cooccurrence(train, size, window=1, recent=1)
    history = [train[0].head(2)]  # ... a, b -> most recent is b
    scores = model(history)[0]
    # b's only neighbours are a and c; they beat every other item
    best = set(np.argsort(-scores)[:2].tolist())
    assert best == {index["a"], index["c"]}
    assert np.isneginf(scores[:FIRST_ITEM]).all()
    # items with no co-occurrence fall back to popularity order
    assert scores[index["d"]] > scores[index["y"]]


def test_cooccurrence_is_symmetric_and_ignores_self_pairs() -> None:
    train, size, _ = toy()
    sim = Cooccurrence(train, size).similarity
    assert abs(sim - sim.T).max() < 1e-12
    assert sim.diagonal().max() == 0.0


def test_cooccurrence_without_training_pairs_is_popularity() -> None:
    train, size, _ = toy()
    singles = [seq.head(1) for seq in train]
    model = Cooccurrence(singles, size)
    scores = model(train[:1])[0]
    pop = MostPopular(singles, size).scores
    finite = np.isfinite(pop)
    assert np.array_equal(
        np.argsort(-scores[finite], kind="stable"), np.argsort(-pop[finite], kind="stable")
    )
