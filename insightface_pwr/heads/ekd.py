"""EKD: evaluation-oriented knowledge distillation (rank counts of pair similarities against moving thresholds).

Huang, Wu, Xu, Ding, "Evaluation-oriented Knowledge Distillation for Deep Face Recognition", CVPR 2022. The
definition follows the authors' code (Tencent/TFace ``recognition/tasks/ekd/distillation/ekd.py`` at commit
171ec143); the golden fixture ``tests/golden/fr_golden.json`` was computed by that code itself.

What the head computes for a batch of N rows, the student S (N x D_s, with gradient), the teacher T (N x D_t; D_t
may differ) and N integer labels:

1. Both sides are L2-normalised per row (x / max(|x|, 1e-12)); a relation is a COSINE SIMILARITY, taken over the
   M = N(N-1)/2 pairs i < j. A pair is positive when both rows carry the same label, negative otherwise.
2. The student's negatives are sorted in descending order, and so are the teacher's, each on its own. For every
   anchor a_k the threshold is the negative at 0-based position q_k = floor(n_neg / a_k) of that order (about a
   fraction 1/a_k of the negatives lie above it: a false-positive rate of 1/a_k within the batch).
3. Two buffers of K = len(anchors) values, ``s_anchor`` and ``t_anchor``, follow the thresholds as an exponential
   moving average, A <- momentum * threshold + (1 - momentum) * A, under no_grad, on EVERY call (training or
   eval, with or without grad) and BEFORE the loss uses them. They start at zero, without bias correction.
4. A relation's soft rank count is r(x) = sum_k sigmoid((x - A_k) / t), the sigmoid written
   1 / (1 + exp(clamp(-(x - A_k) / t, -50, 50))) as the reference does; each model is measured against its own
   anchors.
5. L_pos = mean over every positive pair of (r_S - r_T)^2; L_neg = the same mean over the min(topk, n_neg) hardest
   negatives of the STUDENT (largest student similarity), each paired with the teacher's value of the same pair.
   loss = w_pos L_pos + w_neg L_neg (the reference's hard-coded 0.02 and 0.01). Only the student similarities of
   those pairs carry gradient: thresholds, anchors and the sort order are constants.

Conventions of this package kept here: no host synchronisation inside forward or backward (the counts n_pos,
n_neg and the indices q_k stay tensors and are used through gathers and ``torch.where``); half-precision inputs
are computed in float32; N < 2 (no pair) gives a zero attached to the graph and leaves the anchors alone.

Edge cases and the few places where the head departs from the reference:
- no positive pair (all labels distinct): the reference returns NaN (the mean of nothing); here the positive term
  is a zero attached to the graph, so the loss is w_neg L_neg with the reference's gradient.
  ``nan_on_empty=True`` gives the reference's NaN (and the same finite gradient).
- no negative pair (all labels equal; the reference fails with IndexError): with debug checks on
  (``insightface_pwr.heads.base.debug_checks``) a ValueError states N and the number of distinct labels. Without
  them (reading the labels would be a device sync) the result is defined as: the anchors are left unchanged and
  the negative term is an attached zero, so the loss is w_pos L_pos.
- anchors are a constructor argument (integers >= 2, so that 0 <= q_k <= n_neg - 1); the reference's buffers
  follow its default list only.
- the buffers are part of the state_dict (a resumed run continues exactly; TFace does not save them). They take
  the computing dtype of the call that updates them (float32, or float64 for float64 inputs), and a state_dict
  loads in the dtype it was saved with.
- ties between student negatives: the sort is not stable, as in the reference; only pairs tied in the student
  but not in the teacher could make a difference.
- on several ranks the TFace recipe runs EKD on the all-gathered global batch; a TFace run on W GPUs weights the
  loss W times (the backward of its AllGather), so a recipe replicating it sets the head weight to W.

Recipe use (loss = ArcFace + EKD, the TFace recipe with one GPU)::

    config.distill.heads = [edict(name="ekd", weight=1.0, params=edict(topk=2000, t=0.01))]
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .registry import register_head
from .base import EmbeddingHead, debug_checks_enabled, zero_loss
from .common import at_least_float32, check_int, check_nonnegative, check_positive
from .relations import upper_indices

__all__ = ["EKDLoss", "ekd_thresholds", "soft_rank_count", "DEFAULT_ANCHORS"]

DEFAULT_ANCHORS = (10, 100, 1000, 10000, 100000, 1000000)


def soft_rank_count(x: torch.Tensor, anchors: torch.Tensor, t: float) -> torch.Tensor:
    """sum_k sigmoid((x - A_k) / t) per value of ``x`` (the reference's clamped sigmoid)."""
    exponent = torch.clamp(-(x.unsqueeze(1) - anchors.unsqueeze(0)) / t, min=-50, max=50)
    return (1.0 / (1.0 + torch.exp(exponent))).sum(dim=1)


def ekd_thresholds(sorted_desc: torch.Tensor, n_neg: torch.Tensor, anchor_values: torch.Tensor) -> torch.Tensor:
    """The values at positions floor(n_neg / a_k) of ``sorted_desc`` (a gather with a tensor index: no sync)."""
    q = torch.div(n_neg, anchor_values, rounding_mode="floor")
    return sorted_desc.gather(0, q)


def _check_anchors(anchors) -> Tuple[int, ...]:
    if isinstance(anchors, (str, bytes)) or not isinstance(anchors, (tuple, list)) or len(anchors) == 0:
        raise ValueError(f"ekd: anchors must be a non-empty tuple of integers >= 2, got {anchors!r}")
    for a in anchors:
        if isinstance(a, bool) or not isinstance(a, int) or a < 2:
            raise ValueError(f"ekd: anchors must be integers >= 2 (an anchor a puts the threshold at position "
                             f"floor(n_neg / a) of the sorted negatives), got {a!r} in {tuple(anchors)!r}")
    return tuple(int(a) for a in anchors)


@register_head("ekd")
class EKDLoss(EmbeddingHead):
    """EKD: match the student's and the teacher's soft rank counts of pair similarities against moving thresholds."""

    paper = "Huang et al., Evaluation-oriented Knowledge Distillation for Deep Face Recognition, CVPR 2022"
    uses_labels = True
    relational = True

    def __init__(self, topk: int = 2000, t: float = 0.01, anchors: Tuple[int, ...] = DEFAULT_ANCHORS,
                 momentum: float = 0.01, w_pos: float = 0.02, w_neg: float = 0.01,
                 nan_on_empty: bool = False) -> None:
        super().__init__()
        self.topk = check_int("ekd", "topk", topk, 1)
        self.t = check_positive("ekd", "t", t)
        self.anchors = _check_anchors(anchors)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < float(momentum) <= 1:
            raise ValueError(f"ekd: momentum must be a number in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.w_pos = check_nonnegative("ekd", "w_pos", w_pos)
        self.w_neg = check_nonnegative("ekd", "w_neg", w_neg)
        if not isinstance(nan_on_empty, bool):
            raise ValueError(f"ekd: nan_on_empty must be True or False, got {nan_on_empty!r}")
        self.nan_on_empty = nan_on_empty
        k = len(self.anchors)
        self.register_buffer("s_anchor", torch.zeros(k))
        self.register_buffer("t_anchor", torch.zeros(k))
        self.register_buffer("anchor_values", torch.tensor(self.anchors, dtype=torch.int64), persistent=False)
        self._param_names = ("topk", "t", "anchors", "momentum", "w_pos", "w_neg", "nan_on_empty")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # the saved dtype of the anchors wins
        for name in ("s_anchor", "t_anchor"):
            saved = state_dict.get(prefix + name)
            own = self._buffers[name]
            if isinstance(saved, torch.Tensor) and saved.is_floating_point() and saved.dtype != own.dtype:
                self._buffers[name] = own.to(saved.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _store(self, name: str, value: torch.Tensor) -> None:
        own = self._buffers[name]
        if own.dtype == value.dtype and own.device == value.device:
            own.copy_(value)
        else:
            self._buffers[name] = value.clone()

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = student.shape[0]
        if n < 2:
            return zero_loss(student)
        student, teacher = at_least_float32(student), at_least_float32(teacher.detach())
        dtype, device = student.dtype, student.device
        iu, ju = upper_indices(n, device)
        labels = labels.to(device)
        pos = labels[iu] == labels[ju]  # M booleans, row-major pairs i < j
        neg = ~pos
        s = F.normalize(student, dim=1)
        x = (s @ s.t())[iu, ju]
        with torch.no_grad():
            tn = F.normalize(teacher, dim=1)
            y = (tn @ tn.t())[iu, ju]
            n_pos, n_neg = pos.sum(), neg.sum()
            if debug_checks_enabled() and int(n_neg) == 0:
                raise ValueError(f"ekd: no negative pair in the batch: all N={n} labels are equal "
                                 f"({int(torch.unique(labels).numel())} distinct label); EKD needs at least two "
                                 f"classes per batch")
            ninf = torch.full_like(x, float("-inf"))
            s_sorted, s_order = torch.sort(torch.where(neg, x.detach(), ninf), descending=True)
            t_sorted = torch.sort(torch.where(neg, y, ninf), descending=True).values
            av = self.anchor_values.to(device)
            has_neg = n_neg > 0
            old_s = self.s_anchor.to(device=device, dtype=dtype)
            old_t = self.t_anchor.to(device=device, dtype=dtype)
            new_s = self.momentum * ekd_thresholds(s_sorted, n_neg, av) + (1 - self.momentum) * old_s
            new_t = self.momentum * ekd_thresholds(t_sorted, n_neg, av) + (1 - self.momentum) * old_t
            new_s, new_t = torch.where(has_neg, new_s, old_s), torch.where(has_neg, new_t, old_t)
            self._store("s_anchor", new_s)
            self._store("t_anchor", new_t)
            r_t_all = soft_rank_count(y, new_t, self.t)
        # positives: every one of them
        d_pos = (soft_rank_count(x, new_s, self.t) - r_t_all) ** 2
        l_pos = torch.where(pos, d_pos, torch.zeros_like(d_pos)).sum() / n_pos.clamp(min=1).to(dtype)
        if self.nan_on_empty:
            l_pos = torch.where(n_pos > 0, l_pos, torch.full_like(l_pos, float("nan")))
        # negatives: the student's min(topk, n_neg) hardest (a static slice of the sorted order, masked)
        k = min(self.topk, x.shape[0])
        sel = s_order[:k]
        d_neg = (soft_rank_count(x.gather(0, sel), new_s, self.t) - r_t_all.gather(0, sel)) ** 2
        valid = torch.arange(k, device=device) < n_neg
        count = torch.clamp(n_neg, max=k).clamp(min=1).to(dtype)
        l_neg = torch.where(valid, d_neg, torch.zeros_like(d_neg)).sum() / count
        return self.w_pos * l_pos + self.w_neg * l_neg
