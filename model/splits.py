"""Leave-one-out splits and the sampled-negatives protocol of the SASRec paper.

Per user with at least three item tokens: the last item is the test target, the
second-to-last the validation target, and everything before the validation item
is training data.  Users with fewer items are training data only.  Search
tokens stay where they are: a held-out item's input is every token before it
(searches included).

The *sampled* protocol ranks each held-out item against 100 negatives drawn
uniformly, without repetition, from catalogue items the user never interacted
with (in any split); at most 10,000 users are evaluated, chosen with a fixed
seed.  The *full* protocol ranks it against the whole catalogue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recstream.model.features import FIRST_ITEM
from recstream.model.sequences import Encoded, IntArray, Vocab, build_vocab, encode
from recstream.streams.scoring import Token

Part = Literal["valid", "test"]

SAMPLED_NEGATIVES = 100
SAMPLED_MAX_USERS = 10_000


def heldout_positions(tokens: Sequence[Token]) -> tuple[int, int]:
    """Token indices of the validation and test items, or ``(-1, -1)`` below 3 items."""
    item_positions = [i for i, t in enumerate(tokens) if t.item_id is not None]
    if len(item_positions) < 3:
        return -1, -1
    return item_positions[-2], item_positions[-1]


@dataclass(frozen=True)
class Split:
    """Encoded histories of all users with their held-out positions."""

    users: tuple[str, ...]
    seqs: tuple[Encoded, ...]
    valid_pos: IntArray  # [U], -1 when the user has no held-out items
    test_pos: IntArray  # [U]
    vocab: Vocab
    train_counts: Counter[str]

    def train_seq(self, user: int) -> Encoded:
        """The training part of a user's history (all of it without held-out items)."""
        pos = int(self.valid_pos[user])
        return self.seqs[user] if pos < 0 else self.seqs[user].head(pos)

    def heldout(self, user: int, part: Part) -> tuple[Encoded, int]:
        """The input tokens before a held-out item, and that item's vocab index."""
        pos = int((self.valid_pos if part == "valid" else self.test_pos)[user])
        if pos < 0:
            raise ValueError(f"user {self.users[user]!r} has no {part} item")
        return self.seqs[user].head(pos), int(self.seqs[user].items[pos])

    def evaluable(self) -> IntArray:
        """Indices of users with validation and test items."""
        return np.flatnonzero(self.test_pos >= 0)

    def popular(self, n: int = 100) -> list[str]:
        """The ``n`` most frequent training items (ties: vocabulary order)."""
        return [item for item in self.vocab.items[:n] if self.train_counts.get(item, 0) > 0]


def split_histories(
    histories: Mapping[str, Sequence[Token]],
    max_items: int | None = None,
    vocab: Vocab | None = None,
) -> Split:
    """Leave-one-out split, encoded with ``vocab`` (a trained model's) when given.

    Without ``vocab`` one is built: items ranked by training-part frequency,
    capped at ``max_items``.
    """
    users = tuple(histories)
    positions = [heldout_positions(histories[u]) for u in users]
    train_counts: Counter[str] = Counter()
    catalogue: dict[str, None] = {}
    for user, (valid, _) in zip(users, positions, strict=True):
        tokens = histories[user]
        train = tokens if valid < 0 else tokens[:valid]
        train_counts.update(t.item_id for t in train if t.item_id is not None)
        catalogue.update((t.item_id, None) for t in tokens if t.item_id is not None)
    if vocab is None:
        vocab = build_vocab(train_counts, catalogue, max_items)
    return Split(
        users=users,
        seqs=tuple(encode(histories[u], vocab) for u in users),
        valid_pos=np.array([v for v, _ in positions], dtype=np.int64),
        test_pos=np.array([t for _, t in positions], dtype=np.int64),
        vocab=vocab,
        train_counts=train_counts,
    )


def choose_users(candidates: IntArray, max_users: int | None, seed: int) -> IntArray:
    """At most ``max_users`` of ``candidates``, drawn with a fixed seed, in ascending order."""
    if max_users is None or len(candidates) <= max_users:
        return np.sort(candidates)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=max_users, replace=False))


def sample_negatives(
    split: Split, users: IntArray, n: int = SAMPLED_NEGATIVES, seed: int = 0
) -> IntArray:
    """``[len(users), n']`` negatives per user, never an item of the user's history.

    Drawn uniformly without repetition from the catalogue (vocab indices >= 2)
    minus every item the user interacted with.  ``n' = n`` unless some user has
    fewer than ``n`` items left (a tiny catalogue), then ``n'`` is that minimum.
    """
    rng = np.random.default_rng(seed)
    size = split.vocab.size
    seen = [set(split.seqs[u].items.tolist()) for u in users]
    catalogue = size - FIRST_ITEM
    available = min((catalogue - len({i for i in s if i >= FIRST_ITEM}) for s in seen), default=n)
    n = max(0, min(n, available))
    out = np.zeros((len(users), n), dtype=np.int64)
    for row, history in enumerate(seen):
        chosen: list[int] = []
        picked: set[int] = set()
        while len(chosen) < n:
            for item in rng.integers(FIRST_ITEM, size, size=2 * (n - len(chosen)) + 8).tolist():
                if item not in history and item not in picked:
                    picked.add(item)
                    chosen.append(item)
                    if len(chosen) == n:
                        break
        out[row] = chosen
    return out
