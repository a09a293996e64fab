"""RKD-D: relational knowledge distillation, distance-wise.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (eq. 3-5); used as a baseline (RKD-D, weight
100) in Nikitin et al., "Pairwise Ranking Distillation for Deep Face Recognition", GraphiCon 2020. The
definition below is complete (the tests check it against a slow loop and against both reference codes).

Relations are DISTANCES (``relations.py``). Two conventions:

- ``convention="pwr"`` (default; the PWR authors' MXNet ``RelativeDistanceLoss``): rows L2-normalised as MXNet does
  (x / sqrt(|x|^2 + 1e-10)); N x N matrix of ``relation`` distances (euclidean with the 1e-12 clamp, or cosine
  1 - a_i.a_j) with a ZERO diagonal; with ``mean_normalize`` each matrix is divided by (mean of its M = N(N-1)/2
  upper-triangle values + 1e-8); elementwise Huber (delta ``huber_delta``) of student minus teacher; each row
  SUMMED and divided by (N - 1); the MEAN over rows (so: sum over the N^2 entries / (N (N - 1))).
- ``convention="rkd"`` (the original RKD code's ``RkdDistance``): RAW embeddings, euclidean distance (1e-12 clamp,
  zero diagonal), each matrix divided by the mean of its N(N-1) off-diagonal entries (no 1e-8; ``mean_normalize``
  has no effect: this normalisation is always on), Huber MEAN over all N^2 entries. ``relation="cosine"`` is
  refused under this convention.

Huber is the MXNet form 0.5 x^2 if |x| <= delta else delta (|x| - delta/2); for delta = 1 it is torch's smooth L1.
Half-precision inputs (float16 / bfloat16) are computed in float32. N = 1 (no pair) gives a zero attached to the graph. (The MXNet code divides by max(N - 1, 1); same thing.)

Recipe use (the paper's RKD-D row: weight 100 beside CosFace)::

    config.distill.heads = [edict(name="rkd_d", weight=100.0, params=edict(relation="euclidean"))]
"""
from __future__ import annotations

from typing import Literal

import torch

from .registry import register_head
from .base import EmbeddingHead, zero_loss
from .common import at_least_float32, check_choice, check_positive, huber, l2_normalize_mx
from .relations import RELATIONS, distance_matrix

__all__ = ["RKDDistanceLoss", "rkd_distance_loss", "validate_distance_params", "CONVENTIONS"]

CONVENTIONS = ("pwr", "rkd")


def _distance_matrix_zero_diag(x: torch.Tensor, relation: str) -> torch.Tensor:
    d = distance_matrix(x, relation)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def _normalized_distances(x: torch.Tensor, relation: str, mean_normalize: bool, convention: str) -> torch.Tensor:
    n = x.shape[0]
    if convention == "rkd":
        d = _distance_matrix_zero_diag(x, "euclidean")
        return d / (d.sum() / (n * (n - 1)))  # mean of the off-diagonal entries (the diagonal is zero)
    d = _distance_matrix_zero_diag(l2_normalize_mx(x), relation)
    if mean_normalize:
        d = d / (d.sum() / (n * (n - 1)) + 1e-8)  # the upper-triangle mean equals the off-diagonal mean
    return d


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor, relation: str = "euclidean",
                      mean_normalize: bool = False, huber_delta: float = 1.0,
                      convention: str = "pwr") -> torch.Tensor:
    """The RKD-D loss of N x D_s student and N x D_t teacher embeddings (see the module docstring)."""
    n = student.shape[0]
    if n < 2:
        return zero_loss(student)
    student, teacher = at_least_float32(student), at_least_float32(teacher.detach())
    ds = _normalized_distances(student, relation, mean_normalize, convention)
    with torch.no_grad():
        dt = _normalized_distances(teacher, relation, mean_normalize, convention)
    loss = huber(ds - dt, huber_delta)
    if convention == "rkd":
        return loss.mean()
    return (loss.sum(dim=1) / (n - 1)).mean()


def validate_distance_params(head: str, relation: str, mean_normalize: bool, huber_delta: float,
                             convention: str) -> float:
    """ValueError (naming ``head`` and the parameter) unless the RKD-D parameters are valid; returns huber_delta."""
    check_choice(head, "relation", relation, RELATIONS)
    check_choice(head, "convention", convention, CONVENTIONS)
    if not isinstance(mean_normalize, bool):
        raise ValueError(f"{head}: mean_normalize must be True or False, got {mean_normalize!r}")
    if convention == "rkd" and relation != "euclidean":
        raise ValueError(f"{head}: convention='rkd' (the original RKD code) uses euclidean distances of raw "
                         f"embeddings; got relation={relation!r}. Use convention='pwr' for cosine.")
    return check_positive(head, "huber_delta", huber_delta)


@register_head("rkd_d")
class RKDDistanceLoss(EmbeddingHead):
    """RKD-D: Huber loss between the student's and the teacher's in-batch distance matrices."""

    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"

    def __init__(self, relation: Literal["euclidean", "cosine"] = "euclidean", mean_normalize: bool = False,
                 huber_delta: float = 1.0, convention: Literal["pwr", "rkd"] = "pwr") -> None:
        super().__init__()
        self.relation, self.mean_normalize, self.convention = relation, mean_normalize, convention
        self.huber_delta = validate_distance_params(self.name, relation, mean_normalize, huber_delta, convention)
        self._param_names = ("relation", "mean_normalize", "huber_delta", "convention")

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return rkd_distance_loss(student, teacher, self.relation, self.mean_normalize, self.huber_delta,
                                 self.convention)
