"""Base classes of the distillation heads: input guards, then the subclass's math.

A head is an ``nn.Module`` whose ``forward`` validates its inputs (shape, dtype, emptiness) with errors that name
the tensor and its shape, then calls ``compute_loss``. Heads know only tensors.

The guards read only host metadata (shapes, dtypes): no device synchronisation per step. Finiteness needs the
values (a device sync, and for HKD a pass over N x C logits), so it is checked only when debug checks are on
(``debug_checks()``, ``set_debug_checks(True)`` or ``INSIGHTFACE_PWR_DEBUG=1``); the training hooks check the
first step's inputs once. A non-finite value under fp16 autocast is GradScaler's to skip, as upstream does.

Dtypes: when the student and the teacher differ, both are promoted to the wider type (an fp32 teacher is never
cast down to an fp16 student: that would create ties in the teacher's ranking).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ["EmbeddingHead", "LogitHead", "check_matrix", "check_labels", "zero_loss", "debug_checks",
           "set_debug_checks", "debug_checks_enabled", "check_finite"]

_DEBUG = {"on": os.environ.get("INSIGHTFACE_PWR_DEBUG", "") not in ("", "0")}


def set_debug_checks(on: bool) -> None:
    """Turn the value checks (finiteness of every head input) on or off for this process."""
    _DEBUG["on"] = bool(on)


def debug_checks_enabled() -> bool:
    return _DEBUG["on"]


@contextlib.contextmanager
def debug_checks(on: bool = True) -> Iterator[None]:
    """Value checks on (or off) inside the block."""
    old = _DEBUG["on"]
    _DEBUG["on"] = bool(on)
    try:
        yield
    finally:
        _DEBUG["on"] = old


def check_finite(x: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` if ``x`` holds a NaN or an infinity (reads the values: a device sync)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s) (nan or inf) in a tensor of shape {tuple(x.shape)}")


def check_matrix(x: torch.Tensor, name: str, *, min_rows: int = 1) -> None:
    """Raise a clear error unless ``x`` is a floating-point 2-D tensor with at least ``min_rows`` rows (and finite,
    when debug checks are on)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (N x D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype} with shape {tuple(x.shape)}")
    if x.shape[0] < min_rows or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)} (need at least {min_rows} row(s) and 1 column)")
    if _DEBUG["on"]:
        check_finite(x, name)


def check_labels(labels: Optional[torch.Tensor], rows: int) -> torch.Tensor:
    """``labels`` must be an integer vector of ``rows`` class ids (shape only: no device sync)."""
    if labels is None:
        raise ValueError("labels are required by this head: call head(student=S, teacher=T, labels=y)")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"labels must be a vector of {rows} class ids (one per row), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype} with shape {tuple(labels.shape)}")
    return labels


def _promote(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in the wider of the two dtypes (differentiable for ``a``)."""
    if a.dtype == b.dtype:
        return a, b
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar zero that stays attached to the graph of ``tensors`` (backward and DDP still see them)."""
    return sum((t.sum() * 0.0 for t in tensors), torch.zeros((), dtype=tensors[0].dtype, device=tensors[0].device))


class _Head(nn.Module):
    """What every head shares: its repr lists the parameters named in ``self._param_names``."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in getattr(self, "_param_names", ()))


class EmbeddingHead(_Head):
    """A head called as ``head(student=S, teacher=T)`` with N x D_s and N x D_t embeddings (and ``labels=y``, N
    class ids, for a head with ``uses_labels = True``).

    Subclasses implement ``compute_loss(student, teacher)`` (``compute_loss(student, teacher, labels)`` when
    ``uses_labels``); set ``same_dim = True`` when D_s must equal D_t. A head whose loss is defined on the
    batch as a whole (relations between rows) sets ``relational = True``: on several ranks the gather wrapper
    can then rank the global batch.
    """

    consumes = "embeddings"
    paper = ""
    same_dim = False
    uses_labels = False
    relational = True

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_matrix(student, "student")
        check_matrix(teacher, "teacher")
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"student and teacher must have the same batch size: student {tuple(student.shape)}, "
                             f"teacher {tuple(teacher.shape)}")
        if self.same_dim and student.shape[1] != teacher.shape[1]:
            raise ValueError(f"head {self.name!r} needs equal embedding sizes: student {tuple(student.shape)}, "
                             f"teacher {tuple(teacher.shape)}; use a relational head or a projection")
        student, teacher = _promote(student, teacher.detach())
        if self.uses_labels:
            return self.compute_loss(student, teacher, check_labels(labels, student.shape[0]))
        if labels is not None:
            check_labels(labels, student.shape[0])
        return self.compute_loss(student, teacher)

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor,  # pragma: no cover
                     *args: torch.Tensor) -> torch.Tensor:
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
        student_logits, teacher_logits = _promote(student_logits, teacher_logits.detach())
        return self.compute_loss(student_logits, teacher_logits)

    def compute_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

