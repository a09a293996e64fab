"""RKD-A: relational knowledge distillation, angle-wise.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (eq. 6-7); used as a baseline (RKD-A, weight
200) in Nikitin et al., "Pairwise Ranking Distillation for Deep Face Recognition", GraphiCon 2020. The
definition below is complete (the tests check it against a slow loop and against both reference codes).

For every triple (i, j, k) of the batch, A_ijk = e_ij . e_ik (a COSINE of the angle at x_i, a similarity in
[-1, 1]) with the unit difference vectors e_ij = (x_j - x_i) / |x_j - x_i| (0 when x_j = x_i, in particular when
i = j). The loss is the Huber loss (delta ``huber_delta``, MXNet form 0.5 x^2 if |x| <= delta else
delta (|x| - delta/2)) between the student's and the teacher's A, MEAN over all N^3 entries.

- ``convention="pwr"`` (default; the PWR authors' MXNet ``RelativeAngleLoss``): rows first L2-normalised, and the
  difference vectors normalised, as MXNet's ``L2Normalization``: v / sqrt(|v|^2 + 1e-10).
- ``convention="rkd"`` (the original RKD code's ``RKdAngle``): raw embeddings, differences normalised with
  ``torch.nn.functional.normalize`` (v / max(|v|, 1e-12)).

Memory: N^2 x D for the difference vectors plus N^3 for A (N = 92, D = 512: about 35 MB in float64).
Half-precision inputs are computed in float32. N = 1 gives a zero attached to the graph.

Recipe use (the paper's RKD-A row: weight 200 beside CosFace)::

    config.distill.heads = [edict(name="rkd_a", weight=200.0)]
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .registry import register_head
from .base import EmbeddingHead, zero_loss
from .common import at_least_float32, check_choice, check_positive, huber, l2_normalize_mx
from .rkd_d import CONVENTIONS

__all__ = ["RKDAngleLoss", "rkd_angle_loss", "angle_tensor"]


def angle_tensor(x: torch.Tensor, convention: str = "pwr") -> torch.Tensor:
    """The N x N x N tensor A_ijk = e_ij . e_ik of the rows of ``x`` (normalised first under ``"pwr"``)."""
    if convention == "pwr":
        x = l2_normalize_mx(x)
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # diff[i, j] = x_j - x_i
    e = l2_normalize_mx(diff) if convention == "pwr" else F.normalize(diff, p=2.0, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor, huber_delta: float = 1.0,
                   convention: str = "pwr") -> torch.Tensor:
    """The RKD-A loss of N x D_s student and N x D_t teacher embeddings (see the module docstring)."""
    if student.shape[0] < 2:
        return zero_loss(student)
    student = at_least_float32(student)
    with torch.no_grad():
        at = angle_tensor(at_least_float32(teacher.detach()), convention)
    return huber(angle_tensor(student, convention) - at, huber_delta).mean()


@register_head("rkd_a")
class RKDAngleLoss(EmbeddingHead):
    """RKD-A: Huber loss between the student's and the teacher's in-batch angle tensors."""

    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"

    def __init__(self, huber_delta: float = 1.0, convention: Literal["pwr", "rkd"] = "pwr") -> None:
        super().__init__()
        check_choice("rkd_a", "convention", convention, CONVENTIONS)
        self.huber_delta = check_positive("rkd_a", "huber_delta", huber_delta)
        self.convention = convention
        self._param_names = ("huber_delta", "convention")

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return rkd_angle_loss(student, teacher, self.huber_delta, self.convention)
