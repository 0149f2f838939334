"""The sentiment benchmark's bookkeeping: the spread over training seeds and its verdict.

Scores come from fake probability functions on a small generated file: what is tested
is the arithmetic and the tables, not any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sentiment_quality as sq

from recstream.model.sentiment import LABELS

WORDS = {
    "positive": ["great", "good", "love", "fine"],
    "negative": ["bad", "awful", "hate", "poor"],
}


def _uci_file(path: Path, n: int = 200) -> Path:
    rows = ["reviews\tsentiment"]
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        rows.append(f"this phone is {WORDS[label][i % 4]} number {i}\t{1 if i % 2 else 0}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _proba(flip_every: int) -> sq.ProbaFn:
    """Right on every text but each ``flip_every``-th (0: never wrong)."""

    def proba(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), len(LABELS)), np.float32)
        for row, text in enumerate(texts):
            label = "positive" if any(w in text for w in WORDS["positive"]) else "negative"
            number = int(text.rsplit(" ", 1)[1])
            if flip_every and number % flip_every == 0:
                label = "negative" if label == "positive" else "positive"
            out[row, LABELS.index(label)] = 1.0
        return out

    return proba


def test_seed_spread_is_the_mean_sample_sd_and_range() -> None:
    spread = sq.seed_spread([0.80, 0.90, 0.85])
    assert spread["values"] == [0.8, 0.9, 0.85]
    assert spread["mean"] == pytest.approx(0.85)
    assert spread["sd"] == pytest.approx(0.05)  # sample sd: sqrt((0.05² + 0.05²) / 2)
    assert (spread["min"], spread["max"]) == (0.8, 0.9)
    assert sq.seed_spread([0.7])["sd"] == 0.0


def test_verdict_judges_the_mean_over_seeds_too() -> None:
    methods: dict[str, Any] = {
        "ours": {"accuracy": 0.86, "seeds": sq.seed_spread([0.86, 0.80, 0.83])},
        "VADER": {"accuracy": 0.84},
        "TF-IDF+LR": {"accuracy": 0.82},
    }
    v = sq.verdict(methods, "accuracy")
    assert (v["best_peer"], v["margin"], v["ours_wins"]) == ("VADER", 0.02, True)
    assert v["mean_margin"] == pytest.approx(-0.01)
    assert v["mean_wins"] is False
    del methods["ours"]["seeds"]
    assert "mean_margin" not in sq.verdict(methods, "accuracy")


def test_seed_models_are_scored_on_the_same_split_and_tabled(tmp_path: Path) -> None:
    path = _uci_file(tmp_path / "cells.txt")
    perfect, tenth_wrong, fifth_wrong = _proba(0), _proba(10), _proba(5)
    ds = sq.score_dataset("cells", path, "uci", "en", perfect, True, [tenth_wrong, fifth_wrong])
    spread = ds["methods"]["ours"]["seeds"]
    assert spread["values"][0] == 1.0 == ds["methods"]["ours"]["accuracy"]
    # Each fake errs on the held-out texts whose number it flips: count them here.
    _, test = sq.train_test_split(sq.load_reviews(path, "uci"))
    numbers = [int(item.review.text.rsplit(" ", 1)[1]) for item in test]
    assert ds["n_test"] == len(numbers) == 40
    for every, value in ((10, spread["values"][1]), (5, spread["values"][2])):
        wrong = sum(1 for number in numbers if number % every == 0)
        assert wrong > 0
        assert value == pytest.approx(1 - wrong / len(numbers), abs=1e-4)
    assert spread["mean"] == pytest.approx(sum(spread["values"]) / 3, abs=1e-4)
    assert "mean_margin" in ds["verdict"]
    result = {
        "model": "m",
        "quick": True,
        "model_lexicon": "none",
        "seeds": [13, 14, 15],
        "datasets": [ds],
        "throughput": {
            "reviews_per_cpu_second": 1.0,
            "reviews_per_wall_second": 1.0,
            "engine": "fake",
            "batch_size": 32,
            "note": "",
        },
    }
    markdown = sq.to_markdown(result)
    assert "Over training seeds (13, 14, 15" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| cells | accuracy | 1.0")]
    row = rows[-1]  # the seeds table comes after the verdicts
    assert " / " in row
    assert f"{spread['mean']:.4f} ± {spread['sd']:.4f}" in row
    assert not math.isnan(spread["sd"])
    del ds["methods"]["ours"]["seeds"], ds["verdict"]["mean_margin"]
    assert "Over training seeds" not in sq.to_markdown(result)
