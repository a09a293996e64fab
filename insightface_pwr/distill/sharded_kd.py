"""Hinton KD over logits whose CLASS dimension is sharded over ranks (partial FC's model parallelism).

Every rank holds the logits of the whole (all-gathered) batch against its own slice of the classes, N x C_r.
The softmax and the class sum of KL(p_t || p_s) must be global, so, as partial FC's ``DistCrossEntropy`` does,
the row maxima are all-reduced with MAX and the sums of exponentials with SUM; the per-row KL partial sums are
all-reduced with SUM. The loss (mean over the N rows, in nats; times T^2 with ``t2_scale``) is the same number
on every rank.

Backward returns each rank's gradient with respect to its OWN logits only,
d loss / d z_s = (p_s - p_t) / (T * N) (times T^2 with ``t2_scale``), exactly like ``DistCrossEntropy``: partial
FC's AllGather then sums the embedding gradients over the ranks. (A plain autograd all_reduce would count each
cross-rank term once per rank.) With one process it equals the registered ``hkd`` head.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import distributed as dist

__all__ = ["sharded_hkd", "ShardedHKDFunction"]


def _all_reduce(x: torch.Tensor, op: Any, group: Optional[Any]) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(x, op, group=group)
    return x


def _global_log_softmax(z: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    m = _all_reduce(z.max(dim=1, keepdim=True)[0], dist.ReduceOp.MAX, group)
    shifted = z - m
    s = _all_reduce(shifted.exp().sum(dim=1, keepdim=True), dist.ReduceOp.SUM, group)
    return shifted - s.log()


class ShardedHKDFunction(torch.autograd.Function):
    """loss = mean_i sum_c p_t (log p_t - log p_s) over the global classes; gradient for the student only."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                group: Optional[Any]) -> torch.Tensor:
        dtype = torch.promote_types(student.dtype, torch.float32)  # half precision is computed in float32
        log_ps = _global_log_softmax(student.to(dtype) / temperature, group)
        log_pt = _global_log_softmax(teacher.to(dtype) / temperature, group)
        pt = log_pt.exp()
        rows = _all_reduce((pt * (log_pt - log_ps)).sum(dim=1), dist.ReduceOp.SUM, group)
        ctx.save_for_backward(log_ps.exp() - pt)
        ctx.scale = 1.0 / (temperature * student.shape[0])
        ctx.dtype = student.dtype
        return rows.mean().to(student.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        (diff,) = ctx.saved_tensors
        return (diff * (grad_out * ctx.scale)).to(ctx.dtype), None, None, None


def sharded_hkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
                t2_scale: bool = False, group: Optional[Any] = None) -> torch.Tensor:
    """Global Hinton KD of class-sharded N x C_r logits (see the module docstring)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(teacher_logits.shape)}")
    loss = ShardedHKDFunction.apply(student_logits, teacher_logits.detach(), float(temperature), group)
    return loss * temperature ** 2 if t2_scale else loss
