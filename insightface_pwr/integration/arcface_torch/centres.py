"""AdaDistill inside partial FC: partial FC's class-sharded weight IS AdaDistill's matrix of class centres.

The recipe term ``edict(name="adadistill", ...)`` does not build the local head (whose C x D buffer would be a
second, unsharded copy of the classifier on every rank). :func:`install_adadistill` instead:

- takes partial FC's weight out of training (``requires_grad=False``: the optimizer skips it, and it gets no
  gradient), so that only AdaDistill's update moves it. Each rank owns the centres of its classes
  ``[class_start, class_start + num_local)``; every class has exactly one owner;
- makes partial FC's own forward a zero attached to the embeddings (the recipe's ``classification_weight`` must
  be 0: the AdaDistill term is the loss, computed once, by the hooks, where the teacher's embeddings are known);
- returns :class:`PartialFCAdaDistill`, the module the hooks call as the term (student, teacher, labels).

Per step, :class:`PartialFCAdaDistill` does what the local head (:class:`~insightface_pwr.heads.adadistill.
AdaDistillLoss`) does on the GLOBAL batch, with the centres sharded:

1. all-gathers the student embeddings (with gradient, arcface_torch's convention, as partial FC does), the
   teacher's embeddings and the labels (rank order: the global batch);
2. under no_grad, the weights alpha_i (:func:`~insightface_pwr.heads.adadistill.adadistill_alpha`, from the
   centres before the step) and the update of the centres that THIS rank owns
   (:func:`~insightface_pwr.heads.adadistill.adadistill_update` with ``owned``): every rank sees the same global
   batch, so a centre's update is the one the local head would make, wherever its owner is;
3. the margin logits of the global batch against this rank's UPDATED centres (the classes partial FC's ``sample``
   keeps when ``sample_rate < 1``, drawn as partial FC draws them), with the head's margin (``arcface``: s
   cos(acos(cos theta) + m) with its true gradient, or ``cosface``: s (cos theta - m)) and scale s, not the
   recipe's ``margin_list``;
4. partial FC's own ``dist_cross_entropy`` (the global softmax over all ranks' classes; it returns each rank the
   gradient of its own logits, and the all-gather's backward sums them onto each sample's rank: the same
   convention as partial FC's loss, so DDP's average gives the exact gradient of the global loss). One
   difference from the local head's ``F.cross_entropy``: partial FC's cross-entropy, like upstream's, clamps the
   target probability at 1e-30, so a sample's loss VALUE is capped at about 69 (hit with s = 64 and centres far
   from the sample); the gradient is the same.

The centres are partial FC's weight: upstream's ``checkpoint_gpu_{rank}.pt`` saves them (``state_dict_softmax_fc``)
and its resume restores them exactly; the term itself has no state. On one process (and ``sample_rate`` 1) this is
the local head exactly, its centres being partial FC's weight (initialised N(0, 0.01^2) as the head's are).

What it knows of upstream (commit 0159b24d): ``PartialFC_V2`` has ``weight`` (C_local x D), ``class_start``,
``num_local``, ``sample_rate``, ``sample(labels, index_positive)`` (keeps the positive classes plus random others,
sets ``weight_index``, remaps ``labels`` in place, returns the kept rows) and ``dist_cross_entropy`` (labels N x 1,
-1 outside this rank's classes).
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

from ...distill.collectives import all_gather_no_grad, all_gather_with_grad
from ...heads.adadistill import MARGIN_TYPES, adadistill_alpha, adadistill_logits, adadistill_update
from ...heads.common import at_least_float32

__all__ = ["PartialFCAdaDistill", "install_adadistill", "ForwardBypass"]


class PartialFCAdaDistill(nn.Module):
    """The AdaDistill term over partial FC's class shards (see the module docstring). No state of its own:
    partial FC is held as a plain attribute, so its weight is neither a parameter nor a buffer of this module."""

    def __init__(self, partial_fc: nn.Module, margin_type: str = "arcface", m: float = 0.45, s: float = 64.0,
                 adaptive_weighted_alpha: bool = True) -> None:
        super().__init__()
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"adadistill: margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
        object.__setattr__(self, "partial_fc", partial_fc)
        self.margin_type, self.m, self.s = margin_type, float(m), float(s)
        self.adaptive_weighted_alpha = bool(adaptive_weighted_alpha)
        self._checked = False

    def extra_repr(self) -> str:
        return (f"margin_type={self.margin_type}, m={self.m:g}, s={self.s:g}, "
                f"adaptive_weighted_alpha={self.adaptive_weighted_alpha}, centres=partial FC's weight")

    def gather(self, student: torch.Tensor, teacher: torch.Tensor,
               labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The global batch: student rows (with gradient), teacher rows and labels, in rank order."""
        check, self._checked = not self._checked, True  # compare the ranks' shapes once (a host read)
        return (all_gather_with_grad(student, "adadistill student embeddings", check=check),
                all_gather_no_grad(teacher, "adadistill teacher embeddings", check=check),
                all_gather_no_grad(labels.reshape(-1).long(), "adadistill labels", check=check))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pfc = self.partial_fc
        student, teacher, labels = self.gather(student, teacher.detach(), labels.to(student.device))
        student, teacher = at_least_float32(student), at_least_float32(teacher)
        s_norm = student / torch.linalg.vector_norm(student, dim=1, keepdim=True)
        t_norm = teacher / torch.linalg.vector_norm(teacher, dim=1, keepdim=True)
        local = labels - pfc.class_start
        owned = (local >= 0) & (local < pfc.num_local)
        rows = torch.where(owned, local, torch.zeros_like(local))  # any valid row where not owned (masked)
        centres = pfc.weight
        with torch.no_grad():
            alpha = adadistill_alpha(s_norm.detach(), t_norm, centres.index_select(0, rows),
                                     self.adaptive_weighted_alpha)
            adadistill_update(centres, rows, alpha, t_norm, owned=owned)
        pfc_labels = torch.where(owned, rows, torch.full_like(rows, -1)).view(-1, 1)
        if pfc.sample_rate < 1:  # partial FC's own draw of the kept classes; remaps pfc_labels in place
            weight = pfc.sample(pfc_labels, owned.view(-1, 1))
        else:
            weight = centres
        logits = adadistill_logits(s_norm, weight.detach(), pfc_labels.view(-1), self.margin_type, self.m,
                                   self.s)
        return pfc.dist_cross_entropy(logits, pfc_labels)


class ForwardBypass:
    """Replaces partial FC's forward by a zero attached to the embeddings (AdaDistill computes the loss in the
    hooks); ``close`` restores it. Stands where the hooks keep their logit source, so that ``hooks.end`` undoes it:
    ``pair`` refuses (AdaDistill replaces partial FC's logits, so no logit head can run beside it)."""

    def __init__(self, partial_fc: nn.Module) -> None:
        self.partial_fc = partial_fc
        self.had_own = "forward" in vars(partial_fc)
        self.original = vars(partial_fc).get("forward")

        def zero_loss(local_embeddings: torch.Tensor, local_labels: Any = None) -> torch.Tensor:
            return local_embeddings.sum() * 0.0
        partial_fc.forward = zero_loss

    def pair(self, teacher_embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("adadistill replaces partial FC's margin softmax: there are no classifier logits for a "
                           "logits head (hkd) in this recipe")

    def close(self) -> None:
        if self.had_own:
            self.partial_fc.forward = self.original
        else:
            vars(self.partial_fc).pop("forward", None)


def install_adadistill(partial_fc: nn.Module, params: dict, num_classes: int, embedding_size: int,
                       where: str) -> Tuple[PartialFCAdaDistill, ForwardBypass]:
    """Turn partial FC's weight into AdaDistill's centres (see the module docstring). ``params``: the head's
    parameters from the recipe (``where`` names the recipe term in errors); ``num_classes`` and ``embedding_size``,
    when given there, must equal the config's (partial FC's)."""
    given = {"num_classes": params.get("num_classes", 0), "embedding_size": params.get("embedding_size")}
    for key, expected in (("num_classes", num_classes), ("embedding_size", embedding_size)):
        if given[key] not in (None, 0, expected):
            raise ValueError(f"{where}.params.{key} is {given[key]!r} but partial FC, which holds the centres, "
                             f"has config.{key} = {expected}; leave it out or set it to {expected}")
    if tuple(partial_fc.weight.shape[1:]) != (embedding_size,):
        raise ValueError(f"partial FC's weight is {tuple(partial_fc.weight.shape)}, expected (C_local, "
                         f"{embedding_size})")
    if "init_std" in params:  # the head's initial centres: N(0, init_std^2) (partial FC's own are N(0, 0.01^2))
        with torch.no_grad():
            partial_fc.weight.normal_(0.0, float(params["init_std"]))
    partial_fc.weight.requires_grad_(False)
    partial_fc.weight.grad = None
    term = PartialFCAdaDistill(partial_fc, params.get("margin_type", "arcface"), params.get("m", 0.45),
                               params.get("s", 64.0), params.get("adaptive_weighted_alpha", True))
    return term, ForwardBypass(partial_fc)
