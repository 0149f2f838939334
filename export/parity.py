"""Does an exported model compute what the PyTorch model computes?

The check batches are synthetic but shaped like serving traffic: batch sizes 1 to
128, lengths from 1 to the model's maximum, right padding, length-1 sequences,
search tokens among the clicks (recommender) and exclusion lists of varying width.
They are drawn with a fixed seed, never from the training data.

Bars (``BARS``):
* fp32 recommender: top-k ids identical (tied scores may swap places) and every
  score within 1e-4 of PyTorch's, relative to ``max(1, |score|)``.
* fp32 sentiment: every probability within 1e-5 of PyTorch's.
* int8 / fp16 recommender: top-1 id matches PyTorch fp32 on >= 95 % of rows and
  the top-k lists overlap by >= 90 % on average.
* int8 / fp16 sentiment: the arg-max label agrees on >= 98 % of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recstream.export.metadata import DEFAULT_TOP_K
from recstream.model.features import ACTION_IDS, FIRST_ITEM, WORD_BUCKETS, WORDS_PER_SEARCH
from recstream.model.sentiment_lexicon import LEXICON_FEATURES

RECS_SCORE_RTOL = 1e-4
SENTIMENT_PROB_ATOL = 1e-5
BARS: dict[str, dict[str, float]] = {
    "recs": {"top1_match": 0.95, "topk_overlap": 0.9},
    "sentiment": {"label_agreement": 0.98},
}

Batch = dict[str, np.ndarray]
Runner = Callable[[Batch], list[np.ndarray]]


class ParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


@dataclass
class Agreement:
    """How closely one exported model follows the PyTorch model."""

    rows: int
    measures: dict[str, float]
    passed: bool
    bar: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, **{k: round(float(v), 6) for k, v in self.measures.items()}}

    def describe(self) -> str:
        parts = ", ".join(f"{k}={v:.4g}" for k, v in self.measures.items())
        verdict = "ok" if self.passed else "REFUSED: " + "; ".join(self.problems)
        return f"{self.rows} rows: {parts} ({verdict})"


# --- check batches -------------------------------------------------------------


def check_shapes(max_len: int) -> list[tuple[int, int]]:
    """(batch, padded length) pairs the parity check runs."""
    shapes = [
        (1, 1),
        (1, max_len),
        (8, min(max_len, 3)),
        (128, max_len),
        (33, max(1, max_len // 2)),
    ]
    return list(dict.fromkeys(shapes))


def _lengths(rng: np.random.Generator, batch: int, width: int) -> np.ndarray:
    lengths = rng.integers(1, width + 1, size=batch)
    lengths[0] = width  # one full row
    if batch > 1:
        lengths[1] = 1  # one length-1 row
    return lengths.astype(np.int64)


def recs_batch(
    rng: np.random.Generator,
    batch: int,
    width: int,
    num_items: int,
    exclude_width: int = 4,
    k: int = 20,
) -> Batch:
    """Right-padded recommender inputs: clicks with ~20 % searches, random exclusions,
    ``k`` items asked per row (the ``slots`` input's length)."""
    lengths = _lengths(rng, batch, width)
    valid = np.arange(width)[None, :] < lengths[:, None]
    search = (rng.random((batch, width)) < 0.2) & valid
    items = rng.integers(FIRST_ITEM, num_items, size=(batch, width))
    items = np.where(valid & ~search, items, 0)
    actions = rng.integers(ACTION_IDS["view"], ACTION_IDS["purchase"] + 1, size=(batch, width))
    actions = np.where(search, ACTION_IDS["search"], np.where(valid, actions, 0))
    words = rng.integers(1, WORD_BUCKETS, size=(batch, width, WORDS_PER_SEARCH))
    n_words = rng.integers(1, WORDS_PER_SEARCH + 1, size=(batch, width, 1))
    words = np.where(search[..., None] & (np.arange(WORDS_PER_SEARCH) < n_words), words, 0)
    exclude = rng.integers(0, num_items, size=(batch, exclude_width))
    return {
        "items": items.astype(np.int64),
        "actions": actions.astype(np.int64),
        "words": words.astype(np.int64),
        "lengths": lengths,
        "exclude": exclude.astype(np.int64),
        "slots": np.zeros(k, dtype=np.bool_),
    }


def sentiment_batch(rng: np.random.Generator, batch: int, width: int, vocab_size: int) -> Batch:
    """Right-padded token-id inputs with token ids drawn from the model's vocabulary,
    and lexicon scores in their ranges (compound -1..1, parts 0..1; every third row 0)."""
    lengths = _lengths(rng, batch, width)
    valid = np.arange(width)[None, :] < lengths[:, None]
    tokens = np.where(valid, rng.integers(1, vocab_size, size=(batch, width)), 0)
    lexicon = rng.uniform(0.0, 1.0, size=(batch, LEXICON_FEATURES))
    lexicon[:, 0] = 2.0 * lexicon[:, 0] - 1.0
    lexicon[::3] = 0.0
    return {
        "tokens": tokens.astype(np.int64),
        "lengths": lengths,
        "lexicon": lexicon.astype(np.float32),
    }


def recs_batches(
    num_items: int, max_len: int, seed: int = 20261129, top_k: int = DEFAULT_TOP_K
) -> Iterator[Batch]:
    """The parity check's recommender batches; every other one asks for fewer items
    than ``top_k`` (the graph's K is a run-time size)."""
    rng = np.random.default_rng(seed)
    for n, (batch, width) in enumerate(check_shapes(max_len)):
        k = top_k if n % 2 == 0 else max(1, top_k // 2)
        yield recs_batch(rng, batch, width, num_items, int(rng.integers(1, 6)), k)


def sentiment_batches(vocab_size: int, max_len: int, seed: int = 20261129) -> Iterator[Batch]:
    rng = np.random.default_rng(seed)
    for batch, width in check_shapes(max_len):
        yield sentiment_batch(rng, batch, width, vocab_size)


def torch_runner(graph: torch.nn.Module) -> Runner:
    """Run an export graph module on numpy inputs (no gradients)."""

    def run(batch: Batch) -> list[np.ndarray]:
        with torch.no_grad():
            out = graph(*(torch.from_numpy(v) for v in batch.values()))
        outs = out if isinstance(out, tuple) else (out,)
        return [t.numpy() for t in outs]

    return run


# --- comparisons -----------------------------------------------------------------


def _close(a: np.ndarray, b: np.ndarray, rtol: float) -> np.ndarray:
    both_inf = np.isneginf(a) & np.isneginf(b)
    return both_inf | (np.abs(a - b) <= rtol * np.maximum(1.0, np.abs(b)))


def _row_ids_match(
    ids: np.ndarray, scores: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray
) -> bool:
    """Top-k ids equal, except that items with tied scores may come in any order.

    A run of tied reference scores must hold the same ids in both lists; the last
    run may continue past k, so there differing ids are accepted when the scores
    agree (a tie with an item just past k).
    """
    k = len(ref_ids)
    start = 0
    while start < k:
        end = start + 1
        while end < k and _close(ref_scores[end : end + 1], ref_scores[end - 1 : end], 1e-4)[0]:
            end += 1
        if np.isneginf(ref_scores[start]):
            return True  # -inf entries (padding, excluded items) have no order
        if set(ids[start:end]) != set(ref_ids[start:end]):
            # Only the last run may hold items tied with one just past k.
            last_run_tied = end == k and bool(
                _close(scores[start:end], ref_scores[start:end], 1e-4).all()
            )
            if not last_run_tied:
                return False
        start = end
    return True


def compare_recs(runs: list[tuple[list[np.ndarray], list[np.ndarray]]]) -> dict[str, float]:
    """Agreement measures of (exported, reference) output pairs of the recommender."""
    rows = exact = top1 = 0
    overlap = 0.0
    worst = 0.0
    for (ids, scores), (ref_ids, ref_scores) in runs:
        finite = np.isfinite(ref_scores)
        if finite.any():
            scale = np.maximum(1.0, np.abs(ref_scores[finite]))
            worst = max(worst, float((np.abs(scores[finite] - ref_scores[finite]) / scale).max()))
        if (np.isfinite(scores) != finite).any():
            worst = float("inf")
        for row in range(len(ref_ids)):
            rows += 1
            exact += _row_ids_match(ids[row], scores[row], ref_ids[row], ref_scores[row])
            top1 += ids[row, 0] == ref_ids[row, 0]
            ref_set = set(ref_ids[row][finite[row]].tolist())
            got = set(ids[row][np.isfinite(scores[row])].tolist())
            overlap += len(ref_set & got) / len(ref_set) if ref_set else 1.0
    return {
        "rows": rows,
        "exact_ids": exact / rows,
        "max_rel_score_diff": worst,
        "top1_match": float(top1 / rows),
        "topk_overlap": overlap / rows,
    }


def compare_sentiment(runs: list[tuple[list[np.ndarray], list[np.ndarray]]]) -> dict[str, float]:
    """Agreement measures of (exported, reference) output pairs of the sentiment model."""
    rows = agree = 0
    worst = 0.0
    for (probs,), (ref,) in runs:
        rows += len(ref)
        agree += int((probs.argmax(1) == ref.argmax(1)).sum())
        worst = max(worst, float(np.abs(probs - ref).max()))
    return {"rows": rows, "label_agreement": agree / rows, "max_prob_diff": worst}


def judge(kind: str, variant: str, measures: dict[str, float]) -> Agreement:
    """Apply the bar of ``kind``/``variant`` to measured agreement."""
    rows = int(measures.pop("rows"))
    problems: list[str] = []
    if variant == "fp32" and kind == "recs":
        bar = {"exact_ids": 1.0, "max_rel_score_diff": RECS_SCORE_RTOL}
        if measures["exact_ids"] < 1.0:
            problems.append(f"top-k ids differ on {1 - measures['exact_ids']:.2%} of rows")
        if not measures["max_rel_score_diff"] <= RECS_SCORE_RTOL:
            problems.append(f"scores differ by {measures['max_rel_score_diff']:.3g} relative")
    elif variant == "fp32":
        bar = {"max_prob_diff": SENTIMENT_PROB_ATOL}
        if not measures["max_prob_diff"] <= SENTIMENT_PROB_ATOL:
            problems.append(f"probabilities differ by {measures['max_prob_diff']:.3g}")
    else:
        bar = BARS[kind]
        for name, minimum in bar.items():
            if not measures[name] >= minimum:
                problems.append(f"{name} {measures[name]:.4f} < {minimum}")
    return Agreement(rows, measures, not problems, bar, problems)


def measure(
    kind: str,
    variant: str,
    batches: list[Batch],
    exported: Runner,
    reference: list[list[np.ndarray]],
) -> Agreement:
    """Run ``exported`` on every batch and judge it against the reference outputs."""
    runs = [(exported(batch), ref) for batch, ref in zip(batches, reference, strict=True)]
    measures = compare_recs(runs) if kind == "recs" else compare_sentiment(runs)
    return judge(kind, variant, measures)
