"""Sentiment metrics and label restriction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recstream.model.evaluate_sentiment import (
    classification_report,
    evaluate_items,
    restricted_argmax,
)
from recstream.model.review_adapters import LabelledReview
from recstream.streams.records import Review


def test_report_values() -> None:
    truth = ["positive", "positive", "negative", "negative", "neutral"]
    pred = ["positive", "negative", "negative", "negative", "positive"]
    report = classification_report(truth, pred, ["negative", "neutral", "positive"])
    assert report["accuracy"] == 0.6
    assert report["confusion"]["matrix"] == [[2, 0, 0], [0, 0, 1], [1, 0, 1]]
    neg = report["per_label"]["negative"]
    assert (neg["precision"], neg["recall"], neg["support"]) == (0.6667, 1.0, 2)
    # F1: negative 0.8, neutral 0, positive 0.5
    assert report["macro_f1"] == 0.4333


def test_restricted_argmax_ignores_labels_the_data_lacks() -> None:
    probs = np.array([[0.3, 0.6, 0.1], [0.1, 0.8, 0.1001]])
    assert restricted_argmax(probs, ["negative", "positive"]) == ["negative", "positive"]
    assert restricted_argmax(probs, ["negative", "neutral", "positive"]) == ["neutral", "neutral"]


def test_evaluate_items_breaks_down_by_group() -> None:
    def item(text: str, label: str, group: str) -> LabelledReview:
        return LabelledReview(Review("e", "u", "i", text, 1.7e9), label, group)

    items = [
        item("good", "positive", "书籍"),
        item("bad", "negative", "书籍"),
        item("good", "negative", "水果"),
    ]

    def proba(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.array(
            [[0.1, 0.0, 0.9] if t == "good" else [0.9, 0.0, 0.1] for t in texts], dtype=np.float32
        )

    report = evaluate_items(proba, items, ["negative", "positive"])
    assert report["accuracy"] == 0.6667
    assert report["by_group"]["书籍"]["accuracy"] == 1.0
    assert report["by_group"]["水果"]["accuracy"] == 0.0
