"""Two non-neural baselines scored on the same split and candidates as the model.

- :class:`MostPopular`: every user gets items ranked by training frequency.
- :class:`Cooccurrence`: item-to-item neighbours in the style of session-kNN.
  Two items co-occur when they are at most ``window`` steps apart in a user's
  training sequence, with weight ``1 / distance``; the similarity is the
  co-occurrence weight divided by ``sqrt(count_a * count_b)`` (cosine).  A user's
  score for item ``j`` is ``sum_k decay**k * sim(h_k, j)`` over the ``recent``
  most recent history items ``h_0`` (newest), ``h_1``, ...  Items with no
  co-occurrence at all fall back to popularity order (a vanishing popularity
  term), so the baseline never ranks blindly.

Both are scorers: ``scorer(seqs) -> float64 [B, V]`` with PAD and OOV at -inf
(the ``candidates`` argument of the scorer protocol is not needed and ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse

from recstream.model.features import FIRST_ITEM
from recstream.model.sequences import Encoded, IntArray

FloatArray = npt.NDArray[np.float64]

#: Weight of the popularity tie-breaker, far below any co-occurrence similarity.
_POPULARITY_EPSILON = 1e-9


def item_counts(seqs: Sequence[Encoded], vocab_size: int) -> FloatArray:
    """How often each vocab index occurs as an item (PAD, OOV and searches not counted)."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for seq in seqs:
        items = seq.items[seq.items >= FIRST_ITEM]
        np.add.at(counts, items, 1.0)
    return counts


class MostPopular:
    """Ranks items by how often they occur in the training sequences."""

    name = "most_popular"

    def __init__(self, train_seqs: Sequence[Encoded], vocab_size: int) -> None:
        scores = item_counts(train_seqs, vocab_size)
        scores[:FIRST_ITEM] = -np.inf
        self.scores = scores

    def __call__(self, seqs: Sequence[Encoded], candidates: IntArray | None = None) -> FloatArray:
        return np.broadcast_to(self.scores, (len(seqs), self.scores.size)).copy()


class Cooccurrence:
    """Session-kNN style item-to-item co-occurrence with a popularity back-off."""

    name = "cooccurrence"

    def __init__(
        self,
        train_seqs: Sequence[Encoded],
        vocab_size: int,
        window: int = 3,
        recent: int = 5,
        decay: float = 0.7,
    ) -> None:
        self.vocab_size = vocab_size
        self.recent = recent
        self.decay = decay
        rows: list[npt.NDArray[np.int64]] = []
        cols: list[npt.NDArray[np.int64]] = []
        weights: list[FloatArray] = []
        for seq in train_seqs:
            items = seq.items[seq.items >= FIRST_ITEM]
            for d in range(1, min(window, len(items) - 1) + 1):
                a, b = items[:-d], items[d:]
                rows += [a, b]
                cols += [b, a]
                weights += [np.full(len(a), 1.0 / d), np.full(len(a), 1.0 / d)]
        shape = (vocab_size, vocab_size)
        if rows:
            co = sparse.coo_matrix(
                (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=shape
            ).tocsr()
        else:
            co = sparse.csr_matrix(shape, dtype=np.float64)
        co.setdiag(0.0)
        co.eliminate_zeros()
        counts = item_counts(train_seqs, vocab_size)
        norm = sparse.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)))
        self.similarity = (norm @ co @ norm).tocsr()
        popularity = counts / max(counts.max(), 1.0)
        self.back_off = _POPULARITY_EPSILON * popularity
        self.back_off[:FIRST_ITEM] = -np.inf

    def __call__(self, seqs: Sequence[Encoded], candidates: IntArray | None = None) -> FloatArray:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for b, seq in enumerate(seqs):
            items = seq.items[seq.items >= FIRST_ITEM][::-1][: self.recent]
            for k, item in enumerate(items.tolist()):
                rows.append(b)
                cols.append(item)
                vals.append(self.decay**k)
        history = sparse.csr_matrix((vals, (rows, cols)), shape=(len(seqs), self.vocab_size))
        scores = np.asarray((history @ self.similarity).todense(), dtype=np.float64)
        return scores + self.back_off
