"""ONNX graphs compute what PyTorch computes; exports that do not are refused."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from recstream.export import onnx_export, parity
from recstream.export.onnx_export import RecsServingGraph, SentimentServingGraph
from recstream.export.variants import open_session

if TYPE_CHECKING:
    from conftest import Exported

SHAPES = [(1, 1), (1, 16), (2, 1), (8, 5), (128, 16), (64, 9)]


def _recs_runs(exported: Exported, seed: int) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    session = open_session(exported.folder / "recs.onnx", "fp32")
    graph = RecsServingGraph(exported.recs_model, 20, exported.recs_model.n_items)
    rng = np.random.default_rng(seed)
    runs = []
    for batch, width in SHAPES:
        inputs = parity.recs_batch(rng, batch, width, num_items=42, exclude_width=3)
        ours = session.run(None, inputs)
        reference = parity.torch_runner(graph)(inputs)
        runs.append((ours, reference))
    return runs


def test_recs_fp32_matches_pytorch_on_new_batches(exported: Exported) -> None:
    runs = _recs_runs(exported, seed=99)
    for (ids, scores), (ref_ids, ref_scores) in runs:
        assert ids.dtype == np.int64 and ids.shape == ref_ids.shape
        finite = np.isfinite(ref_scores)
        np.testing.assert_array_equal(np.isfinite(scores), finite)
        np.testing.assert_allclose(scores[finite], ref_scores[finite], rtol=1e-4, atol=1e-4)
    measures = parity.compare_recs(runs)
    assert measures["exact_ids"] == 1.0


def test_recs_padding_and_batching_do_not_change_a_row(exported: Exported) -> None:
    """Right padding: a row scores the same alone or padded inside a longer batch."""
    session = open_session(exported.folder / "recs.onnx", "fp32")
    rng = np.random.default_rng(5)
    batch = parity.recs_batch(rng, 4, 16, num_items=42)
    batch["lengths"][:] = [1, 3, 16, 7]
    ids, scores = session.run(None, batch)
    for row in range(4):
        n = int(batch["lengths"][row])
        alone = {
            name: (
                value[row : row + 1, :n]
                if name in ("items", "actions", "words")
                else value
                if name == "slots"  # the items asked per row, not a row
                else value[row : row + 1]
            )
            for name, value in batch.items()
        }
        ids_alone, scores_alone = session.run(None, alone)
        np.testing.assert_array_equal(ids_alone[0], ids[row])
        np.testing.assert_allclose(scores_alone[0], scores[row], rtol=1e-5, atol=1e-5)


def test_recs_exclusion_masks_items(exported: Exported) -> None:
    session = open_session(exported.folder / "recs.onnx", "fp32")
    batch = parity.recs_batch(np.random.default_rng(3), 2, 6, num_items=42, exclude_width=1)
    batch["exclude"][:] = 0
    ids, _ = session.run(None, batch)
    banned = ids[:, :5]
    batch["exclude"] = banned.copy()
    ids_after, scores_after = session.run(None, batch)
    for row in range(2):
        assert not set(banned[row].tolist()) & set(
            ids_after[row][np.isfinite(scores_after[row])].tolist()
        )
    assert (ids >= 2).all()  # PAD and OOV are never recommended


def test_sentiment_fp32_matches_pytorch(exported: Exported) -> None:
    session = open_session(exported.folder / "sentiment.onnx", "fp32")
    graph = SentimentServingGraph(exported.sentiment_model)
    vocab = exported.sentiment_meta["hparams"]["vocab_size"]
    rng = np.random.default_rng(11)
    for batch, width in [(1, 1), (3, 64), (128, 30), (5, 2)]:
        inputs = parity.sentiment_batch(rng, batch, width, vocab)
        (probs,) = session.run(None, inputs)
        (reference,) = parity.torch_runner(graph)(inputs)
        assert probs.shape == (batch, 3)
        np.testing.assert_allclose(probs, reference, atol=1e-5)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_export_reports_fp32_agreement(exported: Exported) -> None:
    recs = exported.recs["fp32"]
    assert recs.written and recs.agreement.passed
    assert recs.agreement.measures["exact_ids"] == 1.0
    assert recs.agreement.measures["max_rel_score_diff"] <= parity.RECS_SCORE_RTOL
    assert exported.sentiment["fp32"].agreement.measures["max_prob_diff"] <= 1e-5
    assert exported.recs["fp32"].agreement.rows >= 128


def test_check_batches_cover_edge_shapes() -> None:
    shapes = parity.check_shapes(16)
    assert (1, 1) in shapes and (1, 16) in shapes
    assert max(b for b, _ in shapes) >= 128
    batches = list(parity.recs_batches(num_items=42, max_len=16))
    lengths = np.concatenate([b["lengths"] for b in batches])
    assert lengths.min() == 1 and lengths.max() == 16
    for batch in batches:  # right padding: nothing after the last valid token
        width = batch["items"].shape[1]
        pad = np.arange(width)[None, :] >= batch["lengths"][:, None]
        assert not batch["items"][pad].any() and not batch["actions"][pad].any()
        assert not batch["words"][pad].any()
    search = np.concatenate([(b["actions"] == 4).ravel() for b in batches])
    assert search.any()


@pytest.mark.usefixtures("reuse_exported_graph")
def test_export_refused_when_onnx_differs(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose scores drift beyond the tolerance is never written."""
    real_runner = onnx_export._runner

    def drifting(
        path: Path, variant: str, outputs: list[str], providers: list[str]
    ) -> parity.Runner:
        run = real_runner(path, variant, outputs, providers)

        def shifted(batch: parity.Batch) -> list[np.ndarray]:
            ids, scores = run(batch)
            return [ids, scores * (1 + 1e-3)]

        return shifted

    monkeypatch.setattr(onnx_export, "_runner", drifting)
    with pytest.raises(parity.ParityError, match="scores differ"):
        onnx_export.export_recs(exported.recs_model, exported.recs_meta, tmp_path)
    assert not list(tmp_path.iterdir())


def test_compare_recs_tolerates_ties_only() -> None:
    ref_ids = np.array([[5, 6, 7, 8]])
    ref_scores = np.array([[3.0, 2.0, 2.0, 1.0]], np.float32)
    swapped = np.array([[5, 7, 6, 8]])
    ok = parity.compare_recs([([swapped, ref_scores], [ref_ids, ref_scores])])
    assert ok["exact_ids"] == 1.0
    wrong = np.array([[6, 5, 7, 8]])
    bad = parity.compare_recs([([wrong, ref_scores], [ref_ids, ref_scores])])
    assert bad["exact_ids"] == 0.0 and bad["top1_match"] == 0.0
    # A different last item is a tie with an unseen item only if its score agrees.
    last_differs = np.array([[5, 6, 7, 9]])
    tied = parity.compare_recs([([last_differs, ref_scores], [ref_ids, ref_scores])])
    assert tied["exact_ids"] == 1.0
    lower = ref_scores.copy()
    lower[0, 3] = 0.5
    untied = parity.compare_recs([([last_differs, lower], [ref_ids, ref_scores])])
    assert untied["exact_ids"] == 0.0


def test_judge_applies_bars() -> None:
    passed = parity.judge("recs", "int8", {"rows": 10, "top1_match": 0.96, "topk_overlap": 0.95})
    assert passed.passed
    failed = parity.judge("recs", "int8", {"rows": 10, "top1_match": 0.9, "topk_overlap": 0.95})
    assert not failed.passed and "top1_match" in failed.problems[0]
    sentiment = parity.judge("sentiment", "fp16", {"rows": 10, "label_agreement": 0.97})
    assert not sentiment.passed
    fp32 = parity.judge(
        "sentiment", "fp32", {"rows": 3, "label_agreement": 1.0, "max_prob_diff": 2e-5}
    )
    assert not fp32.passed
