"""RKD-DA: RKD distance-wise plus twice angle-wise, RKD's own weighting.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (RKD-DA, lambda_D = 1, lambda_A = 2).
loss = rkd_d + 2 * rkd_a, each exactly as its own head
(``rkd_d.py``, ``rkd_a.py``) with the shared ``huber_delta`` and ``convention``; ``relation`` and
``mean_normalize`` apply to the distance part only. The recipe weight multiplies the sum.

Recipe use::

    config.distill.heads = [edict(name="rkd_da", weight=100.0, params=edict(convention="rkd"))]
"""
from __future__ import annotations

import torch

from .registry import register_head
from .rkd_a import rkd_angle_loss
from .rkd_d import RKDDistanceLoss

__all__ = ["RKDDistanceAngleLoss", "ANGLE_WEIGHT"]

ANGLE_WEIGHT = 2.0


@register_head("rkd_da")
class RKDDistanceAngleLoss(RKDDistanceLoss):
    """RKD-DA: rkd_d + 2 * rkd_a."""

    # the parameters, their checks and defaults are rkd_d's (inherited __init__)

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        dist = super().compute_loss(student, teacher)
        return dist + ANGLE_WEIGHT * rkd_angle_loss(student, teacher, self.huber_delta, self.convention)
