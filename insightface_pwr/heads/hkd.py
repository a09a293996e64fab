"""HKD: Hinton's knowledge distillation on classifier logits.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop; used with
CosFace (T = 4, weight 0.3) in Nikitin et al., "Pairwise Ranking Distillation for Deep Face Recognition",
GraphiCon 2020; reference code: mnikitin/KD-PWR ``utils/loss/hkd.py``.

loss = MEAN over the batch of the SUM over classes of p_t (log p_t - log p_s), with p = softmax(logits / T):
the KL divergence KL(p_t || p_s) per sample, in nats. The PWR authors do not multiply by T^2; ``t2_scale=True``
does (Hinton's gradient-scale correction). Inputs: N x C logits of the student's and the teacher's classifiers over
the SAME classes (the PWR authors use the margin logits).

Half-precision logits (float16 / bfloat16) are computed in float32. This head is a plain local computation over
the C columns it is given. With partial FC (classes sharded over ranks) the softmax and the class sum must be
global: the training hooks put it in :class:`insightface_pwr.distill.gather.ClassSharded`, which computes global
log-softmaxes and reuses :func:`kl_from_log_probs` on each rank's shard.

Recipe use (the paper's "+ HKD" rows: CosFace 0.7 + HKD 0.3, T = 4)::

    config.distill.heads = [edict(name="hkd", weight=0.3, params=edict(temperature=4.0))]
"""
from __future__ import annotations

import torch

from .registry import register_head
from .base import LogitHead
from .common import at_least_float32, check_positive

__all__ = ["HintonKDLoss", "kl_from_log_probs", "hkd_per_sample"]


def kl_from_log_probs(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """Per-sample sum over the last axis of p_t (log p_t - log p_s), given log-probabilities (N x C -> N).

    Summing this over class shards of globally normalised log-probabilities gives the global KL."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)


def hkd_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) per sample (N), over the local classes."""
    log_p_s = torch.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    log_p_t = torch.log_softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=-1)
    return kl_from_log_probs(log_p_t, log_p_s)


@register_head("hkd")
class HintonKDLoss(LogitHead):
    """Hinton KD: KL(teacher || student) of the temperature-softened class distributions, mean over the batch."""

    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, NIPS 2014 Deep Learning Workshop"

    def __init__(self, temperature: float = 4.0, t2_scale: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("hkd", "temperature", temperature)
        if not isinstance(t2_scale, bool):
            raise ValueError(f"hkd: t2_scale must be True or False, got {t2_scale!r}")
        self.t2_scale = t2_scale
        self._param_names = ("temperature", "t2_scale")

    def compute_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        loss = hkd_per_sample(student_logits, teacher_logits, self.temperature).mean()
        return loss * self.temperature ** 2 if self.t2_scale else loss
