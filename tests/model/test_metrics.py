"""Ranking and catalogue metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstream.model import metrics


def test_hit_rate_counts_ranks_within_k() -> None:
    ranks = [1, 3, 10, 11, math.inf]
    assert metrics.hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert metrics.hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert metrics.hit_rate(ranks, 20) == pytest.approx(4 / 5)


def test_ndcg_single_relevant_item() -> None:
    # rank 1 -> 1, rank 3 -> 1/log2(4) = 0.5, rank 7 -> 1/log2(8) = 1/3, rank 11 -> 0 at k=10
    ranks = [1, 3, 7, 11]
    assert metrics.ndcg(ranks, 10) == pytest.approx((1 + 0.5 + 1 / 3 + 0) / 4)
    assert metrics.ndcg(ranks, 5) == pytest.approx((1 + 0.5) / 4)
    assert metrics.ndcg([math.inf], 10) == 0.0


def test_mrr_cuts_at_k() -> None:
    ranks = [1, 2, 4, 21]
    assert metrics.mrr(ranks, 20) == pytest.approx((1 + 0.5 + 0.25 + 0) / 4)
    assert metrics.mrr(ranks, 3) == pytest.approx((1 + 0.5) / 4)


def test_empty_ranks_give_zero() -> None:
    assert metrics.hit_rate([], 10) == 0.0
    assert metrics.ndcg([], 10) == 0.0
    assert metrics.mrr([], 10) == 0.0


def test_coverage_is_share_of_catalogue_recommended() -> None:
    lists = [[2, 3], [3, 4]]
    assert metrics.coverage(lists, 10) == pytest.approx(3 / 10)
    with pytest.raises(ValueError):
        metrics.coverage(lists, 0)


def test_gini_equal_counts_is_zero() -> None:
    assert metrics.gini([[2, 3], [4, 5]], 4) == pytest.approx(0.0)


def test_gini_hand_computed() -> None:
    # catalogue of 4, counts: item a 3 times, item b once, two items never -> x = [0, 0, 1, 3]
    # G = sum (2i - n - 1) x_i / (n sum x) = ((2*3-5)*1 + (2*4-5)*3) / (4*4) = (1 + 9) / 16
    lists = [["a"], ["a"], ["a"], ["b"]]
    assert metrics.gini(lists, 4) == pytest.approx(10 / 16)


def test_gini_all_on_one_item_approaches_one() -> None:
    lists = [[7]] * 50
    n = 100
    assert metrics.gini(lists, n) == pytest.approx((n - 1) / n)


def test_ranks_from_scores_strictly_greater_and_minus_inf() -> None:
    rng = np.random.default_rng(0)
    scores = np.array([[0.1, 0.5, 0.9], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    targets = np.array([0.6, 0.4, -np.inf])
    ranks = metrics.ranks_from_scores(scores, targets, rng)
    assert ranks.tolist() == [2.0, 1.0, math.inf]


def test_ranks_from_scores_breaks_ties_uniformly() -> None:
    # the target ties with 3 candidates: its rank is uniform over 1..4
    rng = np.random.default_rng(0)
    scores = np.zeros((20_000, 3))
    ranks = metrics.ranks_from_scores(scores, np.zeros(20_000), rng)
    counts = np.bincount(ranks.astype(int), minlength=5)[1:]
    assert set(np.unique(ranks)) == {1.0, 2.0, 3.0, 4.0}
    assert np.allclose(counts / counts.sum(), 0.25, atol=0.02)


def test_nan_candidates_are_ignored() -> None:
    rng = np.random.default_rng(0)
    ranks = metrics.ranks_from_scores(np.array([[np.nan, 1.0, 0.0]]), np.array([0.5]), rng)
    assert ranks.tolist() == [2.0]


def test_summarize_keys() -> None:
    out = metrics.summarize([1, 2, 30])
    assert list(out) == ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20"]
    assert out["hr@5"] == pytest.approx(round(2 / 3, 4))
