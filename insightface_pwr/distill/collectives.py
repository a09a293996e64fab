"""All-gather across ranks, with a gradient that follows arcface_torch's convention (``partial_fc_v2.AllGatherFunc``).

Forward: every rank gets the concatenation of the ranks' tensors (rank order; equal shapes on every rank).
Backward (arcface_torch's convention): the gradients that ALL ranks computed for slice r are SUMMED onto rank r
(one ``reduce`` per slice), then multiplied by the world size W ("cooperate with distributed loss function").

What it means: if rank k's loss is L_k, rank r's own input receives W * sum_k dL_k/dx_r; DDP then AVERAGES the
parameter gradients over ranks, so the parameters get sum_k dL_k/dtheta: the gradient of the SUM of the ranks'
losses. arcface_torch's partial-FC loss is such a sum (each rank holds a shard of the classes). A loss that every
rank computes IN FULL over the gathered batch (a head in :class:`~insightface_pwr.distill.gather.GlobalBatch`) must therefore expose only 1 / W of itself
to this gather's graph (``share_of_replicated_loss``) so that the parameters get exactly dL/dtheta.

Works with any backend that supports ``all_gather`` and ``reduce`` (gloo on CPU, NCCL on GPU). Without an
initialised process group (or with one rank) the gather is the identity.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_info", "all_gather_with_grad", "all_gather_no_grad",
           "share_of_replicated_loss"]


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> Tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _check_same_shape(x: torch.Tensor, name: str) -> None:
    """Raise a clear error (instead of a hang or a garbled gather) when the ranks' shapes differ."""
    world = dist.get_world_size()
    shape = torch.tensor(list(x.shape) + [x.dim()], dtype=torch.int64, device=x.device)
    dims = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(dims, shape)
    shapes = [tuple(d[:-1].tolist()) for d in dims]
    if any(sh != shapes[0] for sh in shapes):
        raise ValueError(f"all_gather of {name}: every rank must hold the same shape, got {shapes} "
                         f"(rank order); use equal per-rank batch sizes (drop_last=True)")


class _AllGatherFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        rank, world = dist.get_rank(), dist.get_world_size()
        parts = [g.contiguous().clone() for g in grad.split(ctx.rows, 0)]
        ops = [dist.reduce(parts[i], i, dist.ReduceOp.SUM, async_op=True) for i in range(world)]
        for op in ops:
            op.wait()
        return parts[rank] * world  # arcface_torch: "cooperate with distributed loss function"


def all_gather_with_grad(x: torch.Tensor, name: str = "tensor", check: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (rows) over ranks in rank order; differentiable with arcface_torch's convention (module
    docstring). Identity without a process group. ``check``: compare the ranks' shapes first (one extra all_gather
    and a host read: do it once, not every step)."""
    if not is_distributed():
        return x
    if check:
        _check_same_shape(x, name)
    return _AllGatherFunc.apply(x)


def all_gather_no_grad(x: torch.Tensor, name: str = "tensor", check: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (rows) over ranks in rank order, detached (e.g. the teacher's embeddings); ``check`` as
    for :func:`all_gather_with_grad`."""
    if not is_distributed():
        return x.detach()
    if check:
        _check_same_shape(x, name)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, 0)


def share_of_replicated_loss(loss: torch.Tensor) -> torch.Tensor:
    """For a loss every rank computes in full over gathered tensors: the same VALUE, with only 1 / W of it in
    the graph, so that ``all_gather_with_grad`` (sum over ranks, times W) and DDP's mean give exactly the
    gradient of the loss. Identity without a process group."""
    _, world = world_info()
    if world == 1:
        return loss
    part = loss / world
    return part + (loss - part).detach()
