"""The onnxruntime scorers on real exported tiny models: inputs, fallback, providers, reload."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from recstream.export.metadata import PREFIX
from recstream.model.features import ACTION_IDS, query_hashes
from recstream.streams.scoring import (
    EMPTY_TEXT,
    ModelLoadError,
    OnnxRecsScorer,
    OnnxSentimentScorer,
    RuntimeOptions,
    Token,
    load_scorers,
    runs_on_cuda,
    served_variant,
    weights_sha256_of,
)
from recstream.streams.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Exported
    from torch import Tensor

CPU = RuntimeOptions(providers=("CPUExecutionProvider",))
CLICKS = [Token(f"item-{i}", "view") for i in range(40)]


@pytest.fixture(scope="module")
def recs(exported: Exported) -> OnnxRecsScorer:
    return OnnxRecsScorer(exported.folder / "recs.onnx", CPU)


@pytest.fixture(scope="module")
def sentiment(exported: Exported) -> OnnxSentimentScorer:
    return OnnxSentimentScorer(exported.folder / "sentiment.onnx", CPU)


def _torch_top(exported: Exported, history: list[Token], k: int) -> list[str]:
    """Top-k item ids computed directly with the PyTorch model from the raw tokens."""
    index = {item: i for i, item in enumerate(exported.recs_meta["vocab"], start=2)}
    items = [index.get(t.item_id, 1) if t.item_id else 0 for t in history]
    actions = [ACTION_IDS[t.action] for t in history]
    words = [query_hashes(t.query) if t.query else [0] * 4 for t in history]
    with torch.no_grad():
        scores = exported.recs_model.score_last(
            torch.tensor([items]),
            torch.tensor([actions]),
            torch.tensor([words]),
            torch.tensor([len(history)]),
        )[0]
    vocab = ["", "", *exported.recs_meta["vocab"]]
    return [vocab[i] for i in torch.topk(scores, k).indices.tolist()]


def test_recommend_matches_pytorch_from_raw_tokens(
    exported: Exported, recs: OnnxRecsScorer
) -> None:
    """Encoding (order, searches, actions, vocab) is what the model was trained on."""
    histories = [
        [
            Token("item-3", "view"),
            Token(None, "search", "Red shoes size 42"),
            Token("item-7", "purchase"),
        ],
        [Token("item-1", "add_to_cart")],
        [Token(None, "search", "红色 鞋子"), Token("item-39", "view"), Token("unknown", "view")],
        CLICKS[:16],
    ]
    results = recs.recommend(histories, [set() for _ in histories], 10)
    for history, result in zip(histories, results, strict=True):
        assert not result.fallback
        assert [s.item_id for s in result.items] == _torch_top(exported, history, 10)
        scores = [s.score for s in result.items]
        assert scores == sorted(scores, reverse=True)
        assert result.model_version == recs.model_version


def test_only_the_last_max_len_tokens_count(exported: Exported, recs: OnnxRecsScorer) -> None:
    long_history = CLICKS[:30]
    [long_result, tail_result] = recs.recommend(
        [long_history, long_history[-16:]], [set(), set()], 10
    )
    assert long_result.items == tail_result.items
    assert [s.item_id for s in long_result.items] == _torch_top(exported, long_history[-16:], 10)


def test_batching_and_bucketing_do_not_change_results(recs: OnnxRecsScorer) -> None:
    short = [Token("item-5", "view"), Token("item-6", "add_to_cart")]
    alone = recs.recommend([short], [set()], 10)[0]
    mixed = recs.recommend([CLICKS[:16], short, CLICKS[:9]], [set(), set(), set()], 10)[1]
    assert [s.item_id for s in alone.items] == [s.item_id for s in mixed.items]
    np.testing.assert_allclose(
        [s.score for s in alone.items], [s.score for s in mixed.items], rtol=1e-5
    )


def test_a_batch_run_in_parts_by_length_answers_like_each_history_alone(
    recs: OnnxRecsScorer,
) -> None:
    lengths = [1, 2, 3, 16, 2, 30, 1, 5, 9, 3, 2, 40, 7, 1, 2, 12, 3, 2, 1, 20]
    histories = [CLICKS[:n] for n in lengths]
    assert len(recs._model.current().runs(histories)) > 1
    together = recs.recommend(histories, [set()] * len(histories), 10)
    for history, result in zip(histories, together, strict=True):
        alone = recs.recommend([history], [set()], 10)[0]
        assert [s.item_id for s in result.items] == [s.item_id for s in alone.items]
        np.testing.assert_allclose(
            [s.score for s in result.items], [s.score for s in alone.items], rtol=1e-5
        )


def test_scores_come_from_one_gemm_with_the_mask_in_its_bias(
    exported: Exported, tmp_path: Path
) -> None:
    """No pass over the ``[B, items]`` scores between the output layer and the
    exclusions: the PAD/OOV mask is folded into the output layer's bias at load."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(exported.folder / "recs.onnx", options, providers=CPU.providers)
    graph = onnx.load(tmp_path / "optimized.onnx").graph
    producers = {output: node for node in graph.node for output in node.output}
    scatter = producers[next(n for n in graph.node if n.op_type == "TopK").input[0]]
    assert scatter.op_type == "ScatterElements"
    scores = producers[scatter.input[0]]
    assert scores.op_type == "Gemm", f"scores made by {scores.op_type} {scores.name}"


def test_exclusions_are_honoured(recs: OnnxRecsScorer) -> None:
    history = [Token("item-2", "view")]
    before = recs.recommend([history], [set()], 10)[0]
    banned = {s.item_id for s in before.items[:4]} | {"not-in-vocab"}
    after = recs.recommend([history], [banned], 10)[0]
    assert not banned & {s.item_id for s in after.items}
    assert [s.item_id for s in after.items[:6]] == [s.item_id for s in before.items[4:]]


def test_no_usable_history_falls_back_to_popular(exported: Exported, recs: OnnxRecsScorer) -> None:
    popular = exported.recs_meta["popular"]
    histories: list[list[Token]] = [
        [],
        [Token("never-seen", "view"), Token("also-unknown", "purchase")],
        [Token(None, "search", "   ")],
        [Token("item-1", "teleport")],  # unknown action: skipped
        [Token(None, "search", "shoes")],  # a search alone is usable
    ]
    results = recs.recommend(histories, [set(), {popular[0]}, set(), set(), set()], 5)
    assert [r.fallback for r in results] == [True, True, True, True, False]
    assert [s.item_id for s in results[0].items] == popular[:5]
    assert [s.item_id for s in results[1].items] == popular[1:6]
    assert all(s.score == 0.0 for s in results[0].items)
    assert results[4].items and results[4].items[0].score != 0.0


def test_k_is_capped_at_the_graph_top_k(
    recs: OnnxRecsScorer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        [result] = recs.recommend([CLICKS[:3]], [set()], 50)
    assert len(result.items) == recs.max_k == 20
    assert len(recs.recommend([CLICKS[:3]], [set()], 3)[0].items) == 3


def test_a_run_asks_the_graph_for_the_k_items_it_serves(recs: OnnxRecsScorer) -> None:
    """The graph returns k items when k are asked (its top-k's work grows with k), the
    first k of what a run asking for all of them returns."""
    model = recs._model.current()
    assert model.takes_k and model.top_k == 20
    histories = [CLICKS[:5], CLICKS[7:9], CLICKS[:30]]
    exclude = [{CLICKS[4].item_id or ""}, set(), set()]
    for k in (1, 3, 20):
        batch = model.encode(histories, k=k)
        top_items, top_scores = model.run(batch, model.exclusions(batch, exclude))
        assert top_items.shape == top_scores.shape == (3, k)
    full = recs.recommend(histories, exclude, 20)
    for k in (1, 3, 19):
        assert [r.items for r in recs.recommend(histories, exclude, k)] == [
            r.items[:k] for r in full
        ]


def test_a_fixed_k_graph_from_before_slots_still_serves(exported: Exported, tmp_path: Path) -> None:
    """A recommender exported before the ``slots`` input (its K fixed at ``top_k``) loads
    and answers as the current graph does, every run returning ``top_k`` items."""
    from recstream.export import onnx_export, parity
    from recstream.export.onnx_export import RecsServingGraph

    class FixedK(RecsServingGraph):
        def forward(  # type: ignore[override]
            self, items: Tensor, actions: Tensor, words: Tensor, lengths: Tensor, exclude: Tensor
        ) -> tuple[Tensor, Tensor]:
            return super().forward(items, actions, words, lengths, exclude, self.slots)

        slots = torch.zeros(20, dtype=torch.bool)

    graph = FixedK(exported.recs_model, 20, exported.recs_model.n_items).eval()
    example = parity.recs_batch(np.random.default_rng(0), 2, 5, exported.recs_model.n_items)
    del example["slots"]
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=1, max=16)
    dynamic = {
        "items": {0: batch, 1: seq},
        "actions": {0: batch, 1: seq},
        "words": {0: batch, 1: seq},
        "lengths": {0: batch},
        "exclude": {0: batch, 1: torch.export.Dim("exclude", min=1, max=64)},
    }
    plain = tmp_path / "plain.onnx"
    onnx_export._dynamo_export(graph, example, dynamic, ("top_items", "top_scores"), plain)
    current = exported.folder / "recs.onnx"
    props = {
        p.key: p.value for p in onnx.load(str(current)).metadata_props if p.key.startswith(PREFIX)
    }
    model = onnx.load(str(plain))
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "recs.onnx"))
    old = OnnxRecsScorer(tmp_path / "recs.onnx", CPU)
    assert not old._model.current().takes_k
    new = OnnxRecsScorer(current, CPU)
    histories = [CLICKS[:5], CLICKS[7:9]]
    for k in (3, 20):
        assert old.recommend(histories, [set(), set()], k) == new.recommend(
            histories, [set(), set()], k
        )
    fixed = old._model.current()
    encoded = fixed.encode(histories, k=3)
    top_items, _ = fixed.run(encoded, fixed.exclusions(encoded, [(), ()]))
    assert top_items.shape == (2, 20)  # its K is fixed: k is cut after the run


def test_bad_calls_are_clear_errors(recs: OnnxRecsScorer) -> None:
    with pytest.raises(ValueError, match="2 histories but 1 exclusion"):
        recs.recommend([[], []], [set()], 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        recs.recommend([[]], [set()], 0)
    assert recs.recommend([], [], 5) == []


@pytest.fixture(scope="module")
def no_cuda(exported: Exported) -> None:
    """Skip on a machine where CUDA really runs (test_export_cuda.py covers it there)."""
    if runs_on_cuda(exported.folder / "recs.onnx"):
        pytest.skip("CUDA runs here: the CPU-fallback checks do not apply")


@pytest.mark.usefixtures("no_cuda")
def test_cpu_provider_is_logged(exported: Exported, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recstream.streams.scoring"):
        scorer = OnnxRecsScorer(exported.folder / "recs.onnx", RuntimeOptions())
    assert scorer.providers == ["CPUExecutionProvider"]
    assert "loaded with providers ['CPUExecutionProvider']" in caplog.text
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "CUDAExecutionProvider is listed but cannot run here" in caplog.text


def _folder_with(exported: Exported, folder: Path, *names: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy2(exported.folder / name, folder / name)
    return folder


def test_auto_serves_int8_on_the_cpu_when_it_has_the_fp32_file_s_weights(
    exported: Exported, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert exported.recs["int8"].written and exported.sentiment["int8"].written
    folder = exported.folder
    assert weights_sha256_of(folder / "recs.int8.onnx") == weights_sha256_of(folder / "recs.onnx")
    with caplog.at_level(logging.INFO, logger="recstream.streams.scoring"):
        assert served_variant(folder, "recs", "auto", RuntimeOptions()) == "int8"
        recs, sentiment = load_scorers(Settings(model_dir=folder))  # auto is the default
    assert "auto serves int8" in caplog.text
    assert recs.model_version.endswith("-int8") and sentiment.model_version.endswith("-int8")
    assert recs.recommend([CLICKS[:3]], [set()], 3)[0].items
    only_fp32 = _folder_with(exported, tmp_path / "fp32", "recs.onnx", "sentiment.onnx")
    assert served_variant(only_fp32, "recs", "auto", CPU) == "fp32"
    recs, _ = load_scorers(Settings(model_dir=only_fp32))
    assert not recs.model_version.endswith("-int8")  # an fp32 version has no suffix


def test_auto_serves_fp32_beside_an_int8_of_other_weights(
    exported: Exported,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    as_of_other_weights: Callable[[Path], None],
) -> None:
    folder = _folder_with(exported, tmp_path, "recs.onnx", "recs.int8.onnx")
    as_of_other_weights(folder / "recs.int8.onnx")
    with caplog.at_level(logging.WARNING, logger="recstream.streams.scoring"):
        assert served_variant(folder, "recs", "auto", CPU) == "fp32"
    assert "recs.int8.onnx was not exported from the weights of recs.onnx" in caplog.text
    assert weights_sha256_of(folder / "missing.onnx") is None


def test_auto_serves_fp32_where_it_runs_on_cuda(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recstream.streams import scoring

    monkeypatch.setattr(scoring, "runs_on_cuda", lambda model: True)
    assert served_variant(exported.folder, "recs", "auto", RuntimeOptions()) == "fp32"
    assert served_variant(exported.folder, "recs", "auto", CPU) == "int8"  # CUDA not asked
    assert served_variant(exported.folder, "recs", "fp16", RuntimeOptions()) == "fp16"


def test_runs_on_cuda_is_false_for_what_cannot_run(exported: Exported, tmp_path: Path) -> None:
    """A file or bytes that are no model never count as running on CUDA (and never raise)."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    assert runs_on_cuda(broken) is False
    assert runs_on_cuda(b"not an onnx model") is False
    model = exported.folder / "recs.onnx"
    assert runs_on_cuda(model.read_bytes()) == runs_on_cuda(model)


@pytest.mark.usefixtures("no_cuda")
def test_fp16_with_default_providers_loads_on_the_cpu_without_cuda(exported: Exported) -> None:
    """onnxruntime-gpu lists CUDA without a GPU; fp16 must not get the CPU fusions that crash.

    In a child process, so that a crash (it was a segfault) fails this test alone.
    """
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from recstream.streams.scoring import OnnxRecsScorer, RuntimeOptions, Token\n"
        "scorer = OnnxRecsScorer(Path(sys.argv[1]), RuntimeOptions())\n"
        "result = scorer.recommend([[Token('item-3', 'view')]], [set()], 3)[0]\n"
        "assert scorer.providers == ['CPUExecutionProvider'], scorer.providers\n"
        "assert len(result.items) == 3 and not result.fallback, result\n"
    )
    path = exported.folder / "recs.fp16.onnx"
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.usefixtures("no_cuda")
def test_require_gpu_refuses_without_cuda(exported: Exported) -> None:
    settings = Settings(model_dir=exported.folder, require_gpu=True)
    with pytest.raises(ModelLoadError, match="REQUIRE_GPU"):
        load_scorers(settings)
    cpu_only = RuntimeOptions(providers=("CPUExecutionProvider",), require_gpu=True)
    with pytest.raises(ModelLoadError, match="REQUIRE_GPU"):
        OnnxRecsScorer(exported.folder / "recs.onnx", cpu_only)


def test_unknown_providers_only_is_refused(exported: Exported) -> None:
    with pytest.raises(ModelLoadError, match="none of the providers"):
        OnnxRecsScorer(exported.folder / "recs.onnx", RuntimeOptions(providers=("NoSuchProvider",)))


def test_load_scorers_reads_model_dir_and_threads(exported: Exported) -> None:
    settings = Settings(
        model_dir=exported.folder, providers=("CPUExecutionProvider",), intra_op_threads=1
    )
    recs, sentiment = load_scorers(settings)
    assert recs.model_version.startswith("recs-") and sentiment.model_version.startswith(
        "sentiment-"
    )
    assert recs.recommend([CLICKS[:2]], [set()], 3)[0].items


def test_bound_runs_equal_plain_session_runs(recs: OnnxRecsScorer) -> None:
    """Runs through the per-shape I/O bindings give what a plain ``session.run`` gives
    on the same inputs, also when shapes alternate and buffers are reused."""
    model = recs._model.current()
    shapes = [(CLICKS[:5], 2), (CLICKS[:40], 3), (CLICKS[:5], 2), (CLICKS[3:9], 1)]
    for history, rows in shapes * 2:
        batch = model.encode([history] * rows)
        exclude = model.exclusions(batch, [{CLICKS[0].item_id or ""}] * rows)
        feeds = {
            "items": batch.items.copy(),
            "actions": batch.actions.copy(),
            "words": batch.words.copy(),
            "lengths": batch.lengths.copy(),
            "exclude": exclude.copy(),
            "slots": np.zeros(model.top_k, np.bool_),
        }
        top_items, top_scores = model.run(batch, exclude)
        plain_items, plain_scores = model.session.run(None, feeds)
        np.testing.assert_array_equal(top_items, plain_items)
        np.testing.assert_array_equal(top_scores, plain_scores)


# --- sentiment -----------------------------------------------------------------------


def test_sentiment_empty_text_is_neutral_and_flagged(sentiment: OnnxSentimentScorer) -> None:
    results = sentiment.classify(["", "   \n\t", "good value"])
    for result in results[:2]:
        assert result.label == "neutral"
        assert result.probs == {"negative": 0.0, "neutral": 1.0, "positive": 0.0}
        assert result.flags == (EMPTY_TEXT,)
    assert results[2].flags == ()
    assert sentiment.classify([]) == []
    assert sentiment.classify(["", " "])[0].flags == (EMPTY_TEXT,)


def test_sentiment_matches_pytorch_and_sums_to_one(
    exported: Exported, sentiment: OnnxSentimentScorer
) -> None:
    from recstream.model.text_tokens import TextTokenizer

    texts = ["great product, works well", "质量很好，非常满意", "broke 😡 " * 30, "not good"]
    results = sentiment.classify(texts)
    tokenizer = TextTokenizer.from_dict(exported.sentiment_meta["tokenizer"])
    tokens, lengths = tokenizer.encode_batch(texts, 64)
    lexicon = tokenizer.lexicon_features(texts)
    assert lexicon[0, 0] > 0 > lexicon[3, 0]  # the tiny model's lexicon is in its metadata
    with torch.no_grad():
        logits = exported.sentiment_model(
            torch.from_numpy(tokens), torch.from_numpy(lengths), torch.from_numpy(lexicon)
        )
        probs = torch.softmax(logits, -1).numpy()
    labels = ["negative", "neutral", "positive"]
    for result, reference in zip(results, probs, strict=True):
        assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose([result.probs[label] for label in labels], reference, atol=1e-5)
        assert result.label == labels[int(reference.argmax())]
        assert result.model_version == sentiment.model_version


# --- hot reload ----------------------------------------------------------------------


def _new_version(src: Path, dest: Path, trained_at: str) -> str:
    """Write ``src`` to ``dest`` as a different model version (same graph)."""
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    version = props[PREFIX + "version"].replace("20260101T000000Z", trained_at)
    props[PREFIX + "version"] = version
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dest))
    return version


def test_hot_reload_under_load_switches_version_once(exported: Exported, tmp_path: Path) -> None:
    path = tmp_path / "recs.onnx"
    shutil.copy(exported.folder / "recs.onnx", path)
    staged = tmp_path / "staged.onnx"
    new_version = _new_version(path, staged, "20260202T000000Z")
    scorer = OnnxRecsScorer(path, CPU, reload_interval=0.005)
    old_version = scorer.model_version
    assert old_version != new_version
    seen: list[list[str]] = [[] for _ in range(3)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def call(slot: int) -> None:
        while not stop.is_set():
            try:
                results = scorer.recommend([CLICKS[:5], []], [set(), set()], 5)
                seen[slot].append(results[0].model_version)
                assert results[0].model_version == results[1].model_version
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    os.replace(staged, path)  # what `recstream export` does
    deadline = time.monotonic() + 20
    while scorer.model_version != new_version and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    for versions in seen:
        switches = sum(a != b for a, b in itertools.pairwise(versions))
        assert versions[0] == old_version and versions[-1] == new_version and switches == 1


def test_broken_new_file_keeps_the_running_model(exported: Exported, tmp_path: Path) -> None:
    path = tmp_path / "recs.onnx"
    shutil.copy(exported.folder / "recs.onnx", path)
    scorer = OnnxRecsScorer(path, CPU, reload_interval=3600)
    version = scorer.model_version
    tmp = tmp_path / "broken.tmp"
    tmp.write_bytes(b"half a file")
    os.replace(tmp, path)
    assert scorer.reload() is False
    assert scorer.model_version == version
    assert scorer.recommend([CLICKS[:3]], [set()], 3)[0].model_version == version
    new_version = _new_version(exported.folder / "recs.onnx", tmp, "20260303T000000Z")
    os.replace(tmp, path)
    assert scorer.reload() is True  # a control message
    assert scorer.model_version == new_version


def test_reload_checks_are_rate_limited(exported: Exported, tmp_path: Path) -> None:
    path = tmp_path / "sentiment.onnx"
    shutil.copy(exported.folder / "sentiment.onnx", path)
    scorer = OnnxSentimentScorer(path, CPU, reload_interval=3600)
    version = scorer.model_version
    staged = tmp_path / "staged.onnx"
    _new_version(path, staged, "20260404T000000Z")
    os.replace(staged, path)
    assert scorer.classify(["fine"])[0].model_version == version  # not checked yet
    assert scorer.reload() and scorer.model_version != version


def test_invalid_tokens_are_dropped_and_any_sequence_works(
    exported: Exported, recs: OnnxRecsScorer
) -> None:
    clean = [Token("item-4", "view"), Token(None, "search", "shoes"), Token("item-9", "purchase")]
    noisy = [clean[0], Token(None, "view"), clean[1], Token("item-2", "teleport"), clean[2]]
    results = recs.recommend([clean, noisy, deque(noisy), tuple(clean)], [set()] * 4, 10)
    assert len({r.items for r in results}) == 1
    assert [s.item_id for s in results[0].items] == _torch_top(exported, clean, 10)


def test_concurrent_calls_from_scoring_threads_match_serial_ones(
    recs: OnnxRecsScorer, sentiment: OnnxSentimentScorer
) -> None:
    """The worker scores several batches at once (``RECSTREAM_SCORING_THREADS``): calls
    from 4 threads give exactly what the same calls give one after another."""
    rng = np.random.default_rng(3)
    batches = [
        [CLICKS[int(start) : int(start) + int(length)] for start, length in rows]
        for rows in rng.integers(1, 20, size=(8, 16, 2))
    ]
    texts = [[f"review {n} {'great' if n % 2 else 'awful'} {'!' * n}"] * (n + 1) for n in range(8)]
    serial = [
        (recs.recommend(b, [set()] * len(b), 10), sentiment.classify(t))
        for b, t in zip(batches, texts, strict=True)
    ]
    concurrent: dict[int, object] = {}
    start = threading.Barrier(4)

    def work(offset: int) -> None:
        start.wait()
        for n in range(offset, len(batches), 4):
            for _ in range(5):
                result = (
                    recs.recommend(batches[n], [set()] * len(batches[n]), 10),
                    sentiment.classify(texts[n]),
                )
                assert result == serial[n]
            concurrent[n] = result

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [concurrent[n] for n in range(len(batches))] == serial
