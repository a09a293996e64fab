"""Feature consistency: the student's embedding of each sample should point where the teacher's does.

The "feature" baseline of embedding distillation (e.g. Romero et al., "FitNets: Hints for Thin Deep Nets",
ICLR 2015 for the L2 form; Shi et al., "ProxylessKD", 2020 and Huang et al., "Evaluation-oriented Knowledge
Distillation for Deep Face Recognition", CVPR 2022 discuss it for face recognition). Needs D_s = D_t (no projection; ``same_dim``).

- ``kind="cosine"`` (default): MEAN over the batch of (1 - cos(s_i, t_i)), a cosine DISTANCE in [0, 2].
- ``kind="l2"``: MEAN over the batch of |s_i - t_i|^2 (SUM over dimensions) of the L2-normalised rows, in [0, 4]
  (= 2 x the cosine form).
Rows are normalised as MXNet's ``L2Normalization`` (x / sqrt(|x|^2 + 1e-10)), like the other heads here;
half-precision inputs are computed in float32.

Recipe use::

    config.distill.heads = [edict(name="feature", weight=1.0, params=edict(kind="cosine"))]
"""
from __future__ import annotations

from typing import Literal

import torch

from .registry import register_head
from .base import EmbeddingHead
from .common import at_least_float32, check_choice, l2_normalize_mx

__all__ = ["FeatureConsistencyLoss", "KINDS"]

KINDS = ("cosine", "l2")


@register_head("feature")
class FeatureConsistencyLoss(EmbeddingHead):
    """Feature consistency: 1 - cos (or squared L2 of normalised rows) between each student and teacher embedding."""

    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    same_dim = True

    def __init__(self, kind: Literal["cosine", "l2"] = "cosine") -> None:
        super().__init__()
        check_choice("feature", "kind", kind, KINDS)
        self.kind = kind
        self._param_names = ("kind",)

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = l2_normalize_mx(at_least_float32(student)), l2_normalize_mx(at_least_float32(teacher))
        if self.kind == "cosine":
            return (1.0 - (s * t).sum(dim=1)).mean()
        return ((s - t) ** 2).sum(dim=1).mean()
