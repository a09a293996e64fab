"""A CPU partial FC: arcface_torch's ``PartialFC_V2`` + ``CombinedMarginLoss`` + ``DistCrossEntropy`` semantics.

Our own code, written from upstream's documented behaviour so the hooks can be driven without CUDA:
- classes sharded over ranks: rank r of W holds C // W + (r < C % W) centres starting at C // W * r + min(r, C % W);
  ``weight`` is (num_local, D), initialised N(0, 0.01);
- forward all-gathers the embeddings and labels (:func:`~insightface_pwr.distill.collectives.all_gather_with_grad`:
  backward sums each rank's gradient of the gathered rows onto the rows' owner and multiplies by W, because DDP
  then AVERAGES the backbone gradients);
  labels outside this rank's classes become -1;
- ``sample_rate < 1``: keep the positive centres plus random others (``torch.rand`` on the global RNG, as upstream),
  ``weight_index`` holds the kept classes (sorted) and the labels are remapped into them;
- logits = normalize(emb) @ normalize(weight).T clamped to [-1, 1]; ``margin_softmax(logits, labels)`` applies
  the margin to the target logits and the scale s; the attribute is plain, like upstream, so hooks can wrap it;
- :class:`DistCrossEntropyFunction`: softmax over the GLOBAL class dimension (all_reduce MAX of the row maxima,
  SUM of the exponentials and of the target probabilities), computed in place in its input as upstream does,
  loss = mean over the global batch of -log p_target; backward (p - onehot) / N_global for this rank's logits;
  partial FC holds it as ``dist_cross_entropy`` (a :class:`DistCrossEntropy` module), as upstream does.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from ..distill.sharding import shard_range
from ..distill.collectives import all_gather_no_grad, all_gather_with_grad, world_info

__all__ = ["MarginSoftmax", "PartialFC", "DistCrossEntropy", "DistCrossEntropyFunction"]


class MarginSoftmax(nn.Module):
    """CombinedMarginLoss(s, m1, m2, m3) for the two settings arcface_torch uses: CosFace (1, 0, m3) subtracts m3
    from the target cosine; ArcFace (1, m2, 0) replaces it by cos(arccos(x) + m2) with a straight-through
    gradient (upstream edits the logits under no_grad). Then everything is multiplied by s. Labels: N x 1, -1 for
    rows whose class is not on this rank. The input is not modified."""

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.0, m3: float = 0.35) -> None:
        super().__init__()
        if m1 != 1.0 or (m2 != 0.0 and m3 != 0.0) or (m2 == 0.0 and m3 <= 0.0):
            raise ValueError(f"margin_list {(m1, m2, m3)}: the CPU host supports CosFace (1.0, 0.0, m3 > 0) and "
                             f"ArcFace (1.0, m2, 0.0)")
        self.s, self.m2, self.m3 = float(s), float(m2), float(m3)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = torch.where(labels.view(-1) != -1)[0]
        cols = labels.view(-1)[rows]
        target = logits[rows, cols]
        if self.m3 > 0:
            new_target = target - self.m3
        else:
            with torch.no_grad():
                shifted = torch.cos(torch.arccos(target) + self.m2)
            new_target = target + (shifted - target).detach()
        return logits.index_put((rows, cols), new_target) * self.s


class DistCrossEntropyFunction(torch.autograd.Function):
    """Mean over the global batch of -log softmax_target, the softmax over the classes of all ranks.

    Like upstream's, it turns its input into the probabilities IN PLACE (the hooks' logit observer must hand it
    a copy: this keeps the host as strict as arcface_torch)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, world = world_info()
        m = logits.max(dim=1, keepdim=True)[0]
        if world > 1:
            dist.all_reduce(m, dist.ReduceOp.MAX)
        p = logits.sub_(m).exp_()
        total = p.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(total, dist.ReduceOp.SUM)
        p.div_(total)
        rows = torch.where(labels.view(-1) != -1)[0]
        target = torch.zeros(logits.shape[0], 1, dtype=logits.dtype)
        target[rows] = p[rows].gather(1, labels[rows].view(-1, 1))
        if world > 1:
            dist.all_reduce(target, dist.ReduceOp.SUM)
        ctx.save_for_backward(p, rows, labels)
        return -target.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        p, rows, labels = ctx.saved_tensors
        g = p.clone()
        g[rows, labels[rows].view(-1)] -= 1.0
        return g * (grad / p.shape[0]), None


class DistCrossEntropy(nn.Module):
    """Upstream's ``DistCrossEntropy`` module (partial FC's ``dist_cross_entropy`` attribute):
    ``forward(logits, labels)`` applies :class:`DistCrossEntropyFunction` (in place on ``logits``)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return DistCrossEntropyFunction.apply(logits, labels)


class PartialFC(nn.Module):
    """Model-parallel margin-softmax classifier (PartialFC_V2 semantics, CPU). ``forward(emb, labels) -> loss``."""

    def __init__(self, margin_loss: Callable, embedding_size: int, num_classes: int, sample_rate: float = 1.0) -> None:
        super().__init__()
        self.rank, self.world_size = world_info()
        self.embedding_size, self.num_classes, self.sample_rate = embedding_size, num_classes, float(sample_rate)
        self.class_start, self.num_local = shard_range(num_classes, self.world_size, self.rank)
        self.num_sample = int(self.sample_rate * self.num_local)
        self.weight = nn.Parameter(torch.normal(0, 0.01, (self.num_local, embedding_size)))
        self.margin_softmax = margin_loss
        self.dist_cross_entropy = DistCrossEntropy()  # as upstream (no parameters: the state_dict is unchanged)
        self.weight_index = torch.arange(self.num_local)

    def sample(self, labels: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """Keep the positive centres and random others (num_sample in all); remap the labels in place."""
        with torch.no_grad():
            pos_classes = torch.unique(labels[positive], sorted=True)
            if self.num_sample >= pos_classes.numel():
                perm = torch.rand(self.num_local)
                perm[pos_classes] = 2.0
                index = torch.topk(perm, k=self.num_sample)[1].sort()[0]
            else:
                index = pos_classes
            self.weight_index = index
            labels[positive] = torch.searchsorted(index, labels[positive])
        return self.weight[index]

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        embeddings = all_gather_with_grad(local_embeddings, "partial FC embeddings")
        labels = all_gather_no_grad(local_labels.view(-1).long(), "partial FC labels").clone().view(-1, 1)
        positive = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        labels[~positive] = -1
        labels[positive] -= self.class_start
        weight = self.sample(labels, positive) if self.sample_rate < 1 else self.weight
        logits = F.linear(F.normalize(embeddings), F.normalize(weight)).clamp(-1, 1)
        logits = self.margin_softmax(logits, labels)
        return self.dist_cross_entropy(logits, labels)

