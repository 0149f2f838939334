"""Training end to end on a tiny generated shop log: checkpoint, determinism, resume, cap."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recstream.model import train_recs_cli
from recstream.model.checkpoint import load_meta
from recstream.model.sasrec import load_recs
from recstream.model.shoplog import generate, write_log
from recstream.model.train_recs import (
    STATE_FILE,
    TrainConfig,
    bucketed_batches,
    learning_rate,
    train_on_file,
)

TINY: dict[str, Any] = {
    "dim": 16,
    "layers": 1,
    "heads": 1,
    "max_len": 12,
    "batch_size": 16,
    "threads": 1,
}


@pytest.fixture(scope="module")
def shop_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "shop.jsonl"
    write_log(path, generate(users=60, items=40, days=4, seed=5))
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_recs(folder)[0].state_dict()


def test_checkpoint_meta_and_tensorboard(shop_log: Path, tmp_path: Path) -> None:
    meta = train_on_file(shop_log, "jsonl", tmp_path, TrainConfig(epochs=2, **TINY), progress=False)
    assert (tmp_path / "recs.pt").is_file() and (tmp_path / STATE_FILE).is_file()
    on_disk = load_meta(tmp_path, "recs")
    assert on_disk["kind"] == "recs" and on_disk["weights_sha256"]
    for key in (
        "hparams",
        "vocab",
        "popular",
        "max_len",
        "data_fingerprint",
        "metrics",
        "trained_at",
    ):
        assert key in meta and on_disk[key] == meta[key]
    assert meta["hparams"]["n_items"] == len(meta["vocab"]) + 2
    assert 0 < len(meta["popular"]) <= 100 and set(meta["popular"]) <= set(meta["vocab"])
    assert meta["max_len"] == 12 and len(meta["data_fingerprint"]) == 64
    assert 0.0 <= meta["metrics"]["valid_sampled"]["ndcg@10"] <= 1.0
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_bucketed_batches_cover_every_row_once_with_similar_token_counts() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, size=1_000).tolist()
    batches = bucketed_batches(lengths, 16, np.random.default_rng(1), pool=8)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1_000))
    budget = 16 * float(np.mean(lengths))
    assert all(len(b) == 1 or len(b) * max(lengths[r] for r in b) <= budget for b in batches)
    assert max(len(b) for b in batches) > 16  # short histories share bigger batches
    padded = sum(len(b) * max(lengths[r] for r in b) for b in batches)
    unsorted = sum(len(lengths[i : i + 16]) * max(lengths[i : i + 16]) for i in range(0, 1_000, 16))
    assert padded < 0.75 * unsorted  # far less padding than batches in arrival order
    again = bucketed_batches(lengths, 16, np.random.default_rng(1), pool=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = bucketed_batches(lengths, 16, np.random.default_rng(2), pool=8)
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_sampled_softmax_training_runs(shop_log: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, negatives=8, ffn_mult=2, weight_decay=0.01, **TINY)
    meta = train_on_file(shop_log, "jsonl", tmp_path, config, progress=False)
    assert meta["training"]["negatives"] == 8 and meta["hparams"]["ffn_mult"] == 2
    assert 0.0 <= meta["metrics"]["valid_sampled"]["ndcg@10"] <= 1.0


def test_same_seed_same_weights(shop_log: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, seed=3, **TINY)
    train_on_file(shop_log, "jsonl", tmp_path / "a", config, progress=False)
    train_on_file(shop_log, "jsonl", tmp_path / "b", config, progress=False)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_to_the_same_weights(shop_log: Path, tmp_path: Path) -> None:
    straight = TrainConfig(epochs=3, patience=10, **TINY)
    train_on_file(shop_log, "jsonl", tmp_path / "straight", straight, progress=False)
    first = TrainConfig(epochs=1, patience=10, **TINY)
    train_on_file(shop_log, "jsonl", tmp_path / "resumed", first, progress=False)
    train_on_file(shop_log, "jsonl", tmp_path / "resumed", straight, resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / STATE_FILE, weights_only=True)
    b = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_training_with_a_weight_average_saves_the_average(shop_log: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, ema_half_life=0.5, **TINY)
    meta = train_on_file(shop_log, "jsonl", tmp_path, config, progress=False)
    assert meta["training"]["ema_half_life"] == 0.5
    saved = weights(tmp_path)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert all(torch.equal(saved[k], state["average"][k]) for k in saved)
    assert any(not torch.equal(saved[k], state["model"][k]) for k in saved)


def test_resume_continues_the_weight_average(shop_log: Path, tmp_path: Path) -> None:
    straight = TrainConfig(epochs=3, patience=10, ema_half_life=1.0, **TINY)
    train_on_file(shop_log, "jsonl", tmp_path / "straight", straight, progress=False)
    first = TrainConfig(epochs=1, patience=10, ema_half_life=1.0, **TINY)
    train_on_file(shop_log, "jsonl", tmp_path / "resumed", first, progress=False)
    train_on_file(shop_log, "jsonl", tmp_path / "resumed", straight, resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / STATE_FILE, weights_only=True)
    b = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)
    assert all(torch.equal(a["average"][k], b["average"][k]) for k in a["average"])
    plain = TrainConfig(epochs=1, **TINY)
    train_on_file(shop_log, "jsonl", tmp_path / "plain", plain, progress=False)
    with pytest.raises(ValueError, match="without a weight average"):
        train_on_file(shop_log, "jsonl", tmp_path / "plain", straight, resume=True)


def test_resume_refuses_other_data(shop_log: Path, tmp_path: Path) -> None:
    train_on_file(shop_log, "jsonl", tmp_path, TrainConfig(epochs=1, **TINY), progress=False)
    other = tmp_path / "other.jsonl"
    write_log(other, generate(users=30, items=40, days=2, seed=6))
    with pytest.raises(ValueError, match="different data"):
        train_on_file(other, "jsonl", tmp_path, TrainConfig(epochs=2, **TINY), resume=True)


def test_max_items_caps_vocabulary(shop_log: Path, tmp_path: Path) -> None:
    meta = train_on_file(
        shop_log, "jsonl", tmp_path, TrainConfig(epochs=1, max_items=10, **TINY), progress=False
    )
    assert len(meta["vocab"]) == 10 and meta["hparams"]["n_items"] == 12


def test_cli_trains_and_prints_json(
    shop_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    train_recs_cli.add_arguments(parser)
    argv = ["--data", str(shop_log), "--format", "jsonl", "--out", str(tmp_path), "--epochs", "1"]
    argv += ["--dim", "16", "--layers", "1", "--max-len", "8", "--quiet", "--no-side-info"]
    argv += ["--bce-negatives", "8", "--bce-weight", "0.5", "--ema-half-life", "0.5"]
    assert train_recs_cli.run(parser.parse_args(argv)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["training"]["use_side_info"] is False
    assert summary["training"]["ema_half_life"] == 0.5
    assert summary["training"]["bce_negatives"] == 8
    assert summary["training"]["bce_weight"] == 0.5
    assert load_meta(tmp_path, "recs")["hparams"]["use_side_info"] is False


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    train_recs_cli.add_arguments(parser)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event_id": "e1", "user_id": "u", "item_id": "i", "action": "fly", "ts": 1}\n')
    args = parser.parse_args(
        ["--data", str(bad), "--format", "jsonl", "--out", str(tmp_path / "m")]
    )
    assert train_recs_cli.run(args) == 1
    assert "bad.jsonl" in capsys.readouterr().err
    missing = parser.parse_args(["--data", str(tmp_path / "no"), "--format", "jsonl", "--out", "x"])
    assert train_recs_cli.run(missing) == 2
    data = ["--data", str(bad), "--format", "jsonl", "--out", "x"]
    assert train_recs_cli.run(parser.parse_args([*data, "--bce-weight", "-1"])) == 2
    assert train_recs_cli.run(parser.parse_args([*data, "--ema-half-life", "-1"])) == 2
    assert "--ema-half-life" in capsys.readouterr().err


def test_learning_rate_is_constant_or_a_half_cosine_to_zero() -> None:
    constant = TrainConfig(epochs=4, lr=0.01)
    assert [learning_rate(constant, p) for p in (0.0, 2.0, 4.0)] == [0.01] * 3
    cosine = TrainConfig(epochs=4, lr=0.01, cosine=True)
    rates = [learning_rate(cosine, p) for p in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert rates[0] == pytest.approx(0.01) and rates[2] == pytest.approx(0.005)
    assert rates[4] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_cosine_training_ends_with_a_small_learning_rate(shop_log: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, patience=10, lr=0.01, cosine=True, **TINY)
    meta = train_on_file(shop_log, "jsonl", tmp_path, config, progress=False)
    assert meta["training"]["cosine"] is True
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    last = state["optimizer"]["param_groups"][0]["lr"]
    assert 0.0 < last < 0.001  # the last step of epoch 2 of 2 is near the end of the cosine
