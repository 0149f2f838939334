"""The recommender graph's grouped top-k: the plain top-k's answer, in PyTorch and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from recstream.export import parity
from recstream.export.onnx_export import (
    GROUPED_TOP_K_MIN_ITEMS,
    TOP_K_GROUP,
    ExportError,
    RecsServingGraph,
    export_recs,
    grouped_top_k,
)
from recstream.export.variants import open_session
from recstream.model.features import FIRST_ITEM, PAD
from recstream.model.sasrec import SASRec

CPU = ["CPUExecutionProvider"]
MODEL_INPUTS = ("items", "actions", "words", "lengths")


def _scores(seed: int, rows: int, columns: int, masked: float, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, columns, generator=g)
    if ties:  # few distinct values: many exact ties, at the k-th score too
        scores = (scores * 2).round()
    scores[torch.rand(rows, columns, generator=g) < masked] = float("-inf")
    return scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("group", [4, TOP_K_GROUP])
@pytest.mark.parametrize("ties", [False, True])
def test_grouped_top_k_gives_the_plain_top_k(seed: int, group: int, ties: bool) -> None:
    k = 20
    for rows, groups, masked in ((1, k, 0.0), (7, 3 * k, 0.5), (33, 50, 0.99)):
        scores = _scores(seed, rows, group * groups, masked, ties)
        values, columns = grouped_top_k(scores, k, group)
        expected = torch.topk(scores, k, dim=1)
        assert torch.equal(values, expected.values)  # the same scores, best first
        assert torch.equal(scores.gather(1, columns), values)  # each named column has its score
        assert all(len(set(row)) == k for row in columns.tolist())  # no column twice
        if not ties and not masked:
            assert torch.equal(columns, expected.indices)


def test_the_catalogue_size_picks_the_top_k() -> None:
    model = SASRec(GROUPED_TOP_K_MIN_ITEMS, max_len=4, dim=8, layers=1)
    plain = RecsServingGraph(model, 20, GROUPED_TOP_K_MIN_ITEMS - 1)
    assert (plain.group, plain.columns) == (0, GROUPED_TOP_K_MIN_ITEMS - 1)
    grouped = RecsServingGraph(model, 20, GROUPED_TOP_K_MIN_ITEMS + 1)
    assert (grouped.group, grouped.columns) == (TOP_K_GROUP, 16_416)  # next multiple of 32
    with pytest.raises(ExportError, match="fewer than k=20 groups"):
        RecsServingGraph(model, 20, 100, group=32)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[SASRec, Path]:
    """A small-dimension recommender over a catalogue that gets the grouped top-k,
    exported in every variant."""
    torch.manual_seed(3)
    num_items = GROUPED_TOP_K_MIN_ITEMS + 5  # not a multiple of the group: padded
    hparams: dict[str, Any] = {"n_items": num_items, "max_len": 8, "dim": 8, "layers": 1}
    hparams["dropout"] = 0.0
    vocab = [f"p{n}" for n in range(num_items - FIRST_ITEM)]
    meta: dict[str, Any] = {"kind": "recs", "hparams": hparams, "vocab": vocab}
    meta |= {"popular": vocab[:5], "max_len": 8, "trained_at": "t", "data_fingerprint": "d"}
    meta["metrics"] = {}
    model = SASRec(**hparams).eval()
    folder = tmp_path_factory.mktemp("large")
    written = export_recs(model, meta, folder, ("fp32", "int8", "fp16"))
    assert all(w.written for w in written), [w.describe() for w in written]
    return model, folder


def test_a_large_catalogues_graph_answers_like_the_plain_top_k(
    large: tuple[SASRec, Path],
) -> None:
    model, folder = large
    assert "ReduceMax" in {node.op_type for node in onnx.load(folder / "recs.onnx").graph.node}
    session = ort.InferenceSession(folder / "recs.onnx", providers=CPU)
    rng = np.random.default_rng(0)
    for rows, width in ((1, 1), (40, 8), (128, 5)):
        batch = parity.recs_batch(rng, rows, width, model.n_items, exclude_width=300)
        items, scores = session.run(["top_items", "top_scores"], batch)
        with torch.no_grad():
            inputs = (torch.from_numpy(batch[name]) for name in MODEL_INPUTS)
            plain = model.score_last(*inputs)
            plain = plain.scatter(1, torch.from_numpy(batch["exclude"]), float("-inf"))
            expected = torch.topk(plain, 20, dim=1)
        # Each picked item has, in PyTorch, the score of its rank, no item twice: the
        # plain top-k up to near-ties, whose order rounding may swap on another CPU.
        picked = plain.gather(1, torch.from_numpy(items))
        np.testing.assert_allclose(picked.numpy(), expected.values.numpy(), rtol=1e-5)
        assert all(len(set(row)) == 20 for row in items.tolist())
        np.testing.assert_allclose(scores, expected.values.numpy(), rtol=1e-5)


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_masked_picks_are_vocab_indices(large: tuple[SASRec, Path], variant: str) -> None:
    """With fewer than k items left unmasked, the rest of the top-k are masked picks;
    those must still be vocab indices (consumers index the vocabulary with them)."""
    model, folder = large
    rng = np.random.default_rng(1)
    batch = parity.recs_batch(rng, 3, 4, model.n_items)
    allowed = [[5, 6, 7], [FIRST_ITEM], [model.n_items - 1]]
    exclude = np.zeros((3, model.n_items), np.int64)
    for row, keep in enumerate(allowed):
        others = np.setdiff1d(np.arange(model.n_items), keep)
        exclude[row, : len(others)] = others
    batch["exclude"] = exclude
    file = "recs.onnx" if variant == "fp32" else f"recs.{variant}.onnx"
    items, scores = open_session(folder / file, variant, CPU).run(None, batch)
    assert (items < model.n_items).all()
    for row, keep in enumerate(allowed):
        picked = (items[row] >= FIRST_ITEM) & np.isfinite(scores[row])
        assert sorted(items[row][picked].tolist()) == keep


class _PaddedAbove(torch.nn.Module):
    """Scores whose padded columns rank above every real item: -1 there, -2 elsewhere."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.num_items = num_items

    def score_last(self, items: torch.Tensor, *_: torch.Tensor, columns: int) -> torch.Tensor:
        scores = torch.full((items.shape[0], columns), -2.0)
        scores[:, self.num_items :] = -1.0
        return scores


def test_a_pick_past_the_vocabulary_is_reported_as_pad() -> None:
    """Whatever order the padded columns' scores take (a provider's tie-breaking among
    -inf, say), the graph names no column past the vocabulary: such a pick is PAD."""
    num_items = GROUPED_TOP_K_MIN_ITEMS + 5
    graph = RecsServingGraph(_PaddedAbove(num_items), 20, num_items)
    inputs = [torch.zeros(2, 3, dtype=torch.long)] * 3 + [torch.ones(2, dtype=torch.long)]
    items, scores = graph(
        *inputs, torch.zeros(2, 1, dtype=torch.long), torch.zeros(20, dtype=torch.bool)
    )
    assert graph.columns - num_items > 20  # the whole top-k falls on padded columns
    assert (items == PAD).all() and (scores == -1.0).all()
    assert (items < num_items).all()


def test_the_padding_is_folded_into_the_output_layer(
    large: tuple[SASRec, Path], tmp_path: Path
) -> None:
    """The scores come from one Gemm of padded constants: no pass over them to pad."""
    _, folder = large
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(folder / "recs.onnx", options, providers=CPU)
    graph = onnx.load(tmp_path / "optimized.onnx").graph
    producers = {output: node for node in graph.node for output in node.output}
    scatter = next(node for node in graph.node if node.op_type == "ScatterElements")
    assert producers[scatter.input[0]].op_type == "Gemm"
    assert "Pad" not in {node.op_type for node in graph.node}
    # fp16 has no Pad left to fold: onnxruntime cannot fold an fp16 one at load time
    assert "Pad" not in {node.op_type for node in onnx.load(folder / "recs.fp16.onnx").graph.node}
