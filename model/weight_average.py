"""An exponential moving average of a model's weights, for the trainers (torch only)."""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class WeightAverage(Generic[ModuleT]):
    """An exponential moving average of a model's weights, updated after every step.

    ``half_life`` is in epochs: after each optimizer step the average moves towards
    the weights by ``1 - decay``, with ``decay`` such that a step's weight in the
    average halves every ``half_life`` epochs whatever the number of steps in an
    epoch.  The average (``model``, a copy in eval mode) is what training validates
    and saves; averaging the weights of many steps smooths the noise of single
    steps (Polyak averaging).
    """

    def __init__(self, model: ModuleT, half_life: float) -> None:
        if half_life <= 0:
            raise ValueError(f"the half-life must be > 0 epochs, got {half_life}")
        self.half_life = half_life
        self.model: ModuleT = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    def decay(self, steps_per_epoch: int) -> float:
        """The factor kept of the average at each of an epoch's ``steps_per_epoch`` steps."""
        return float(0.5 ** (1.0 / (self.half_life * max(steps_per_epoch, 1))))

    @torch.no_grad()
    def update(self, model: nn.Module, steps_per_epoch: int) -> None:
        """Move the average towards ``model``'s current weights by one step."""
        weight = 1.0 - self.decay(steps_per_epoch)
        for mean, param in zip(self.model.parameters(), model.parameters(), strict=True):
            mean.lerp_(param, weight)
        for kept, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            kept.copy_(buffer)
