"""Learning-rate schedules stepped once per ITERATION (arcface_torch calls ``lr_scheduler.step()`` every step).

``last_epoch`` counts scheduler steps (iterations), as in torch. Both are written in closed form from the step
count, so a state dict restores them exactly.

- :class:`PolynomialWarmupLR`: arcface_torch's ``PolynomialLRWarmup`` (lr_scheduler.py), in closed form:
  k = 0: base; 1 <= k <= warmup: base * k / warmup; then base * (1 - (min(k, total) - warmup) /
  (total - warmup)) ** power. (Upstream's k = 0 value is the base lr too: its first step runs at full lr.)
- :class:`StepEpochLR`: the PWR paper's schedule, lr = base * factor ** floor(epoch / every_epochs) where
  epoch = k // steps_per_epoch, with an optional linear warmup over the first ``warmup_steps`` iterations.
"""
from __future__ import annotations

from typing import List

import torch
try:
    from torch.optim.lr_scheduler import LRScheduler
except ImportError:  # torch < 2.0
    from torch.optim.lr_scheduler import _LRScheduler as LRScheduler

__all__ = ["PolynomialWarmupLR", "StepEpochLR"]


class PolynomialWarmupLR(LRScheduler):
    """Linear warmup then polynomial decay to 0 at ``total_iters`` (arcface_torch's schedule)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int, total_iters: int,
                 power: float = 1.0, last_epoch: int = -1) -> None:
        if total_iters <= warmup_iters:
            raise ValueError(f"PolynomialWarmupLR: total_iters ({total_iters}) must exceed warmup_iters "
                             f"({warmup_iters}); check num_image, batch_size, num_epoch and warmup_epoch")
        self.warmup_iters, self.total_iters, self.power = int(warmup_iters), int(total_iters), float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        k, w, t = self.last_epoch, self.warmup_iters, self.total_iters
        if k == 0:
            return list(self.base_lrs)
        if k <= w:
            return [b * k / w for b in self.base_lrs]
        return [b * (1.0 - (min(k, t) - w) / (t - w)) ** self.power for b in self.base_lrs]


class StepEpochLR(LRScheduler):
    """Divide the lr by ``1 / factor`` every ``every_epochs`` epochs (stepped per iteration)."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, every_epochs: int = 2,
                 factor: float = 0.1, warmup_steps: int = 0, last_epoch: int = -1) -> None:
        if steps_per_epoch <= 0:
            raise ValueError(f"StepEpochLR: steps_per_epoch must be > 0, got {steps_per_epoch} "
                             f"(num_image // (batch_size * world_size))")
        self.steps_per_epoch, self.every_epochs = int(steps_per_epoch), int(every_epochs)
        self.factor, self.warmup_steps = float(factor), int(warmup_steps)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        k = self.last_epoch
        scale = self.factor ** ((k // self.steps_per_epoch) // self.every_epochs)
        if self.warmup_steps and k < self.warmup_steps:
            scale *= (k + 1) / self.warmup_steps
        return [b * scale for b in self.base_lrs]
