"""User histories as token sequences, the item vocabulary, and padded model inputs.

Events (from :mod:`recstream.model.adapters`) become one history per user, oldest
first: each click is an item token carrying its action, each search is a token
with no item whose content is its query.  Reviews are not part of a history
(they feed the sentiment model).  Encoding goes through
:mod:`recstream.model.features`, the same functions serving uses.

No torch here: arrays are numpy, and the trainer turns them into tensors.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recstream.model.checkpoint import file_sha256
from recstream.model.features import (
    ACTION_IDS,
    FIRST_ITEM,
    OOV,
    PAD,
    WORDS_PER_SEARCH,
    query_hashes,
)
from recstream.streams.records import Click, Event, Search
from recstream.streams.scoring import Token

IntArray = npt.NDArray[np.int64]


def user_histories(
    events: Iterable[Event], *, with_searches: bool = True
) -> dict[str, list[Token]]:
    """Group clicks (and searches) by user, each history sorted by time (stable).

    Events with equal timestamps keep their input order.  Users appear in the
    order of their first event.
    """
    timed: dict[str, list[tuple[float, int, Token]]] = {}
    for n, event in enumerate(events):
        if isinstance(event, Click):
            token = Token(event.item_id, event.action)
        elif isinstance(event, Search) and with_searches:
            token = Token(None, "search", event.query)
        else:
            continue
        timed.setdefault(event.user_id, []).append((event.ts, n, token))
    return {user: [t for _, _, t in sorted(steps)] for user, steps in timed.items()}


def load_histories(path: Path, fmt: str, with_searches: bool = True) -> dict[str, list[Token]]:
    """Read an event log through :mod:`recstream.model.adapters` into user histories."""
    from recstream.model.adapters import read_events

    return user_histories(read_events(path, fmt), with_searches=with_searches)


def data_fingerprint(paths: Sequence[Path], fmt: str) -> str:
    """SHA-256 over the format name and each input file's name and SHA-256 (folders: all files)."""
    digest = hashlib.sha256(fmt.encode())
    files = sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*")))
    for path in files:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Vocab:
    """Item id strings in index order; index 0 is padding, 1 out-of-vocabulary."""

    items: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_index", {item: FIRST_ITEM + i for i, item in enumerate(self.items)}
        )

    @property
    def size(self) -> int:
        """Number of vocabulary indices, padding and OOV included."""
        return FIRST_ITEM + len(self.items)

    def index(self, item_id: str | None) -> int:
        """The vocabulary index of an item id: PAD for "no item", OOV when unknown."""
        if item_id is None:
            return PAD
        found: int = self._index.get(item_id, OOV)  # type: ignore[attr-defined]
        return found

    def item(self, index: int) -> str:
        """The item id of a real vocabulary index (>= 2)."""
        if index < FIRST_ITEM:
            raise IndexError(f"index {index} is padding or OOV, not an item")
        return self.items[index - FIRST_ITEM]


def build_vocab(
    train_counts: Counter[str], catalogue: Iterable[str], max_items: int | None = None
) -> Vocab:
    """Items ordered by training frequency (ties: catalogue order), capped at ``max_items``.

    ``catalogue`` lists every item id seen anywhere in the data, in first-seen
    order; items that occur only in held-out positions come last (a shop knows
    its catalogue; the model simply never saw them as targets).
    """
    order = {item: n for n, item in enumerate(dict.fromkeys(catalogue))}
    for item in train_counts:
        order.setdefault(item, len(order))
    ranked = sorted(order, key=lambda item: (-train_counts.get(item, 0), order[item]))
    if max_items is not None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        ranked = ranked[:max_items]
    return Vocab(tuple(ranked))


@dataclass(frozen=True)
class Encoded:
    """One encoded token sequence: vocab indices, action ids and hashed query words."""

    items: IntArray  # [n]
    actions: IntArray  # [n]
    words: IntArray  # [n, W]

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def head(self, n: int) -> Encoded:
        """The first ``n`` tokens."""
        return Encoded(self.items[:n], self.actions[:n], self.words[:n])


def encode(tokens: Sequence[Token], vocab: Vocab, width: int = WORDS_PER_SEARCH) -> Encoded:
    """Encode a history; unknown items become OOV, unknown actions raise ``ValueError``."""
    n = len(tokens)
    items = np.zeros(n, dtype=np.int64)
    actions = np.zeros(n, dtype=np.int64)
    words = np.zeros((n, width), dtype=np.int64)
    for i, token in enumerate(tokens):
        action = ACTION_IDS.get(token.action)
        if action is None:
            raise ValueError(f"unknown action {token.action!r}")
        actions[i] = action
        if token.item_id is None:
            words[i] = query_hashes(token.query or "", width)
        else:
            items[i] = vocab.index(token.item_id)
    return Encoded(items, actions, words)


@dataclass(frozen=True)
class Batch:
    """Right-padded model inputs (numpy int64), what ``SASRec.forward`` takes."""

    items: IntArray  # [B, L]
    actions: IntArray  # [B, L]
    words: IntArray  # [B, L, W]
    lengths: IntArray  # [B]


def pad_batch(seqs: Sequence[Encoded], max_len: int) -> Batch:
    """Keep each sequence's last ``max_len`` tokens and right-pad to the longest.

    Every sequence must hold at least one token (the model reads the last one).
    """
    if not seqs:
        raise ValueError("empty batch")
    lengths = np.array([min(len(s), max_len) for s in seqs], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError("every sequence in a batch needs at least one token")
    width = seqs[0].words.shape[1]
    length = int(lengths.max())
    items = np.zeros((len(seqs), length), dtype=np.int64)
    actions = np.zeros((len(seqs), length), dtype=np.int64)
    words = np.zeros((len(seqs), length, width), dtype=np.int64)
    for b, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
        items[b, :n] = seq.items[len(seq) - n :]
        actions[b, :n] = seq.actions[len(seq) - n :]
        words[b, :n] = seq.words[len(seq) - n :]
    return Batch(items, actions, words, lengths)


def training_batch(seqs: Sequence[Encoded], max_len: int) -> tuple[Batch, IntArray]:
    """Inputs and next-item targets for a batch of training sequences (each >= 2 tokens).

    The input is each sequence without its last token (its last ``max_len``
    tokens of it); position ``t`` is trained to predict the item of the token
    after it.  Targets are 0 (ignored) where that next token is a search, OOV,
    or padding.
    """
    batch = pad_batch([s.head(len(s) - 1) for s in seqs], max_len)
    targets = np.zeros_like(batch.items)
    for b, (seq, n) in enumerate(zip(seqs, batch.lengths, strict=True)):
        nxt = seq.items[len(seq) - n :]
        targets[b, :n] = np.where(nxt >= FIRST_ITEM, nxt, PAD)
    return batch, targets
