"""Base classes of the distillation heads: input guards, then the subclass's math.

A head is an ``nn.Module`` whose ``forward`` validates its inputs (shape, dtype, emptiness, finiteness) with
errors that name the tensor and its shape, then calls ``compute_loss``. Heads know only tensors.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["EmbeddingHead", "LogitHead", "check_matrix", "zero_loss"]


def check_matrix(x: torch.Tensor, name: str, *, min_rows: int = 1) -> None:
    """Raise a clear error unless ``x`` is a finite floating-point 2-D tensor with at least ``min_rows`` rows."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (N x D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype} with shape {tuple(x.shape)}")
    if x.shape[0] < min_rows or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)} (need at least {min_rows} row(s) and 1 column)")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s) (nan or inf) in a tensor of shape {tuple(x.shape)}")


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar zero that stays attached to the graph of ``tensors`` (backward and DDP still see them)."""
    return sum((t.sum() * 0.0 for t in tensors), torch.zeros((), dtype=tensors[0].dtype, device=tensors[0].device))


class _Head(nn.Module):
    """What every head shares: its repr lists the parameters named in ``self._param_names``."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in getattr(self, "_param_names", ()))


class EmbeddingHead(_Head):
    """A head called as ``head(student=S, teacher=T)`` with N x D_s and N x D_t embeddings.

    Subclasses implement ``compute_loss(student, teacher)``; set ``same_dim = True`` when D_s must equal D_t.
    """

    consumes = "embeddings"
    paper = ""
    same_dim = False

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_matrix(student, "student")
        check_matrix(teacher, "teacher")
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"student and teacher must have the same batch size: student {tuple(student.shape)}, "
                             f"teacher {tuple(teacher.shape)}")
        if self.same_dim and student.shape[1] != teacher.shape[1]:
            raise ValueError(f"head {self.name!r} needs equal embedding sizes: student {tuple(student.shape)}, "
                             f"teacher {tuple(teacher.shape)}; use a relational head or a projection")
        if student.dtype != teacher.dtype:
            teacher = teacher.to(student.dtype)
        return self.compute_loss(student, teacher.detach())

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError



class LogitHead(_Head):
    """A head called as ``head(student_logits=..., teacher_logits=...)`` with N x C logits over the same classes."""

    consumes = "logits"
    paper = ""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        check_matrix(student_logits, "student_logits")
        check_matrix(teacher_logits, "teacher_logits")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student_logits and teacher_logits must have the same shape: "
                             f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
        if student_logits.dtype != teacher_logits.dtype:
            teacher_logits = teacher_logits.to(student_logits.dtype)
        return self.compute_loss(student_logits, teacher_logits.detach())

    def compute_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

