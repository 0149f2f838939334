"""Evaluation end to end: a tiny trained model, both protocols, baselines, ONNX, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from recstream.model import evaluate_recs_cli
from recstream.model.evaluate_recs import (
    evaluate_model_on_file,
    evaluate_scorers,
    protocol_users,
    rank_heldout,
)
from recstream.model.features import FIRST_ITEM
from recstream.model.sasrec import load_recs
from recstream.model.sequences import Encoded, IntArray
from recstream.model.shoplog import generate, write_log
from recstream.model.splits import sample_negatives, split_histories
from recstream.model.train_recs import TrainConfig, train_on_file
from recstream.streams.scoring import Token

METRICS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    log = root / "shop.jsonl"
    write_log(log, generate(users=150, items=60, days=6, seed=11))
    config = TrainConfig(
        epochs=15, dim=32, layers=1, heads=1, max_len=20, batch_size=16, dropout=0.1,
        lr=3e-3, threads=1,
    )  # fmt: skip
    train_on_file(log, "jsonl", root / "model", config, progress=False)
    return log, root / "model"


def test_report_has_every_metric_and_both_baselines(trained: tuple[Path, Path]) -> None:
    log, model = trained
    for protocol in ("sampled", "full"):
        report = evaluate_model_on_file(model, log, "jsonl", protocol)
        for name in (*METRICS, "users", "coverage@10", "gini@10"):
            assert name in report
            for baseline in ("most_popular", "cooccurrence"):
                assert name in report["baselines"][baseline]
        assert report["protocol"]["name"] == protocol
        assert report["protocol"]["history_items_excluded"] is False
        assert report["data_matches_training"] is True
        assert report["users"] > 0
        assert 0 < report["coverage@10"] <= 1 and 0 <= report["gini@10"] < 1
    assert report["hr@10"] <= report["hr@20"]


def test_trained_model_beats_most_popular(trained: tuple[Path, Path]) -> None:
    log, model = trained
    report = evaluate_model_on_file(model, log, "jsonl", "full")
    assert report["ndcg@10"] > report["baselines"]["most_popular"]["ndcg@10"]
    # popularity recommends the same ten items to everyone
    pop = report["baselines"]["most_popular"]
    assert pop["coverage@10"] == pytest.approx(10 / report["protocol"]["catalogue"], abs=1e-4)
    assert report["coverage@10"] > pop["coverage@10"]


def test_oracle_and_antioracle_scorers_bound_the_metrics() -> None:
    histories = {f"u{u}": [Token(f"i{(u + k) % 50}", "view") for k in range(6)] for u in range(40)}
    split = split_histories(histories)

    def oracle(seqs: list[Encoded], candidates: IntArray | None = None) -> np.ndarray:
        # knows the held-out item: the successor in the user's cycle
        scores = np.zeros((len(seqs), split.vocab.size))
        for row, seq in enumerate(seqs):
            last = int(split.vocab.item(int(seq.items[-1]))[1:])
            scores[row, split.vocab.index(f"i{(last + 1) % 50}")] = 1.0
        scores[:, :FIRST_ITEM] = -np.inf
        return scores

    def worst(seqs: list[Encoded], candidates: IntArray | None = None) -> np.ndarray:
        return -oracle(seqs) - np.arange(split.vocab.size) * 1e-6

    out = evaluate_scorers({"oracle": oracle, "worst": worst}, split, "sampled")  # type: ignore[dict-item]
    assert out["results"]["oracle"]["hr@5"] == 1.0 and out["results"]["oracle"]["mrr@20"] == 1.0
    assert out["results"]["worst"]["hr@20"] == 0.0
    assert out["protocol"]["negatives"] == 39  # 45 items in the log minus each user's 6


def test_unknown_items_are_oov_and_rank_as_misses(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = trained
    other = tmp_path / "other.jsonl"
    lines = [
        {"event_id": f"e{n}", "user_id": f"x{u}", "item_id": f"new-{u}-{n}", "action": "view",
         "ts": 1.7e9 + n}
        for u in range(3) for n in range(4)
    ]  # fmt: skip
    other.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = evaluate_model_on_file(model, other, "jsonl", "full")
    assert report["users"] == 3 and report["hr@20"] == 0.0
    assert report["data_matches_training"] is False


def test_onnx_export_then_evaluate_matches_checkpoint(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    onnx_export = pytest.importorskip("recstream.export.onnx_export")
    log, folder = trained
    model, meta = load_recs(folder)
    onnx_export.export_recs(model, meta, tmp_path)
    onnx_path = tmp_path / "recs.onnx"
    assert onnx_path.is_file()
    for protocol in ("full", "sampled"):
        torch_report = evaluate_model_on_file(folder, log, "jsonl", protocol)
        onnx_report = evaluate_model_on_file(onnx_path, log, "jsonl", protocol)
        assert onnx_report["protocol"]["model_kind"].startswith("onnx")
        for name in METRICS:
            assert onnx_report[name] == pytest.approx(torch_report[name], abs=0.02), (
                protocol,
                name,
            )


def test_rank_heldout_uses_valid_part(trained: tuple[Path, Path]) -> None:
    log, folder = trained
    from recstream.model.evaluate_recs import torch_scorer
    from recstream.model.sequences import Vocab, load_histories

    model, meta = load_recs(folder)
    split = split_histories(load_histories(log, "jsonl"), vocab=Vocab(tuple(meta["vocab"])))
    users = protocol_users(split, "sampled", seed=0)
    negs = sample_negatives(split, users, seed=0)
    ranked = rank_heldout(torch_scorer(model, meta["max_len"]), split, users, "valid", negs)
    report = ranked.report("sampled", split.vocab.size - FIRST_ITEM)
    assert report == meta["metrics"]["valid_sampled"]


def test_cli_prints_one_json_object(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    log, folder = trained
    parser = argparse.ArgumentParser()
    evaluate_recs_cli.add_arguments(parser)
    argv = ["--model", str(folder), "--data", str(log), "--format", "jsonl", "--json"]
    assert evaluate_recs_cli.run(parser.parse_args([*argv, "--protocol", "full"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"]["name"] == "full"
    assert evaluate_recs_cli.run(parser.parse_args(argv[:-1])) == 0
    assert "most_popular" in capsys.readouterr().out
