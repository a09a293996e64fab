"""Distribution as wrappers around heads: heads are local tensor math; these modules put a head on several ranks.

- :class:`GlobalBatch` (a recipe term's ``gather="global"``) all-gathers the student embeddings (with gradient,
  arcface_torch's AllGather convention), the teacher embeddings and the labels, and calls the head on the whole
  global batch: every rank computes the same loss value, of which only 1 / W is exposed to the gather's graph
  (:func:`~insightface_pwr.distill.collectives.share_of_replicated_loss`), so that after DDP's gradient averaging
  the parameters receive exactly the gradient of the global loss. Any embedding head, label-using heads included.
- :class:`ClassSharded` runs a softmax-KL logits head (``hkd``) over partial FC's class shards: every rank holds
  the logits of the global batch against its own slice of the classes (N x C_r); the softmax and the class sum are
  global (row maxima all-reduced with MAX, sums of exponentials and per-row KL partial sums with SUM, as partial
  FC's DistCrossEntropy does) and the per-row KL is the head's own :func:`~insightface_pwr.heads.hkd.kl_from_log_probs`.
  Backward returns each rank's gradient w.r.t. its own logits only, d loss / d z_s = (p_s - p_t) / (T N) (times T^2
  with ``t2_scale``), like DistCrossEntropy: partial FC's AllGather then sums the embedding gradients over ranks.
- :func:`average_gradients` keeps trainable head parameters identical on every rank the way DDP does: rank 0's
  values broadcast once, then ONE all-reduce of all their gradients (a flat bucket) per backward, issued when the
  last of them has accumulated.

Shapes are checked across ranks once, on a wrapper's first call (a mismatch would hang or garble a gather);
afterwards no call reads anything back to the host. Without a process group (or with one rank) the wrappers are
the head itself.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import distributed as dist
from torch import nn

from ..heads.hkd import kl_from_log_probs
from .collectives import all_gather_no_grad, all_gather_with_grad, is_distributed, share_of_replicated_loss

__all__ = ["GlobalBatch", "ClassSharded", "distribute", "average_gradients", "GATHERS"]

GATHERS = ("local", "global")


class GlobalBatch(nn.Module):
    """``head`` on the all-gathered global batch (see the module docstring)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self._checked = False

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not is_distributed():
            return self.head(student=student, teacher=teacher, **({} if labels is None else {"labels": labels}))
        check, self._checked = not self._checked, True
        student = all_gather_with_grad(student, f"{_name(self.head)} student embeddings", check=check)
        teacher = all_gather_no_grad(teacher, f"{_name(self.head)} teacher embeddings", check=check)
        extra = {}
        if labels is not None:
            extra["labels"] = all_gather_no_grad(labels, f"{_name(self.head)} labels", check=check)
        return share_of_replicated_loss(self.head(student=student, teacher=teacher, **extra))


class _ShardedKL(torch.autograd.Function):
    """loss = mean_i sum_c p_t (log p_t - log p_s) over the global classes; gradient for the student only."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                group: Optional[Any]) -> torch.Tensor:
        dtype = torch.promote_types(student.dtype, torch.float32)  # half precision is computed in float32
        log_ps = _global_log_softmax(student.to(dtype) / temperature, group)
        log_pt = _global_log_softmax(teacher.to(dtype) / temperature, group)
        rows = _all_reduce(kl_from_log_probs(log_pt, log_ps), dist.ReduceOp.SUM, group)
        ctx.save_for_backward(log_ps.exp() - log_pt.exp())
        ctx.scale = 1.0 / (temperature * student.shape[0])
        ctx.dtype = student.dtype
        return rows.mean().to(student.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        (diff,) = ctx.saved_tensors
        return (diff * (grad_out * ctx.scale)).to(ctx.dtype), None, None, None


class ClassSharded(nn.Module):
    """A softmax-KL logits head (``temperature``, ``t2_scale``: the ``hkd`` head) over class-sharded logits."""

    def __init__(self, head: nn.Module, group: Optional[Any] = None) -> None:
        super().__init__()
        for attr in ("temperature", "t2_scale"):
            if not hasattr(head, attr):
                raise TypeError(f"head {_name(head)!r} consumes logits but is not a softmax-KL head (no {attr!r}): "
                                f"only such heads have a class-sharded (global softmax) form")
        self.head, self.group = head, group

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student_logits and teacher_logits must have the same shape: "
                             f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
        t = self.head.temperature
        loss = _ShardedKL.apply(student_logits, teacher_logits.detach(), float(t), self.group)
        return loss * t ** 2 if self.head.t2_scale else loss


def distribute(head: nn.Module, consumes: str, gather: str, world_size: int) -> nn.Module:
    """The module a training step calls for ``head``: the head itself on one rank; on several, logits heads go
    over the class shards and embedding heads over the global batch when ``gather == "global"``."""
    if gather not in GATHERS:
        raise ValueError(f"gather must be one of {GATHERS}, got {gather!r}")
    if world_size == 1:
        return head
    if consumes == "logits":
        return ClassSharded(head)
    return GlobalBatch(head) if gather == "global" else head


def average_gradients(params: List[nn.Parameter], world_size: int) -> None:
    """Broadcast rank 0's values of ``params`` and average their gradients over the ranks in one bucketed
    all-reduce per backward (the module docstring). Every parameter must receive a gradient in every backward."""
    if not params or world_size == 1:
        return
    for p in params:
        dist.broadcast(p.data, 0)
    pending = {"n": len(params)}

    def on_accumulated(_: torch.Tensor) -> None:
        pending["n"] -= 1
        if pending["n"]:
            return
        pending["n"] = len(params)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    for p in params:
        p.register_post_accumulate_grad_hook(on_accumulated)


def _name(head: nn.Module) -> str:
    return getattr(head, "name", type(head).__name__)


def _all_reduce(x: torch.Tensor, op: Any, group: Optional[Any]) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(x, op, group=group)
    return x


def _global_log_softmax(z: torch.Tensor, group: Optional[Any]) -> torch.Tensor:
    m = _all_reduce(z.max(dim=1, keepdim=True)[0], dist.ReduceOp.MAX, group)
    shifted = z - m
    s = _all_reduce(shifted.exp().sum(dim=1, keepdim=True), dist.ReduceOp.SUM, group)
    return shifted - s.log()
