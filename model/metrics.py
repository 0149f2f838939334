"""Ranking metrics for next-item recommendation (numpy only, no torch).

Every metric here takes the 1-based *rank* of the one held-out item per user
(``rank 1`` = the item came first).  A rank of ``numpy.inf`` means the item could
not be ranked at all (for example it is outside the model's vocabulary) and counts
as a miss everywhere.

Catalogue metrics take the top-k lists that were recommended:

- ``coverage@k``: the share of the catalogue that appears in at least one list;
- ``gini@k``: the Gini index of how often each catalogue item is recommended,
  0 when every item is recommended equally often, near 1 when a few popular
  items fill every list (a measure of popularity bias).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def hit_rate(ranks: npt.ArrayLike, k: int) -> float:
    """HR@k: the share of users whose held-out item is ranked in the top ``k``."""
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(r <= k)) if r.size else 0.0


def ndcg(ranks: npt.ArrayLike, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 1)`` inside the top ``k``, else 0."""
    r = np.asarray(ranks, dtype=np.float64)
    if not r.size:
        return 0.0
    gains = np.where(r <= k, 1.0 / np.log2(np.minimum(r, k) + 1.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: npt.ArrayLike, k: int) -> float:
    """MRR@k: the mean of ``1 / rank`` for ranks inside the top ``k`` (0 outside)."""
    r = np.asarray(ranks, dtype=np.float64)
    if not r.size:
        return 0.0
    return float(np.mean(np.where(r <= k, 1.0 / np.minimum(r, k), 0.0)))


def coverage(top_lists: npt.ArrayLike, catalogue_size: int) -> float:
    """The share of ``catalogue_size`` items that occur in at least one recommended list."""
    lists = np.asarray(top_lists)
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    return float(np.unique(lists).size / catalogue_size) if lists.size else 0.0


def gini(top_lists: npt.ArrayLike, catalogue_size: int) -> float:
    """Gini index of recommendation counts over the whole catalogue.

    Items never recommended count as zero.  With counts sorted ascending
    ``x_1 <= ... <= x_n``: ``G = sum_i (2i - n - 1) x_i / (n * sum_i x_i)``.
    """
    lists = np.asarray(top_lists).ravel()
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    if not lists.size:
        return 0.0
    _, counts = np.unique(lists, return_counts=True)
    if counts.size > catalogue_size:
        raise ValueError("more distinct recommended items than the catalogue holds")
    x = np.zeros(catalogue_size, dtype=np.float64)
    x[catalogue_size - counts.size :] = np.sort(counts)
    n = catalogue_size
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def ranks_from_scores(
    scores: npt.ArrayLike, target_scores: npt.ArrayLike, rng: np.random.Generator
) -> FloatArray:
    """1-based rank of each target among candidates, ties broken uniformly at random.

    ``scores`` is ``[B, C]`` and holds every candidate *except* the target;
    ``target_scores`` is ``[B]``.  Among the target and the ``m`` candidates tied
    with it, the target takes a uniformly random place (seeded ``rng``), as a
    random shuffle would give it, so a scorer that returns many equal scores (a
    baseline that knows nothing about an item) is neither flattered nor punished.
    A target scored ``-inf`` gets rank ``inf``.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(target_scores, dtype=np.float64)[:, None]
    greater = np.sum(s > t, axis=1)
    ties = np.sum(s == t, axis=1)
    ahead = rng.integers(0, ties + 1) if ties.any() else np.zeros_like(ties)
    ranks = (1 + greater + ahead).astype(np.float64)
    ranks[np.isneginf(t[:, 0]) | np.isnan(t[:, 0])] = np.inf
    return ranks


def summarize(
    ranks: npt.ArrayLike, ks: tuple[int, ...] = (5, 10, 20), mrr_k: int = 20
) -> dict[str, float]:
    """``hr@k`` and ``ndcg@k`` for each ``k`` plus ``mrr@mrr_k``, rounded to 4 places."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = round(hit_rate(ranks, k), 4)
    for k in ks:
        out[f"ndcg@{k}"] = round(ndcg(ranks, k), 4)
    out[f"mrr@{mrr_k}"] = round(mrr(ranks, mrr_k), 4)
    return out
