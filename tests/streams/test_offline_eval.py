"""Offline evaluation: metric arithmetic, agreement with the pipeline, the command."""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from recstream.model.adapters import read_events
from recstream.model.shoplog import generate, write_log
from recstream.streams import offline_eval
from recstream.streams.offline_eval import evaluate, load_model, next_targets
from recstream.streams.pipeline import DictStore, Pipeline, RawRecord, home_partition
from recstream.streams.records import Click, Event, ScoredItem, Search
from recstream.streams.scoring import FakeSentimentScorer, RecsResult, Token
from recstream.streams.settings import Settings

SETTINGS = Settings()
T0 = 1_750_000_000.0


class FixedRecs:
    """Always the same ranking (minus exclusions): makes every metric computable by hand."""

    model_version = "fixed-1"

    def __init__(self, ranking: Sequence[str]) -> None:
        self.ranking = list(ranking)

    def recommend(
        self, histories: Sequence[Sequence[Token]], exclude: Sequence[Collection[str]], k: int
    ) -> list[RecsResult]:
        return [
            RecsResult(tuple(ScoredItem(i, 1.0) for i in self.ranking if i not in ex)[:k], False)
            for ex in exclude
        ]


def _hand_log() -> list[Event]:
    def click(n: int, item: str, action: str = "view") -> Click:
        return Click(f"e{n}", "u1", item, action, T0 + 60 * n)

    return [
        click(0, "X"),
        click(1, "A"),
        click(2, "A", "add_to_cart"),
        click(3, "Y"),
        click(4, "Z"),
        Search("e5", "u1", "blue shoes", T0 + 300),
        click(6, "B"),
    ]


def test_targets_are_the_next_different_item() -> None:
    assert next_targets(_hand_log()) == {
        "e0": "A", "e1": "Y", "e2": "Y", "e3": "Z", "e4": "B", "e5": "B",
    }  # fmt: skip


def test_metrics_by_hand() -> None:
    ranking = ["A", "B", "C", "Y", *(f"f{i}" for i in range(16))]
    report = evaluate(_hand_log(), FixedRecs(ranking), SETTINGS, batch_size=3)
    # Click triggers (the clicked item itself is left out of its answer): X->A rank 0,
    # A->Y rank 2 (twice: A is left out), Y->Z miss, Z->B rank 1; B has no target.
    clicks = report.clicks.as_dict()
    assert clicks["scored"] == 5
    assert clicks["hr@10"] == pytest.approx(4 / 5)
    assert clicks["ndcg@10"] == pytest.approx((1 + 2 / math.log2(4) + 1 / math.log2(3)) / 5)
    assert clicks["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 1 / 2) / 5)
    assert report.searches.as_dict() == pytest.approx(
        {"scored": 1, "hr@10": 1.0, "ndcg@10": 1 / math.log2(3), "mrr@20": 0.5}
    )
    assert report.coverage == pytest.approx(3 / 5)  # A, B, Y of the log's X, A, Y, Z, B
    assert report.fallback_share == 0.0 and len(report.recommendations) == 7
    assert set(report.latency_ms) == {"p50", "p90", "p99", "mean_per_recommendation"}
    assert sum(p["scored"] for p in report.over_time) == 5


def test_percentiles_nearest_rank() -> None:
    assert offline_eval.percentiles([float(i) for i in range(1, 101)]) == {
        "p50": 50.0, "p90": 90.0, "p99": 99.0,
    }  # fmt: skip
    assert offline_eval.percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0}


# ----------------------------------------------------------------------------
# With the tiny exported models (real onnxruntime scoring)
# ----------------------------------------------------------------------------


def _tiny_item(item: str) -> str:
    return f"item-{int(item[1:])}"


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated log over the tiny models' catalogue (``item-0`` .. ``item-39``)."""
    lines: list[dict[str, Any]] = []
    for event in generate(30, 40, 3.0, 21):
        if "item_id" in event:
            event["item_id"] = _tiny_item(event["item_id"])
        if "results" in event:
            event["results"] = [_tiny_item(i) for i in event["results"]]
        lines.append(event)
    path = tmp_path_factory.mktemp("log") / "tiny-shop.jsonl"
    write_log(path, iter(lines))
    return path


def _worker_records(path: Path, settings: Settings) -> list[RawRecord]:
    """The log's lines as topic records, built here from the raw lines (not via the module)."""
    records = []
    for offset, line in enumerate(path.read_bytes().splitlines()):
        obj = orjson.loads(line)
        kind = "clicks" if "action" in obj else "searches" if "query" in obj else "reviews"
        partition = home_partition(obj["user_id"], settings.partitions)
        records.append(RawRecord(kind, settings.topic(kind), partition, offset, line))
    return records


@pytest.mark.slow  # exporting the tiny models takes 10-90 s on a busy CPU
def test_offline_recommendations_equal_the_pipelines(tiny_models: Path, tiny_log: Path) -> None:
    recs, sentiment = load_model(str(tiny_models), SETTINGS)
    assert sentiment is not None
    events = offline_eval.read_sorted(
        str(tiny_log), "jsonl", strict=True, stats=offline_eval.AdapterStats()
    )
    report = evaluate(events, recs, SETTINGS, sentiment=sentiment, batch_size=7)

    # The worker's path: every record through one pipeline, shown top_k = 10.
    pipeline = Pipeline(SETTINGS, recs, FakeSentimentScorer(), partitions=SETTINGS.partitions)
    direct = pipeline.run(_worker_records(tiny_log, SETTINGS), DictStore()).recommendations
    assert len(direct) == len(report.recommendations) > 100
    for offline, online in zip(report.recommendations, direct, strict=True):
        assert offline.trigger_event_id == online.trigger_event_id
        assert offline.fallback == online.fallback
        assert [i.item_id for i in offline.items[:10]] == [i.item_id for i in online.items]
        assert [i.score for i in offline.items[:10]] == pytest.approx(
            [i.score for i in online.items]
        )
    # Batching is invisible: one event per batch gives the same recommendations.
    single = evaluate(events, recs, SETTINGS, batch_size=1)
    assert [r.items for r in single.recommendations] == [r.items for r in report.recommendations]
    assert report.sentiment is not None and report.sentiment["with_stars"] > 0
    assert report.clicks.scored > 50 and 0.0 <= report.clicks.as_dict()["hr@10"] <= 1.0


@pytest.mark.slow
def test_command_compares_two_models(
    tiny_models: Path, tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    offline_eval.add_arguments(parser)
    png = tmp_path / "over-time.png"
    base = [str(tiny_log), "--model", str(tiny_models), "--model", str(tiny_models / "recs.onnx")]
    assert offline_eval.run(parser.parse_args([*base, "--json", "--plot", str(png)])) == 0
    doc = orjson.loads(capsys.readouterr().out)
    first, second = doc["models"]
    assert doc["events"] == len(list(read_events(tiny_log, "jsonl")))
    assert first["clicks"] == second["clicks"]  # the same recs.onnx, loaded two ways
    assert first["sentiment"] is not None and second["sentiment"] is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert offline_eval.run(parser.parse_args(base)) == 0
    text = capsys.readouterr().out
    assert "HR@10 (clicks)" in text and "fallback" in text


@pytest.mark.slow
def test_a_folder_is_evaluated_in_the_variant_the_worker_serves(
    tmp_path: Path, tiny_log: Path
) -> None:
    """``auto`` reads a folder's int8 files on the CPU, as the worker does; a variant
    named in the settings, or a file given by path, is read as asked."""
    pytest.importorskip("torch")
    from recstream.export.tiny import build_tiny_models

    build_tiny_models(tmp_path, variants=("fp32", "int8"))
    recs, sentiment = load_model(str(tmp_path), SETTINGS)
    assert sentiment is not None
    assert recs.model_version.endswith("-int8") and sentiment.model_version.endswith("-int8")
    fp32, fp32_sentiment = load_model(str(tmp_path), Settings(model_variant="fp32"))
    assert fp32_sentiment is not None and not fp32_sentiment.model_version.endswith("-int8")
    assert fp32.model_version == recs.model_version.removesuffix("-int8")
    by_path, none = load_model(str(tmp_path / "recs.onnx"), SETTINGS)
    assert by_path.model_version == fp32.model_version and none is None
    events = offline_eval.read_sorted(
        str(tiny_log), "jsonl", strict=True, stats=offline_eval.AdapterStats()
    )
    report = evaluate(events, recs, SETTINGS, batch_size=64)
    assert report.clicks.scored > 50
    assert {r.model_version for r in report.recommendations} == {recs.model_version}


def test_bad_model_path_is_a_clear_error(
    tiny_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    offline_eval.add_arguments(parser)
    args = parser.parse_args([str(tiny_log), "--model", str(tmp_path / "nothing")])
    assert offline_eval.run(args) == 1
    assert "no recs model" in capsys.readouterr().err
