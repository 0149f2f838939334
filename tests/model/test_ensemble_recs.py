"""Ensembles of trained recommenders: the score, combining checkpoints, refusals, CLI, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from recstream.export.onnx_export import export_recs
from recstream.model.ensemble_recs import combine
from recstream.model.evaluate_recs import evaluate_model_on_file
from recstream.model.features import FIRST_ITEM, WORDS_PER_SEARCH
from recstream.model.sasrec import SASRec, SASRecEnsemble, load_recs
from recstream.model.shoplog import generate, write_log
from recstream.model.train_recs import TrainConfig, train_on_file
from recstream.streams.cli import main

TINY: dict[str, Any] = {"dim": 16, "layers": 1, "heads": 1, "max_len": 12, "batch_size": 16}
HPARAMS: dict[str, Any] = {"n_items": 12, "max_len": 6, "dim": 8, "layers": 1, "heads": 1}


def write_shop_log(folder: Path, seed: int) -> Path:
    path = folder / f"shop-{seed}.jsonl"
    write_log(path, generate(users=60, items=40, days=4, seed=seed))
    return path


@pytest.fixture(scope="module")
def shop_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shop_log(tmp_path_factory.mktemp("log"), 5)


@pytest.fixture(scope="module")
def members(shop_log: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two checkpoints of the same command with seeds 1 and 2."""
    folders = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"seed{seed}")
        config = TrainConfig(epochs=1, seed=seed, threads=1, **TINY)
        train_on_file(shop_log, "jsonl", out, config, progress=False)
        folders.append(out)
    return folders


def inputs() -> tuple[torch.Tensor, ...]:
    items = torch.tensor([[2, 3, 4, 0], [5, 0, 0, 0]])
    actions = (items > 0).long()
    words = torch.zeros(2, 4, WORDS_PER_SEARCH, dtype=torch.long)
    return items, actions, words, torch.tensor([3, 1])


def test_score_ranks_as_the_mean_of_the_members_log_probabilities() -> None:
    torch.manual_seed(0)
    ensemble = SASRecEnsemble([HPARAMS, HPARAMS]).eval()
    batch = inputs()
    with torch.no_grad():
        first, second = (cast(SASRec, m).score_last(*batch) for m in ensemble.members)
        scores = ensemble.score_last(*batch)
    real = scores[:, FIRST_ITEM:]
    assert torch.allclose(real, (first[:, FIRST_ITEM:] + second[:, FIRST_ITEM:]) / 2)
    assert torch.isinf(scores[:, :FIRST_ITEM]).all()
    # Hand-written log-softmax over the real items of each member, then the mean: it
    # differs from the score by one constant per history, so it ranks the same.
    log_probs = [
        s[:, FIRST_ITEM:] - s[:, FIRST_ITEM:].exp().sum(1, keepdim=True).log()
        for s in (first, second)
    ]
    mean_log_prob = (log_probs[0] + log_probs[1]) / 2
    offset = real - mean_log_prob
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-5)
    assert torch.equal(real.argsort(dim=1), mean_log_prob.argsort(dim=1))
    with torch.no_grad():
        padded = ensemble.score_last(*batch, columns=scores.shape[1] + 3)
    # equal to rounding: a wider matmul may block its sums differently
    torch.testing.assert_close(padded[:, : scores.shape[1]], scores, rtol=1e-6, atol=1e-6)
    assert torch.isneginf(padded[:, scores.shape[1] :]).all()
    # Not one member's ranking passed through: the members disagree and the mean differs.
    assert not torch.equal(first.argsort(dim=1), second.argsort(dim=1))
    assert not torch.allclose(real, first[:, FIRST_ITEM:])


def test_an_ensemble_needs_two_members_of_one_vocabulary() -> None:
    with pytest.raises(ValueError, match="two or more"):
        SASRecEnsemble([HPARAMS])
    with pytest.raises(ValueError, match="vocabulary size"):
        SASRecEnsemble([HPARAMS, {**HPARAMS, "n_items": 13}])


def test_combine_writes_a_checkpoint_that_loads_and_evaluates(
    members: list[Path], shop_log: Path, tmp_path: Path
) -> None:
    meta = combine(members, shop_log, "jsonl", tmp_path)
    model, loaded = load_recs(tmp_path)
    assert isinstance(model, SASRecEnsemble) and not model.training
    for member, folder in zip(model.members, members, strict=True):
        original, _ = load_recs(folder)
        assert isinstance(original, SASRec)
        for name, tensor in original.state_dict().items():
            assert torch.equal(member.state_dict()[name], tensor)
    assert loaded["metrics"] == meta["metrics"]
    assert 0.0 <= loaded["metrics"]["valid_sampled"]["ndcg@10"] <= 1.0
    assert [m["folder"] for m in loaded["training"]["members"]] == [str(f) for f in members]
    assert [m["seed"] for m in loaded["training"]["members"]] == [1, 2]
    report = evaluate_model_on_file(tmp_path, shop_log, "jsonl", "sampled")
    assert report["data_matches_training"] and report["users"] > 0
    assert 0.0 <= report["hr@10"] <= 1.0


def test_combine_refuses_members_that_do_not_belong_together(
    members: list[Path], shop_log: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="two or more"):
        combine(members[:1], shop_log, "jsonl", tmp_path / "one")
    other_log = write_shop_log(tmp_path, 6)
    other = tmp_path / "other"
    train_on_file(other_log, "jsonl", other, TrainConfig(epochs=1, **TINY), progress=False)
    with pytest.raises(ValueError, match="differs"):
        combine([members[0], other], shop_log, "jsonl", tmp_path / "mixed")
    with pytest.raises(ValueError, match="not trained on"):
        combine(members, other_log, "jsonl", tmp_path / "wrong-data")
    combine(members, shop_log, "jsonl", tmp_path / "ensemble")
    with pytest.raises(ValueError, match="ensemble already"):
        combine([tmp_path / "ensemble", members[0]], shop_log, "jsonl", tmp_path / "nested")
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "nested").exists()


def test_cli_combines_and_reports_errors(
    members: list[Path], shop_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["combine", "recs", "--data", str(shop_log), "--format", "jsonl"]
    code = main(
        [
            *args,
            "--member",
            str(members[0]),
            "--member",
            str(members[1]),
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["valid_sampled"]["users"] > 0
    code = main(
        [
            *args,
            "--member",
            str(members[0]),
            "--member",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert code == 1
    assert "error:" in capsys.readouterr().err


def test_ensemble_exports_with_fp32_parity(
    members: list[Path], shop_log: Path, tmp_path: Path
) -> None:
    combine(members, shop_log, "jsonl", tmp_path / "ensemble")
    model, meta = load_recs(tmp_path / "ensemble")
    written = {w.variant: w for w in export_recs(model, meta, tmp_path / "onnx", ("fp32",))}
    fp32 = written["fp32"]
    assert fp32.written and fp32.agreement.passed
    assert fp32.agreement.measures["exact_ids"] == 1.0
    assert np.isfinite(fp32.agreement.measures["max_rel_score_diff"])
