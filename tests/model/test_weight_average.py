"""The moving average of the weights that the trainers can keep."""

from __future__ import annotations

import pytest
import torch

from recstream.model.sasrec import SASRec
from recstream.model.weight_average import WeightAverage


def test_weight_average_halves_a_steps_weight_every_half_life() -> None:
    model = SASRec(n_items=12, max_len=6, dim=8, layers=1, heads=1, dropout=0.0)
    average = WeightAverage(model, half_life=2.0)
    with torch.no_grad():
        for param in average.model.parameters():
            param.zero_()
        for param in model.parameters():
            param.fill_(1.0)
    steps_per_epoch = 5
    for _ in range(2 * steps_per_epoch):  # one half-life: the start weighs 1/2
        average.update(model, steps_per_epoch)
    for param in average.model.parameters():
        assert torch.allclose(param, torch.full_like(param, 0.5), atol=1e-6)
    assert not average.model.training
    assert all(not p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError, match="half-life"):
        WeightAverage(model, 0.0)
