"""Scoring without models: fakes, length buckets, input buffers, reload logic, no torch."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from recstream.streams.scoring import (
    EMPTY_TEXT,
    SEQUENCE_BUCKETS,
    FakeRecsScorer,
    FakeSentimentScorer,
    InputBuffers,
    ModelLoadError,
    RecsScorer,
    ReloadingModel,
    SentimentScorer,
    Token,
    bucket_length,
)


def test_scoring_does_not_import_torch() -> None:
    code = (
        "import sys, recstream.streams.scoring\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


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


def test_input_buffers_are_zeroed_reused_and_contiguous() -> None:
    buffers = InputBuffers()
    items, actions, words = buffers.get(3, 8)
    actions[:] = 2
    assert items.shape == (3, 8) and words.shape == (3, 8, 4)
    items[:] = 7
    words[:] = 9
    again, actions_again, words_again = buffers.get(2, 8)
    assert np.shares_memory(items, again)  # same memory, reused
    assert not again.any() and not actions_again.any() and not words_again.any()
    assert again.flags.c_contiguous and words_again.flags.c_contiguous
    bigger, _, _ = buffers.get(100, 8)
    assert bigger.shape == (100, 8) and not bigger.any()


def test_input_buffers_are_per_thread() -> None:
    buffers = InputBuffers()
    mine, _, _ = buffers.get(2, 8)
    theirs: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: theirs.append(buffers.get(2, 8)[0]))
    thread.start()
    thread.join()
    assert not np.shares_memory(mine, theirs[0])


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
