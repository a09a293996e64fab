"""The teacher's classifier for partial FC: its ``checkpoint_gpu_*.pt`` shards (saved by any number of ranks)
re-sliced to this run's class shards, and the student's and teacher's margin logits of a step (HKD, ProxylessKD).

What it knows of upstream (commit 0159b24d): ``PartialFC_V2`` has ``margin_softmax`` (the CombinedMarginLoss
callable, given the clamped cosine logits N_global x C_local and the labels, -1 outside this rank's classes),
``weight`` (C_local x D), ``class_start``, ``num_local``, ``sample_rate`` and, with ``sample_rate < 1``,
``weight_index`` (the kept classes of the step); ``DistCrossEntropy`` overwrites its input in place;
``checkpoint_gpu_{rank}.pt`` holds ``state_dict_softmax_fc`` = {"weight": C_r x D}.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...distill.checkpoint import safe_load
from ...distill.collectives import all_gather_no_grad
from ...infra.errors import UserError

__all__ = ["ClassifierError", "find_classifier_shards", "load_classifier_rows", "PartialFCLogits"]

_SHARD_NAME = re.compile(r"^checkpoint_gpu_(\d+)\.pt$")


class ClassifierError(UserError, ValueError):
    """The teacher's classifier shards are missing, inconsistent or do not add up to ``num_classes``."""


def find_classifier_shards(source: Union[str, Sequence[str]]) -> List[Path]:
    """The shard files in rank order: a folder's ``checkpoint_gpu_{0..W-1}.pt``, an explicit list, or one file."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
    elif Path(source).is_dir():
        found = {int(m.group(1)): p for p in Path(source).iterdir() if (m := _SHARD_NAME.match(p.name))}
        if not found:
            raise ClassifierError(f"config.distill.teacher.classifier: no checkpoint_gpu_*.pt in {source!r}")
        missing = [i for i in range(max(found) + 1) if i not in found]
        if missing:
            raise ClassifierError(f"config.distill.teacher.classifier: {source!r} lacks the shard(s) "
                                  f"{', '.join(f'checkpoint_gpu_{i}.pt' for i in missing)}")
        paths = [found[i] for i in sorted(found)]
    else:
        paths = [Path(source)]
    for p in paths:
        if not p.is_file():
            raise ClassifierError(f"config.distill.teacher.classifier: shard file not found: {str(p)!r}")
    return paths


def _shard_weight(path: Path) -> torch.Tensor:
    obj = safe_load(path, "teacher classifier shard", mmap=True)
    if isinstance(obj, dict) and "state_dict_softmax_fc" in obj:
        obj = obj["state_dict_softmax_fc"]
    if isinstance(obj, dict) and "weight" in obj:
        obj = obj["weight"]
    if not isinstance(obj, torch.Tensor) or obj.dim() != 2:
        raise ClassifierError(f"teacher classifier shard {str(path)!r}: expected an arcface_torch checkpoint with "
                              f"state_dict_softmax_fc.weight (C_r x D), got "
                              f"{tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__}")
    return obj


def load_classifier_rows(source: Union[str, Sequence[str]], num_classes: int, start: int,
                         count: int) -> torch.Tensor:
    """Rows ``[start, start + count)`` of the teacher's full classifier (num_classes x D), read from its shards
    (saved by any number of ranks) whose rows must add up to ``num_classes``."""
    paths = find_classifier_shards(source)
    shards = [_shard_weight(p) for p in paths]
    dims = {w.shape[1] for w in shards}
    if len(dims) != 1:
        raise ClassifierError(f"teacher classifier shards disagree on the embedding size: "
                              f"{[(str(p), tuple(w.shape)) for p, w in zip(paths, shards)]}")
    total = sum(w.shape[0] for w in shards)
    if total != num_classes:
        raise ClassifierError(f"teacher classifier shards add up to {total} classes "
                              f"({' + '.join(str(w.shape[0]) for w in shards)} in {len(paths)} shard(s)) but "
                              f"config.num_classes is {num_classes}")
    out, offset = [], 0
    for w in shards:
        lo, hi = max(start, offset), min(start + count, offset + w.shape[0])
        if lo < hi:
            out.append(w[lo - offset:hi - offset].float().clone())
        offset += w.shape[0]
    return torch.cat(out) if out else shards[0].new_zeros((0, shards[0].shape[1])).float()


class _MarginObserver(nn.Module):
    """Stands in for partial FC's ``margin_softmax``: calls it, keeps its output for the logit heads and gives
    partial FC a copy (DistCrossEntropy overwrites its input in place)."""

    def __init__(self, original: Callable, owner: "PartialFCLogits") -> None:
        super().__init__()
        object.__setattr__(self, "original", original)  # not a submodule: partial FC's state_dict is unchanged
        object.__setattr__(self, "owner", owner)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.original(logits, labels)
        self.owner.observed = (out, labels.clone())
        return out.clone()


class PartialFCLogits:
    """The student's margin logits of a step (observed) and the teacher's for the same rows and classes.

    Teacher logits: the teacher's embeddings of the GLOBAL batch (all-gathered) against this rank's slice of the
    teacher's classifier (the classes partial FC sampled this step when ``sample_rate < 1``), clamped to [-1, 1],
    then the same ``margin_softmax`` (margin and scale) with the same labels."""

    def __init__(self, partial_fc: nn.Module, teacher_weight: torch.Tensor, world_size: int) -> None:
        self.partial_fc, self.world_size = partial_fc, world_size
        self.teacher_weight = teacher_weight
        self.original = partial_fc.margin_softmax
        self.observed: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        partial_fc.margin_softmax = _MarginObserver(self.original, self)

    @torch.no_grad()
    def _teacher_logits(self, teacher_embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        teacher_embeddings = all_gather_no_grad(teacher_embeddings, "teacher embeddings")
        weight = self.teacher_weight
        if self.partial_fc.sample_rate < 1:
            weight = weight[self.partial_fc.weight_index]
        dtype = torch.promote_types(teacher_embeddings.dtype, torch.float32)  # float64 runs stay float64
        logits = F.linear(F.normalize(teacher_embeddings.to(dtype)), F.normalize(weight.to(dtype))).clamp(-1, 1)
        return self.original(logits, labels)

    def pair(self, teacher_embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.observed is None:
            raise RuntimeError("partial FC did not call margin_softmax in this step: call hooks.step right after "
                               "`loss = module_partial_fc(local_embeddings, local_labels)`")
        student, labels = self.observed
        self.observed = None
        if student.shape[0] != teacher_embeddings.shape[0] * self.world_size:
            raise ValueError(f"student logits have {student.shape[0]} rows, expected {self.world_size} x "
                             f"{teacher_embeddings.shape[0]} (the global batch)")
        return student, self._teacher_logits(teacher_embeddings, labels.clone()).detach()

    def close(self) -> None:
        self.partial_fc.margin_softmax = self.original
