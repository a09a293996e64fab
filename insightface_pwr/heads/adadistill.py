"""AdaDistill: a margin softmax whose class centres are distilled from the teacher's embeddings, adaptively.

Boutros, Struc, Damer, "AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition", ECCV 2024. The
definition follows the authors' code (fdbtrs/AdaDistill ``utils/losses.py`` at commit 0842186b, classes
``AdaptiveAArcFace`` and ``AdaptiveACosFace``) and the equations of their poster; the golden fixture
``tests/golden/fr_golden.json`` was computed by that code itself.

The head IS the training loss: it replaces the trained classifier (there is no separate KD term). Its state is a
C x D matrix of class centres, the buffer ``centres``, which no optimiser touches. Per call, for a batch of N
student rows S, teacher rows T (N x D each: the centres live in the teacher's space and are compared with the
student, so D_s = D_t) and labels y:

1. s_i = S_i / |S_i| and t_i = T_i / |T_i| (a plain division, as the reference).
2. Under no_grad, the weight alpha_i (:func:`adadistill_alpha`): c_i = clamp(cos(s_i, t_i), -1, 1) and
   - ``adaptive_weighted_alpha=True`` (default; the paper's alpha', Eq. 8): lambda_i = clamp(cos(w_{y_i}, t_i),
     1e-6, 1) with the centre BEFORE this call, and alpha_i = clamp(c_i lambda_i, 1e-6, 1);
   - ``False`` (the paper's Eq. 7; the released branch does not run): alpha_i = clamp(c_i, 1e-6, 1).
3. Under no_grad, w_{y_i} <- alpha_i w_{y_i} + (1 - alpha_i) t_i (:func:`adadistill_update`), every right-hand
   side with the centres from before the call. When a label repeats in the batch, the update of its LAST sample
   (batch order) is the one kept: the reference's duplicate-index assignment does that on CPU, here it is made
   deterministic on any device (the last position per label from a scatter_reduce amax, then a gather).
   The centres are stored unnormalised and normalised when used.
4. cos theta_ij = clamp(s_i . w_j / |w_j|, -1, 1) over all C classes with the UPDATED centres; the target logit
   is s cos(acos(cos theta) + m) (``margin_type="arcface"``, no fallback beyond pi, as the reference) or
   s (cos theta - m) (``"cosface"``); the other logits s cos theta.
5. loss = the batch mean of the cross-entropy. The gradient flows through s_i only.

Defaults: s 64, m 0.45 (the authors' ``config.py`` for ArcFace; the reference CosFace class defaults to 0.35,
the best CosFace margin of their ablation), centres initialised i.i.d. N(0, init_std^2) with init_std 0.01 from a
generator seeded by torch's global RNG at construction (``torch.manual_seed`` before building makes it
reproducible). Classes not yet seen keep random centres, which stay in the softmax denominator.

Conventions of this package kept here: no host synchronisation in forward or backward; half-precision inputs are
computed in float32; the centres keep the buffer's dtype (``head.double()`` for float64 centres) and the update is
computed in the inputs' computing dtype; labels outside [0, num_classes) are reported only with debug checks on.
On several ranks each centre should be updated from the global batch by the rank that owns it: the two functions
:func:`adadistill_alpha` and :func:`adadistill_update` are the pieces a sharded (partial FC) version reuses.

Recipe use (AdaArcDistill: it replaces the margin loss, so it carries the whole weight)::

    config.distill.heads = [edict(name="adadistill", weight=1.0,
                                  params=edict(num_classes=85742, embedding_size=512, margin_type="arcface"))]
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .registry import register_head
from .base import EmbeddingHead, debug_checks_enabled
from .common import at_least_float32, check_choice, check_int, check_positive

__all__ = ["AdaDistillLoss", "adadistill_alpha", "adadistill_update", "adadistill_logits", "MARGIN_TYPES"]

MARGIN_TYPES = ("arcface", "cosface")
ALPHA_FLOOR = 1e-6


@torch.no_grad()
def adadistill_alpha(s_norm: torch.Tensor, t_norm: torch.Tensor, centres_rows: torch.Tensor,
                     adaptive: bool = True) -> torch.Tensor:
    """The N update weights alpha_i of normalised student and teacher rows and the (unnormalised) current centres
    of their classes, ``centres_rows`` = w_{y_i} (N x D)."""
    c = F.cosine_similarity(s_norm, t_norm, dim=1).clamp(-1, 1)
    if adaptive:
        lam = F.cosine_similarity(centres_rows.to(t_norm.dtype), t_norm, dim=1).clamp(ALPHA_FLOOR, 1)
        c = c * lam
    return c.clamp(ALPHA_FLOOR, 1.0)


@torch.no_grad()
def adadistill_update(centres: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor,
                      t_norm: torch.Tensor, owned: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In place: centres[y_i] <- alpha_i centres[y_i] + (1 - alpha_i) t_i, all from the centres before the call;
    for a repeated label the last sample in batch order wins (deterministic, no host sync). Returns ``centres``.

    ``owned`` (N booleans, optional; a class shard's form): only the rows where it is True update, and ``labels``
    must be valid row indices everywhere (rows not owned may point at any row, e.g. 0; they write that row's
    winning value, or its current value when no owned sample has that class, so they change nothing)."""
    n = labels.shape[0]
    pos = torch.arange(n, device=labels.device)
    if owned is not None:
        pos = torch.where(owned, pos, torch.full_like(pos, -1))
    last = torch.full((centres.shape[0],), -1, dtype=torch.int64, device=labels.device)
    last = last.scatter_reduce(0, labels, pos, reduce="amax", include_self=True)
    winner = last.gather(0, labels)  # for every sample, the batch position of its label's last (owned) sample
    rows = centres.index_select(0, labels)
    a = alpha.to(t_norm.dtype).unsqueeze(1)
    new = (a * rows.to(t_norm.dtype) + (1.0 - a) * t_norm).to(centres.dtype)
    if owned is not None:  # a row with no owned sample of its class keeps its value (position n: the row itself)
        new = torch.cat([new, rows], 0)
        winner = torch.where(winner < 0, torch.arange(n, 2 * n, device=labels.device), winner)
    new = new.index_select(0, winner)  # duplicates all carry the winner's row: the write order no longer matters
    centres.index_put_((labels,), new)
    return centres


def adadistill_logits(s_norm: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, margin_type: str,
                      m: float, s: float) -> torch.Tensor:
    """N x C margin logits of normalised student rows against the normalised (updated) centres. ``labels`` are
    column indices; -1 marks a row whose class is not among the columns (no margin: partial FC's shards, where a
    rank holds some of the classes)."""
    w = centres.to(s_norm.dtype)
    w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    cos = (s_norm @ w.t()).clamp(-1, 1)
    has = (labels >= 0).unsqueeze(1)
    col = torch.where(labels >= 0, labels, torch.zeros_like(labels)).unsqueeze(1)
    target = cos.gather(1, col)
    safe = torch.where(has, target, torch.zeros_like(target))  # no acos(+-1) (infinite slope) on masked rows
    if margin_type == "arcface":
        margined = torch.cos(torch.acos(safe) + m)
    else:
        margined = safe - m
    return s * cos.scatter(1, col, torch.where(has, margined, target))


@register_head("adadistill")
class AdaDistillLoss(EmbeddingHead):
    """AdaDistill: margin softmax over class centres updated from the teacher's embeddings (it is the loss)."""

    paper = "Boutros et al., AdaDistill: Adaptive Knowledge Distillation for Deep Face Recognition, ECCV 2024"
    uses_labels = True
    same_dim = True
    relational = False

    def __init__(self, num_classes: int = 0, embedding_size: int = 512,
                 margin_type: Literal["arcface", "cosface"] = "arcface", m: float = 0.45, s: float = 64.0,
                 adaptive_weighted_alpha: bool = True, init_std: float = 0.01) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"adadistill: num_classes must be set to the number of classes (an integer >= 1), "
                             f"got {num_classes!r}")
        self.num_classes = num_classes
        self.embedding_size = check_int("adadistill", "embedding_size", embedding_size, 1)
        check_choice("adadistill", "margin_type", margin_type, MARGIN_TYPES)
        self.margin_type = margin_type
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (0 <= float(m) < math.pi):
            raise ValueError(f"adadistill: m must be a number in [0, pi), got {m!r}")
        self.m = float(m)
        self.s = check_positive("adadistill", "s", s)
        if not isinstance(adaptive_weighted_alpha, bool):
            raise ValueError(f"adadistill: adaptive_weighted_alpha must be True or False, "
                             f"got {adaptive_weighted_alpha!r}")
        self.adaptive_weighted_alpha = adaptive_weighted_alpha
        self.init_std = check_positive("adadistill", "init_std", init_std)
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())  # construction time only: from torch's global RNG
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("centres", torch.randn(num_classes, self.embedding_size, generator=g) * self.init_std)
        self._param_names = ("num_classes", "embedding_size", "margin_type", "m", "s", "adaptive_weighted_alpha",
                             "init_std")

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if student.shape[1] != self.embedding_size:
            raise ValueError(f"adadistill: embeddings of size {self.embedding_size} expected (embedding_size), got "
                             f"student {tuple(student.shape)}")
        student, teacher = at_least_float32(student), at_least_float32(teacher.detach())
        labels = labels.to(student.device)
        if debug_checks_enabled():
            bad = int(((labels < 0) | (labels >= self.num_classes)).sum())
            if bad:
                raise ValueError(f"adadistill: {bad} label(s) outside [0, {self.num_classes}) (num_classes)")
        s_norm = student / torch.linalg.vector_norm(student, dim=1, keepdim=True)
        t_norm = teacher / torch.linalg.vector_norm(teacher, dim=1, keepdim=True)
        with torch.no_grad():
            alpha = adadistill_alpha(s_norm.detach(), t_norm, self.centres.index_select(0, labels),
                                     self.adaptive_weighted_alpha)
            adadistill_update(self.centres, labels, alpha, t_norm)
        logits = adadistill_logits(s_norm, self.centres, labels, self.margin_type, self.m, self.s)
        return F.cross_entropy(logits, labels)
