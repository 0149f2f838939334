"""Checkpoints keep weights beside their metadata and refuse tampered weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recstream.model import checkpoint


def test_round_trip_and_hash_check(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    checkpoint.save_checkpoint(tmp_path, "m", model, {"kind": "test", "hparams": {"n": 3}})
    meta = checkpoint.load_meta(tmp_path, "m")
    assert meta["hparams"] == {"n": 3}
    state = checkpoint.load_state(tmp_path, "m", meta)
    assert torch.equal(state["weight"], model.state_dict()["weight"])

    weights = checkpoint.weights_path(tmp_path, "m")
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match its recorded hash"):
        checkpoint.load_state(tmp_path, "m", meta)


def test_meta_needs_kind_and_hparams(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks"):
        checkpoint.save_checkpoint(tmp_path, "m", torch.nn.Linear(1, 1), {"kind": "x"})
    with pytest.raises(FileNotFoundError):
        checkpoint.load_meta(tmp_path, "absent")
