"""Scoring without models: fakes, length buckets, input buffers, reload logic, no torch."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from collections.abc import Collection, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from fake_sessions import BindingSession

from recstream.export.metadata import ModelMetadata
from recstream.model.features import FIRST_ITEM, query_hashes
from recstream.streams import scoring
from recstream.streams.records import ScoredItem
from recstream.streams.scoring import (
    EMPTY_TEXT,
    MAX_RUN_ROWS,
    MIN_RUN_ROWS,
    SEQUENCE_BUCKETS,
    FakeRecsScorer,
    FakeSentimentScorer,
    ModelLoadError,
    OnnxRecsScorer,
    OnnxSentimentScorer,
    RecsModel,
    RecsScorer,
    ReloadingModel,
    SentimentScorer,
    Token,
    bucket_length,
    new_token,
)


def test_scoring_does_not_import_torch() -> None:
    code = (
        "import sys, recstream.streams.scoring\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("item_id", "action", "query"), [("p1", "view", None), (None, "search", "red shoes")]
)
def test_a_token_made_without_init_is_the_token_init_makes(
    item_id: str | None, action: str, query: str | None
) -> None:
    made, expected = new_token(item_id, action, query), Token(item_id, action, query)
    assert type(made) is Token
    assert (made, hash(made), repr(made), made.encoded) == (
        expected,
        hash(expected),
        repr(expected),
        expected.encoded,
    )


@pytest.mark.parametrize(
    ("length", "max_len", "expected"),
    [(1, 50, 8), (8, 50, 8), (9, 50, 16), (32, 50, 32), (33, 50, 50), (50, 50, 50), (3, 5, 5)],
)
def test_bucket_length(length: int, max_len: int, expected: int) -> None:
    assert bucket_length(length, max_len) == expected


def test_buckets_are_few_and_bounded() -> None:
    widths = {bucket_length(n, 50) for n in range(1, 51)}
    assert widths == {8, 16, 32, 50}
    assert all(b in SEQUENCE_BUCKETS or b == 50 for b in widths)


@pytest.mark.parametrize(
    ("variant", "providers", "expected"),
    [
        ("fp16", ["CPUExecutionProvider"], "ORT_ENABLE_BASIC"),
        ("fp16", ["CUDAExecutionProvider", "CPUExecutionProvider"], "ORT_ENABLE_ALL"),
        ("fp32", ["CPUExecutionProvider"], "ORT_ENABLE_ALL"),
        ("int8", ["CPUExecutionProvider"], "ORT_ENABLE_ALL"),
    ],
)
def test_fp16_without_cuda_gets_basic_optimizations_only(
    variant: str, providers: list[str], expected: str
) -> None:
    level = scoring.optimization_level(variant, providers)
    assert level == getattr(scoring.ort.GraphOptimizationLevel, expected)


def test_batch_buffers_are_bound_once_per_shape_and_reused() -> None:
    model = _table_model()
    first = model.buffers.get(3, 8, 8)
    assert first.items.shape == (3, 8) and first.words.shape == (3, 8, 4)
    assert first.top_items.shape == (3, 8) and first.top_scores.dtype == np.float32
    assert model.buffers.get(3, 8, 8) is first  # the same arrays, still bound
    assert model.buffers.get(3, 16, 8) is not first and model.buffers.get(2, 8, 8) is not first
    fewer = model.buffers.get(3, 8, 5)  # 5 items asked per row: outputs of their own
    assert fewer is not first and fewer.top_items.shape == (3, 5)
    session = cast(_TableSession, model.session)
    assert session.bindings == 4  # one binding per shape, none per call


def test_batch_buffers_keep_the_most_recently_used_shapes() -> None:
    model = _table_model()
    one_row = scoring.BoundBatch(model.session, 1, 8, 8, False).nbytes
    buffers = scoring.BatchBuffers(model.session, False, capacity_bytes=4 * one_row)
    a, b = buffers.get(1, 8, 8), buffers.get(2, 8, 8)  # 1 + 2 rows: room for 1 more row
    assert buffers.get(1, 8, 8) is a  # a is now the most recent: b goes first
    buffers.get(1, 8, 8)
    buffers.get(3, 8, 8)  # 1 + 2 + 3 rows > 4: b, the least recently used, goes
    assert buffers.get(1, 8, 8) is a and buffers.get(2, 8, 8) is not b


def test_batch_buffers_are_per_thread() -> None:
    model = _table_model()
    mine = model.buffers.get(2, 8, 8)
    theirs: list[scoring.BoundBatch] = []
    thread = threading.Thread(target=lambda: theirs.append(model.buffers.get(2, 8, 8)))
    thread.start()
    thread.join()
    assert not np.shares_memory(mine.items, theirs[0].items)


def test_reused_buffers_carry_nothing_over_between_batches() -> None:
    """A batch encoded into buffers that held a longer one equals a fresh encoding."""
    model = _table_model()
    long = [[Token("v1", "view"), Token(None, "search", "red shoes")] * 3] * 2
    short = [[Token("v2", "purchase")], [Token(None, "search", "手机")]]
    model.encode(long)
    reused = model.encode(short)
    fresh = _table_model().encode(short)
    for ours, theirs in zip(
        (reused.items, reused.actions, reused.words, reused.lengths),
        (fresh.items, fresh.actions, fresh.words, fresh.lengths),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)


def test_a_changed_exclusion_array_is_bound_again() -> None:
    """``run`` with a caller's array: a later call sees the array's new contents."""
    model = _table_model()
    encoded = model.encode([[Token("v1", "view")]])
    exclude = np.zeros((1, 1), np.int64)
    first = model.run(encoded, exclude)[0][0].tolist()
    exclude[0, 0] = first[0]
    second = model.run(encoded, exclude)[0][0].tolist()
    assert second[0] != first[0]
    with pytest.raises(ValueError, match="2 exclusion rows for 1"):
        model.run(encoded, np.zeros((2, 1), np.int64))


@pytest.mark.parametrize("on_cuda", [False, True])
def test_each_run_sees_the_inputs_encoded_for_it(on_cuda: bool) -> None:
    """The same buffers, batch after batch: each run scores what was encoded into them
    (on CUDA onnxruntime copies an input when it is bound, not when it runs)."""
    model = _table_model(on_cuda=on_cuda)
    exclude = np.zeros((1, 1), np.int64)
    for item in ("v1", "v3", "v0"):
        encoded = model.encode([[Token("v2", "view"), Token(item, "view")]])
        top = model.run(encoded, exclude)[0][0].tolist()
        assert model.item_ids[top[0]] == item  # the graph puts the last item first
    assert exclude[0, 0] == 0
    exclude[0, 0] = model.index["v0"]  # the caller's array changed: seen by the next run
    assert model.item_ids[model.run(encoded, exclude)[0][0][0]] != "v0"


def test_fake_recs_is_deterministic_and_honours_exclusions() -> None:
    scorer: RecsScorer = FakeRecsScorer([f"i{n}" for n in range(10)], version="fake-1")
    history = [Token("i1", "view"), Token(None, "search", "shoes")]
    first = scorer.recommend([history, []], [{"i3"}, {"i0"}], 4)
    second = scorer.recommend([history, []], [{"i3"}, {"i0"}], 4)
    assert first == second
    assert not first[0].fallback and len(first[0].items) == 4
    assert "i3" not in {s.item_id for s in first[0].items}
    assert first[1].fallback and [s.item_id for s in first[1].items] == ["i1", "i2", "i3", "i4"]
    assert scorer.model_version == "fake-1" and first[0].model_version == "fake-1"


def test_fake_sentiment_flags_empty_text() -> None:
    scorer: SentimentScorer = FakeSentimentScorer()
    empty, text = scorer.classify(["  ", "nice shoes"])
    assert empty.label == "neutral" and empty.flags == (EMPTY_TEXT,)
    assert empty.probs["neutral"] == 1.0
    assert sum(text.probs.values()) == pytest.approx(1.0)
    assert scorer.classify(["nice shoes"])[0] == text


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reloading_model_checks_only_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_text("v1")
    loads: list[str] = []

    def load(p: Path) -> str:
        text = p.read_text()
        if text == "broken":
            raise ModelLoadError("broken file")
        loads.append(text)
        return text

    clock = _Clock()
    model = ReloadingModel(path, load, interval=10.0, clock=clock)
    assert model.current() == "v1"
    path.write_text("v2-longer")  # size changes: a new signature
    clock.now = 5.0
    assert model.current() == "v1"  # not due yet
    clock.now = 10.0
    assert model.current() == "v2-longer"
    path.write_text("broken")
    clock.now = 20.0
    assert model.current() == "v2-longer"  # kept
    clock.now = 30.0
    assert model.current() == "v2-longer" and loads == ["v1", "v2-longer"]  # not retried
    path.write_text("v3")
    assert model.reload() and model.current() == "v3"


# --- the recommender runtime around a stand-in session (no onnxruntime, no model) ---


class _TableSession(BindingSession):
    """Stands in for the recs graph: a fixed score per item, +100 for the row's last item.

    PAD and OOV score -inf, so a vocabulary smaller than top-k yields masked
    entries; ``exclude`` is masked like the real graph does.
    """

    def __init__(self, vocab_size: int, top_k: int, on_cuda: bool = False) -> None:
        super().__init__(on_cuda)
        self.base = np.random.default_rng(3).normal(size=vocab_size).astype(np.float32)
        self.base[:FIRST_ITEM] = -np.inf
        self.top_k = top_k

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = np.arange(len(feeds["lengths"]))
        scores = np.tile(self.base, (rows.size, 1))
        last = feeds["items"][rows, feeds["lengths"] - 1]
        scores[rows, last] += 100.0 * (last >= FIRST_ITEM)
        scores[rows[:, None], feeds["exclude"]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.items_asked(feeds, self.top_k)]
        return [top, np.take_along_axis(scores, top, axis=1)]


VOCAB = [f"v{n}" for n in range(6)]


def _table_model(top_k: int = 8, on_cuda: bool = False) -> RecsModel:
    meta = ModelMetadata(
        "recs",
        "recs-test",
        "fp32",
        12,
        {"vocab": VOCAB, "popular": ["v5", "v4", "v3", "v2"], "top_k": top_k},
    )
    session = _TableSession(len(VOCAB) + FIRST_ITEM, top_k, on_cuda)
    return RecsModel(cast(Any, session), meta)


def _table_scorer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> OnnxRecsScorer:
    model = _table_model()
    monkeypatch.setattr(scoring, "load_recs_model", lambda path, options: model)
    return OnnxRecsScorer(tmp_path / "recs.onnx")


def _random_histories(seed: int, count: int) -> list[Sequence[Token]]:
    rng = np.random.default_rng(seed)
    kinds = [
        lambda: Token(str(rng.choice(VOCAB)), "view"),
        lambda: Token(str(rng.choice(VOCAB)), "purchase"),
        lambda: Token("unknown", "add_to_cart"),
        lambda: Token(None, "search", str(rng.choice(["red shoes", "手机", " ", "a b c d e"]))),
        lambda: Token("v1", "search", "item id on a search"),
        lambda: Token(None, "search"),  # a search without a query
        lambda: Token(None, "view"),  # invalid: click without item
        lambda: Token("v2", "wink"),  # invalid: unknown action
    ]
    histories: list[Sequence[Token]] = []
    for _ in range(count):
        picks = rng.integers(len(kinds), size=int(rng.integers(0, 20)))
        history = [kinds[int(p)]() for p in picks]
        histories.append(deque(history) if rng.random() < 0.2 else history)
    return histories


def test_encoding_of_one_history() -> None:
    model = _table_model()
    history = [
        Token("v0", "view"),
        Token(None, "search", "Red shoes"),
        Token(None, "view"),  # dropped
        Token("nope", "purchase"),
        Token("v1", "teleport"),  # dropped
    ]
    batch = model.encode([history, []])
    assert batch.rows == [0]
    assert batch.items.tolist() == [[2, 0, 1] + [0] * 5]
    assert batch.actions.tolist() == [[1, 4, 3] + [0] * 5]
    assert batch.words[0, 1].tolist() == query_hashes("Red shoes")
    assert not batch.words[0, [0, *range(2, 8)]].any()
    assert batch.lengths.tolist() == [3]


def test_tokens_of_one_click_share_one_encoding_per_model() -> None:
    """A token new to the model leaves no new tuple when its item and action were
    encoded before (one container less per event for the garbage collector)."""
    model, other = _table_model(), _table_model()
    first, again = Token("v0", "view"), Token("v0", "view")
    assert model.encoding(first) is model.encoding(again)
    assert model.encoding(Token("v0", "purchase")) is not model.encoding(first)
    assert model.encoding(Token("nope", "view")) is model.encoding(Token("gone", "view"))
    assert model.encoding(Token("nope", "view")) is not model.encoding(Token("nope", "purchase"))
    # Another model (a hot reload) has encodings of its own, with its own tag.
    assert other.encoding(Token("v0", "view"))[0] != model.encoding(first)[0]
    batch = model.encode([[first, again, Token("nope", "view")]])
    assert batch.items.tolist() == [[2, 2, 1] + [0] * 5]
    assert batch.actions.tolist() == [[1, 1, 1] + [0] * 5]


@pytest.mark.parametrize("batch", [3, 70])  # list path (<= SMALL_EXCLUSIONS) and numpy path
def test_exclusions_pad_unknown_ids(batch: int) -> None:
    model = _table_model()
    exclude: list[Collection[str]] = [{"v0", "unknown"}, (), ["v5"]] * (batch // 3 + 1)
    encoded = model.encode([[Token("v1", "view")]] * batch)
    array = model.exclusions(encoded, exclude)
    assert array.shape == (batch, 2) and array.dtype == np.int64
    for row in range(batch):
        expected = {model.index[i] for i in exclude[row] if i in model.index}
        assert set(array[row].tolist()) - {0} == expected


@pytest.mark.parametrize("batch", [3, 20])
def test_decode_drops_masked_entries_and_keeps_order(batch: int) -> None:
    model = _table_model(top_k=8)
    histories = [[Token(VOCAB[n % 6], "view")] for n in range(batch)]
    exclude = [{"v0", "v1"} if n % 2 else set() for n in range(batch)]
    encoded = model.encode(histories)
    top_items, top_scores = model.run(encoded, model.exclusions(encoded, exclude))
    decoded = model.decode(top_items, top_scores, 8)
    for row, items in enumerate(decoded):
        ids = [s.item_id for s in items]
        assert len(ids) == 6 - len(exclude[row])  # 8 asked, PAD/OOV/excluded dropped
        assert ids[0] == VOCAB[row % 6] or VOCAB[row % 6] in exclude[row]
        assert not set(ids) & exclude[row]
        assert [s.score for s in items] == sorted((s.score for s in items), reverse=True)
    assert len(model.decode(top_items, top_scores, 2)[0]) == 2


@pytest.mark.parametrize("batch", [3, 70])
def test_exclusion_width_is_rounded_up_to_a_power_of_two(batch: int) -> None:
    model = _table_model()
    encoded = model.encode([[Token("v1", "view")]] * batch)
    exclude = [{"v0", "v2", "v3"}] + [set()] * (batch - 1)
    array = model.exclusions(encoded, exclude)
    assert array.shape == (batch, 4)
    assert sorted(array[0].tolist()) == [0, *sorted(model.index[i] for i in exclude[0])]
    assert not array[1:].any()
    assert [scoring.bucket_width(n) for n in (0, 1, 2, 3, 5, 64, 65)] == [1, 1, 2, 4, 8, 64, 128]


@pytest.mark.parametrize("batch", [1, 3, 20])  # one row, lists, numpy
@pytest.mark.parametrize("top_k", [4, 8])  # 4: nothing masked; 8: PAD and OOV come out
@pytest.mark.parametrize("k", [2, 4, 8])
def test_decode_matches_a_row_by_row_reference(batch: int, top_k: int, k: int) -> None:
    model = _table_model(top_k=top_k)
    histories = [[Token(VOCAB[n % 6], "view")] for n in range(batch)]
    exclude = [{"v0", "v1"} if n % 3 == 0 else set() for n in range(batch)]
    encoded = model.encode(histories)
    top_items, top_scores = model.run(encoded, model.exclusions(encoded, exclude))
    expected = [
        tuple(
            ScoredItem(model.item_ids[i], s)
            for i, s in zip(row_items, row_scores, strict=True)
            if s > -np.inf and i >= FIRST_ITEM
        )
        for row_items, row_scores in zip(
            top_items[:, :k].tolist(), top_scores[:, :k].tolist(), strict=True
        )
    ]
    assert model.decode(top_items, top_scores, k) == expected


@pytest.mark.parametrize("batch", [4, 12])
def test_recommend_around_a_session(
    batch: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scorer = _table_scorer(monkeypatch, tmp_path)
    histories = [[Token(VOCAB[n % 6], "view")] if n % 3 else [] for n in range(batch)]
    exclude = [{"v5"} if n % 2 else set() for n in range(batch)]
    results = scorer.recommend(histories, exclude, 3)
    for n, result in enumerate(results):
        ids = [s.item_id for s in result.items]
        assert result.fallback == (n % 3 == 0) and result.model_version == "recs-test"
        assert len(ids) == 3 and not set(ids) & exclude[n]
        if result.fallback:
            assert ids == [p for p in ["v5", "v4", "v3", "v2"] if p not in exclude[n]][:3]
        else:
            assert ids[0] == VOCAB[n % 6] or VOCAB[n % 6] in exclude[n]


class _CudaTableSession(_TableSession):
    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _views(n: int) -> list[Token]:
    return [Token(VOCAB[step % 6], "view") for step in range(n)]


def test_batches_run_in_parts_by_padded_length() -> None:
    model = _table_model()
    short = [_views(3)] * 20  # padded to 8
    few = [_views(12)] * 3  # 16: too few for a run of their own
    long = [_views(30)] * 10  # 32
    histories = [*long[:5], *short, *few, *long[5:]]
    parts = model.runs(histories)
    assert [sorted(map(len, map(histories.__getitem__, part))) for part in parts] == [
        [3] * 20,
        [12] * 3 + [30] * 10,
    ]
    assert sorted(row for part in parts for row in part) == list(range(len(histories)))
    # A part is cut at MAX_RUN_ROWS rows.
    many = [_views(3)] * (2 * MAX_RUN_ROWS + 5)
    assert list(map(len, model.runs(many))) == [MAX_RUN_ROWS, MAX_RUN_ROWS, 5]
    # One run: a batch of at most MIN_RUN_ROWS, or a model on CUDA (extra runs cost more
    # there than padding).
    assert model.runs(histories[: MIN_RUN_ROWS + 2][-MIN_RUN_ROWS:]) == [list(range(8))]
    cuda = RecsModel(cast(Any, _CudaTableSession(len(VOCAB) + FIRST_ITEM, 8)), model.meta)
    assert cuda.runs(histories) == [list(range(len(histories)))]


@pytest.mark.parametrize("seed", range(3))
def test_recommend_in_parts_answers_each_history_as_alone(
    seed: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scorer = _table_scorer(monkeypatch, tmp_path)
    session = cast(_TableSession, scorer._model.current().session)
    widths: list[int] = []
    run = session.run

    def recording_run(outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        widths.append(feeds["items"].shape[1])
        return run(outputs, feeds)

    monkeypatch.setattr(session, "run", recording_run)
    rng = np.random.default_rng(seed)
    histories = _random_histories(seed, 40) + [_views(int(n)) for n in rng.integers(1, 40, 30)]
    order = rng.permutation(len(histories))
    histories = [histories[i] for i in order]
    exclude = [{"v1"} if n % 4 == 0 else set() for n in range(len(histories))]
    together = scorer.recommend(histories, exclude, 5)
    assert len(widths) > 1 and widths == sorted(widths)  # run by length, shortest first
    alone = [scorer.recommend([h], [e], 5)[0] for h, e in zip(histories, exclude, strict=True)]
    assert together == alone


def test_parts_are_encoded_then_run_then_decoded_each_in_buffers_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Parts of one shape are all encoded before the first run: each needs its own
    buffers, or a later part's inputs would overwrite an earlier one's."""
    scorer = _table_scorer(monkeypatch, tmp_path)
    model = scorer._model.current()
    session = cast(_TableSession, model.session)
    steps: list[str] = []
    encode, run, decode = model.encode, session.run, model.decode

    def recording_encode(*args: Any, **kwargs: Any) -> scoring.EncodedBatch:
        steps.append("encode")
        return encode(*args, **kwargs)

    def recording_run(outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        steps.append("run")
        return run(outputs, feeds)

    def recording_decode(*args: Any) -> list[tuple[ScoredItem, ...]]:
        steps.append("decode")
        return decode(*args)

    monkeypatch.setattr(model, "encode", recording_encode)
    monkeypatch.setattr(session, "run", recording_run)
    monkeypatch.setattr(model, "decode", recording_decode)
    # Three parts of 32 x 8: the same shape, each row's last item differing.
    histories = [
        [Token(VOCAB[row % 6], "view"), Token(VOCAB[row // 6 % 6], "view")] for row in range(96)
    ]
    exclude: list[set[str]] = [set() for _ in histories]
    together = scorer.recommend(histories, exclude, 3)
    assert steps == ["encode"] * 3 + ["run"] * 3 + ["decode"] * 3
    alone = [scorer.recommend([h], [e], 3)[0] for h, e in zip(histories, exclude, strict=True)]
    assert together == alone
    assert len({result.items[0].item_id for result in together}) == 6


def test_popular_is_the_fallback_of_an_empty_history(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scorer = _table_scorer(monkeypatch, tmp_path)
    popular = scorer.popular(3)
    assert popular == scorer.recommend([[]], [()], 3)[0]
    assert popular.fallback and popular.model_version == "recs-test"
    assert [s.item_id for s in popular.items] == ["v5", "v4", "v3"]
    assert all(s.score == 0.0 for s in popular.items)
    assert [s.item_id for s in scorer.popular(10, exclude={"v4"}).items] == ["v5", "v3", "v2"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        scorer.popular(0)


def test_both_scorers_report_their_providers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _table_scorer(monkeypatch, tmp_path).providers == ["CPUExecutionProvider"]
    model = SimpleNamespace(session=_TableSession(4, 2), version="sentiment-test")
    monkeypatch.setattr(scoring, "load_sentiment_model", lambda path, options: model)
    sentiment = OnnxSentimentScorer(tmp_path / "sentiment.onnx")
    assert sentiment.providers == ["CPUExecutionProvider"]


class _ProbeSession:
    """Stands in for ``ort.InferenceSession`` in the CUDA probe: counts the sessions and
    falls back to the CPU, runs on CUDA, or fails to load, as told."""

    made = 0
    outcome = "fallback"

    def __init__(self, model: object, options: object, providers: list[str]) -> None:
        type(self).made += 1
        if self.outcome == "unreadable":
            raise RuntimeError("INVALID_PROTOBUF")
        self.providers = providers if self.outcome == "cuda" else ["CPUExecutionProvider"]

    def get_providers(self) -> list[str]:
        return self.providers


def test_the_cuda_probe_stops_trying_once_the_provider_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scoring, "_CUDA_FAILED", threading.Event())
    monkeypatch.setattr(scoring.ort, "get_available_providers", lambda: [scoring.CUDA, "CPU"])
    monkeypatch.setattr(scoring.ort, "InferenceSession", _ProbeSession)
    monkeypatch.setattr(_ProbeSession, "made", 0)
    monkeypatch.setattr(_ProbeSession, "outcome", "unreadable")
    assert scoring.runs_on_cuda(b"broken") is False  # a bad model says nothing about CUDA
    monkeypatch.setattr(_ProbeSession, "outcome", "cuda")
    assert scoring.runs_on_cuda(b"model") is True
    monkeypatch.setattr(_ProbeSession, "outcome", "fallback")
    assert scoring.runs_on_cuda(b"model") is False  # onnxruntime fell back to the CPU
    assert _ProbeSession.made == 3
    assert scoring.runs_on_cuda(b"other") is False
    assert _ProbeSession.made == 3  # no further probe in this process
