"""The exported models on a real GPU: CUDA sessions, I/O binding, fp32 and fp16 agreement.

Skipped where onnxruntime cannot run a model on CUDA (the CPU-fallback checks in
test_export_runtime.py run there instead).  On a GPU machine run them with
``benchmarks/gpu_check.sh``, which also measures the scorer's speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from recstream.export import parity
from recstream.export.onnx_export import (
    RecsServingGraph,
    SentimentServingGraph,
    _embedding_size,
)
from recstream.export.variants import open_session
from recstream.streams.scoring import (
    OnnxRecsScorer,
    OnnxSentimentScorer,
    RuntimeOptions,
    Token,
    runs_on_cuda,
)

if TYPE_CHECKING:
    from conftest import Exported

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ON_GPU = RuntimeOptions(providers=(CUDA, CPU), require_gpu=True)
ON_CPU = RuntimeOptions(providers=(CPU,))
#: fp32 on CUDA may use TF32 matrix units: scores stay within this of PyTorch's.
CUDA_FP32_SCORE_RTOL = 1e-2


@pytest.fixture(scope="module", autouse=True)
def cuda(exported: Exported) -> None:
    if not runs_on_cuda(exported.folder / "recs.onnx"):
        pytest.skip("onnxruntime cannot run models on CUDA here (no GPU or no CUDA libraries)")


def _histories(rng: np.random.Generator, batch: int, max_len: int) -> list[list[Token]]:
    """Histories of every length from 1 to past the maximum, some with searches."""
    histories = []
    for row in range(batch):
        length = 1 + row % (max_len + 4)
        history = [
            Token(None, "search", "red shoes")
            if rng.random() < 0.2
            else Token(f"item-{int(rng.integers(40))}", "view")
            for _ in range(length)
        ]
        histories.append(history)
    return histories


def test_scorers_run_on_cuda(exported: Exported) -> None:
    recs = OnnxRecsScorer(exported.folder / "recs.onnx", ON_GPU)
    assert recs.providers[0] == CUDA
    sentiment = OnnxSentimentScorer(exported.folder / "sentiment.onnx", ON_GPU)
    assert sentiment.providers[0] == CUDA


def _agreement_on_cuda(
    kind: str, path: Path, variant: str, graph: torch.nn.Module, batches: list[parity.Batch]
) -> parity.Agreement:
    """The model at ``path`` on CUDA against PyTorch fp32, judged by the reduced-precision bar."""
    session = open_session(path, variant, [CUDA, CPU])
    assert session.get_providers()[0] == CUDA
    reference = [parity.torch_runner(graph)(batch) for batch in batches]
    agreement = parity.measure(
        kind, "fp16", batches, lambda b: list(session.run(None, b)), reference
    )
    print(f"{kind} {variant} on CUDA vs PyTorch fp32: {agreement.describe()}")
    return agreement


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_cuda_recommender_agrees_with_pytorch(exported: Exported, variant: str) -> None:
    """The parity batches (batch 1-128, lengths 1-max, length-1 rows) on CUDA."""
    name = "recs.onnx" if variant == "fp32" else "recs.fp16.onnx"
    graph = RecsServingGraph(exported.recs_model, 20, exported.recs_model.n_items).eval()
    num_items = len(exported.recs_meta["vocab"]) + 2
    batches = list(parity.recs_batches(num_items, exported.recs_meta["max_len"]))
    agreement = _agreement_on_cuda("recs", exported.folder / name, variant, graph, batches)
    assert agreement.passed, agreement.describe()
    if variant == "fp32":
        assert agreement.measures["max_rel_score_diff"] <= CUDA_FP32_SCORE_RTOL


def test_cuda_sentiment_agrees_with_pytorch(exported: Exported) -> None:
    graph = SentimentServingGraph(exported.sentiment_model).eval()
    vocab = _embedding_size(exported.sentiment_model)
    batches = list(parity.sentiment_batches(vocab, exported.sentiment_meta["max_len"]))
    path = exported.folder / "sentiment.onnx"
    agreement = _agreement_on_cuda("sentiment", path, "fp32", graph, batches)
    assert agreement.passed, agreement.describe()
    assert agreement.measures["max_prob_diff"] <= 1e-3


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_cuda_runtime_matches_the_cpu_runtime(exported: Exported, batch: int) -> None:
    """Whole ``recommend`` calls (encoding, I/O binding, decoding) on CUDA and on the CPU."""
    gpu = OnnxRecsScorer(exported.folder / "recs.onnx", ON_GPU)
    cpu = OnnxRecsScorer(exported.folder / "recs.onnx", ON_CPU)
    histories = _histories(np.random.default_rng(batch), batch, exported.recs_meta["max_len"])
    exclude = [{f"item-{row % 40}"} for row in range(batch)]
    on_gpu = gpu.recommend(histories, exclude, 10)
    on_cpu = cpu.recommend(histories, exclude, 10)
    same_ids = 0
    for a, b, banned in zip(on_gpu, on_cpu, exclude, strict=True):
        assert a.fallback == b.fallback and len(a.items) == 10
        assert not {s.item_id for s in a.items} & banned
        if [s.item_id for s in a.items] == [s.item_id for s in b.items]:
            same_ids += 1
            np.testing.assert_allclose(
                [s.score for s in a.items],
                [s.score for s in b.items],
                rtol=CUDA_FP32_SCORE_RTOL,
                atol=CUDA_FP32_SCORE_RTOL,
            )
    assert same_ids >= 0.9 * batch


def test_cuda_sentiment_probabilities_sum_to_one(exported: Exported) -> None:
    gpu = OnnxSentimentScorer(exported.folder / "sentiment.onnx", ON_GPU)
    cpu = OnnxSentimentScorer(exported.folder / "sentiment.onnx", ON_CPU)
    texts = ["great product", "太差了，不推荐", "ok", "", "love it 😍" * 50]
    for a, b in zip(gpu.classify(texts), cpu.classify(texts), strict=True):
        assert a.label == b.label and a.flags == b.flags
        assert abs(sum(a.probs.values()) - 1.0) < 1e-5


def test_export_measures_fp16_agreement_on_cuda(exported: Exported) -> None:
    """Where CUDA runs, the fp16 variant is judged on CUDA, the provider it is made for."""
    fp16 = exported.recs["fp16"]
    assert fp16.written, fp16.describe()
    assert fp16.measured_on == CUDA
    assert exported.recs["int8"].measured_on == CPU
