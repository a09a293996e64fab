"""RKD-DA: RKD distance-wise plus twice angle-wise, RKD's own weighting.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (RKD-DA, lambda_D = 1, lambda_A = 2).
Spec: ``shared/spec/HEADS.md`` (``rkd_da``): loss = rkd_d + 2 * rkd_a, each exactly as its own head
(``rkd_d.py``, ``rkd_a.py``) with the shared ``huber_delta`` and ``convention``; ``relation`` and
``mean_normalize`` apply to the distance part only. The recipe weight multiplies the sum.

Recipe use::

    config.distill.heads = [edict(name="rkd_da", weight=100.0, params=edict(convention="rkd"))]
"""
from __future__ import annotations

from typing import Literal

import torch

from ..registry import register_head
from .base import EmbeddingHead
from .rkd_a import rkd_angle_loss
from .rkd_d import rkd_distance_loss, validate_distance_params

__all__ = ["RKDDistanceAngleLoss", "ANGLE_WEIGHT"]

ANGLE_WEIGHT = 2.0


@register_head("rkd_da")
class RKDDistanceAngleLoss(EmbeddingHead):
    """RKD-DA: rkd_d + 2 * rkd_a."""

    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"

    def __init__(self, relation: Literal["euclidean", "cosine"] = "euclidean", mean_normalize: bool = False,
                 huber_delta: float = 1.0, convention: Literal["pwr", "rkd"] = "pwr") -> None:
        super().__init__()
        self.relation, self.mean_normalize, self.convention = relation, mean_normalize, convention
        self.huber_delta = validate_distance_params("rkd_da", relation, mean_normalize, huber_delta, convention)
        self._param_names = ("relation", "mean_normalize", "huber_delta", "convention")

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        dist = rkd_distance_loss(student, teacher, self.relation, self.mean_normalize, self.huber_delta,
                                 self.convention)
        return dist + ANGLE_WEIGHT * rkd_angle_loss(student, teacher, self.huber_delta, self.convention)
