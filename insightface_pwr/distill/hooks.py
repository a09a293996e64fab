"""DistillHooks: what the training loop calls to add distillation. Generic: tensors and modules only.

The patched arcface_torch ``train_v2.py`` (and the CPU host, ``insightface_pwr.host``) call, in this order
(the contract in ``insightface_pwr/arcface.py``, which builds the hooks)::

    lr_scheduler = hooks.lr_scheduler(lr_scheduler)           # replaced when the recipe has lr_schedule
    start_epoch, global_step = hooks.resume(start_epoch, global_step)
    for each step:
        loss = hooks.step(global_step, img, local_embeddings, local_labels, loss)   # before backward
        hooks.log(global_step, summary_writer)                # in the no_grad logging block
    hooks.save(epoch, global_step)                            # BEFORE the loop's own checkpoint_gpu_{rank}.pt
    hooks.end()

``step`` returns ``classification_weight * loss + sum_k weight_k * head_k``: embedding heads see this rank's
local batch (student embeddings N x D_s, teacher embeddings N x D_t); logit heads see the global batch's logits
over this rank's classes (from ``logits.pair``). ``log`` writes the mean of each term over the last ``frequent``
steps and over the ranks (one all_reduce every ``frequent`` steps). ``save`` writes the heads' state, the step and
the RNG states (torch, CUDA, numpy, Python) and the run's identity to ``<output>/distill_gpu_{rank}.pt``
atomically, keeping the previous version; ``resume`` restores the version whose ``global_step`` equals the one the
loop resumed from, and refuses a state written by another run (``run_identity``: the recipe's identity, set by
whoever builds the hooks, :func:`~insightface_pwr.distill.checkpoint.run_identity`; else the hooks' own: formula,
weights and heads), naming the keys that differ.

One training per output folder: rank 0's hooks with a teacher lock ``<output>`` when they are built (unless this
process holds the lock already, as the CPU host does), and ``end`` drops that lock; a second training on the folder
is refused.

With ``teacher=None`` (a recipe with ``lr_schedule`` and no ``distill`` section) the hooks only replace the lr
scheduler: ``step`` returns the loss unchanged, and ``log``, ``save`` and ``resume`` do nothing.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import distributed as dist
from torch import nn

from ..heads.base import check_finite
from .checkpoint import (CheckpointError, check_identity, load_candidates, lock_output, locked_here, rng_state,
                         run_identity, save_rotating, set_rng_state, unlock_output)

__all__ = ["DistillHooks", "HeadTerm", "LogitSource", "STATE_FORMAT"]

logger = logging.getLogger("insightface_pwr")
STATE_FORMAT = "insightface_pwr.distill/1"


class LogitSource(Protocol):
    """Gives the student's and the teacher's logits of the current step (same rows, same classes)."""

    def pair(self, teacher_embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class HeadTerm:
    """One weighted term of the combined loss: ``module`` is what the step calls (the head, or the head in a
    distribution wrapper of :mod:`insightface_pwr.distill.gather`), ``head`` the head itself (its state)."""

    name: str
    weight: float
    consumes: str  # "embeddings" | "logits"
    module: nn.Module
    head: nn.Module
    uses_labels: bool = False

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        if self.consumes == "logits":
            return self.module(student_logits=student, teacher_logits=teacher)
        if self.uses_labels:
            return self.module(student=student, teacher=teacher, labels=labels)
        return self.module(student=student, teacher=teacher)


def _dist_on(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


class DistillHooks:
    """The distillation side of a training loop (see the module docstring for the call order)."""

    def __init__(self, *, teacher: Optional[Callable[[torch.Tensor], torch.Tensor]], terms: List[HeadTerm],
                 classification_weight: float, rank: int, world_size: int, output: str, resume: bool,
                 frequent: int, formula: str, input_size: Tuple[int, int],
                 logits: Optional[LogitSource] = None,
                 make_lr_scheduler: Optional[Callable[[Any], Any]] = None,
                 on_end: Sequence[Callable[[], None]] = ()) -> None:
        self.teacher, self.terms, self.classification_weight = teacher, terms, float(classification_weight)
        self.rank, self.world_size, self.output = rank, world_size, Path(output)
        self.resume_enabled, self.frequent, self.formula = resume, frequent, formula
        self.input_size, self.logits, self._make_lr_scheduler = tuple(input_size), logits, make_lr_scheduler
        self._on_end = list(on_end)  # what the build installed and end() undoes (e.g. AdaDistill's partial FC)
        self._inputs_checked = False  # the first step's inputs are checked for NaN/inf once (one host read)
        all_names = [t.name for t in terms]  # a head used twice is logged as name_<index>
        self.names = (["classification"]
                      + [n if all_names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(all_names)] + ["total"])
        self._sums: Optional[torch.Tensor] = None  # on the loss's device: no host sync per step (NCCL needs CUDA)
        self._count = 0
        self.last: Dict[str, float] = {}
        if teacher is None and (terms or logits is not None):
            raise ValueError("DistillHooks: heads and logits need a teacher")
        self.run_identity: Optional[Dict[str, Any]] = None  # the recipe's (run_identity(cfg)), when the builder sets it
        # the lock guards the files the hooks write: none without a teacher (an lr_schedule-only recipe)
        self._owns_lock = rank == 0 and teacher is not None and not locked_here(self.output)
        if self._owns_lock:
            lock_output(self.output)
        if rank == 0 and teacher is not None:
            logger.info("distillation: %s", formula)

    # ---------------------------------------------------------------- parameters and schedule
    def parameters(self) -> List[nn.Parameter]:
        """The trainable parameters of the heads (possibly none)."""
        return [p for t in self.terms for p in t.head.parameters() if p.requires_grad]

    def lr_scheduler(self, upstream: Any) -> Any:
        """The loop's scheduler, or the recipe's ``lr_schedule`` replacement built on the same optimizer."""
        return upstream if self._make_lr_scheduler is None else self._make_lr_scheduler(upstream)

    # ---------------------------------------------------------------- the step
    def step(self, global_step: int, img: torch.Tensor, local_embeddings: torch.Tensor,
             local_labels: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """The combined loss ``classification_weight * loss + sum_k weight_k * head_k`` (records each term);
        without a teacher, ``loss`` itself."""
        if self.teacher is None:
            return loss
        if tuple(img.shape[-2:]) != self.input_size:
            raise ValueError(f"the images are {tuple(img.shape[-2:])} (H, W) but config.distill.teacher.input_size "
                             f"is {self.input_size}; set it to the training image size")
        if not self.terms:  # e.g. ProxylessKD alone: the teacher lives in partial FC's weight, not called per step
            total = self.classification_weight * loss
            self._record(torch.stack([loss.detach().float(), total.detach().float()]).double())
            return total
        teacher_embeddings = self.teacher(img)
        if teacher_embeddings.shape[0] != local_embeddings.shape[0]:
            raise ValueError(f"teacher gave {teacher_embeddings.shape[0]} embeddings for a batch of "
                             f"{local_embeddings.shape[0]} images (shape {tuple(teacher_embeddings.shape)})")
        if not self._inputs_checked:  # once, not every step: a later non-finite value under fp16 is GradScaler's
            self._inputs_checked = True
            check_finite(local_embeddings.detach(), "the student's embeddings (first step)")
            check_finite(teacher_embeddings.detach(), "the teacher's embeddings (first step)")
        total = self.classification_weight * loss
        values = [loss.detach().float()]
        pair = None
        for term in self.terms:
            if term.consumes == "logits":
                if pair is None:
                    pair = self.logits.pair(teacher_embeddings)
                value = term(pair[0], pair[1], None)
            else:
                value = term(local_embeddings, teacher_embeddings, local_labels.view(-1))
            total = total + term.weight * value
            values.append(value.detach().float())
        values.append(total.detach().float())
        self._record(torch.stack(values).double())
        return total

    def _record(self, step_values: torch.Tensor) -> None:
        self._sums = step_values if self._sums is None else self._sums + step_values
        self._count += 1

    # ---------------------------------------------------------------- logging
    def log(self, global_step: int, summary_writer: Any = None) -> None:
        """Every ``frequent`` steps: the mean of each term over those steps and over the ranks (all ranks call)."""
        if global_step <= 0 or global_step % self.frequent != 0 or self._sums is None:
            return
        sums = torch.cat([self._sums, self._sums.new_tensor([float(self._count)])])
        if _dist_on(self.world_size):
            dist.all_reduce(sums)
        means = (sums[:-1] / sums[-1]).tolist()
        self.last = dict(zip(self.names, means))
        self._sums, self._count = None, 0
        if self.rank == 0:
            logger.info("distill step %d   %s", global_step,
                        "   ".join(f"{k} {v:.6f}" for k, v in self.last.items()))
            if summary_writer is not None:
                for k, v in self.last.items():
                    summary_writer.add_scalar(f"distill/{k}", v, global_step)

    # ---------------------------------------------------------------- checkpoint and resume
    @property
    def state_path(self) -> Path:
        return self.output / f"distill_gpu_{self.rank}.pt"

    @property
    def identity(self) -> Dict[str, Any]:
        """The run's identity: the recipe's when set (``run_identity``), else the hooks' own configuration."""
        if self.run_identity is not None:
            return self.run_identity
        own: Dict[str, Any] = {"formula": self.formula, "classification_weight": self.classification_weight,
                               "input_size": self.input_size}
        for name, term in zip(self.names[1:], self.terms):
            own[name] = {"weight": term.weight, "consumes": term.consumes, "head": repr(term.head)}
        return dict(run_identity(own, "hooks"), kind="hooks")

    def state_dict(self, epoch: int, global_step: int) -> Dict[str, Any]:
        return {"format": STATE_FORMAT, "epoch": int(epoch), "global_step": int(global_step),
                "world_size": self.world_size, "rank": self.rank, "heads": [t.head.state_dict() for t in self.terms],
                "rng": rng_state(), "run_identity": self.identity}

    def save(self, epoch: int, global_step: int) -> None:
        """Write this rank's distillation state atomically (the previous version is kept as ``.prev``)."""
        if self.teacher is None:  # nothing to keep: the lr scheduler's state is in the loop's own checkpoint
            return
        save_rotating(self.state_dict(epoch, global_step), self.state_path)

    def resume(self, start_epoch: int, global_step: int) -> Tuple[int, int]:
        """When ``cfg.resume``: restore the saved state of step ``global_step``; returns the pair unchanged."""
        if not self.resume_enabled or self.teacher is None:
            return start_epoch, global_step
        candidates = load_candidates(self.state_path, "distillation state")
        if not candidates:
            if self.parameters():
                raise CheckpointError(f"resume: {str(self.state_path)!r} not found, and the heads have "
                                      f"parameters that only it holds")
            logger.warning("resume: no %s; the heads have no state, continuing", self.state_path)
            return start_epoch, global_step
        for state in candidates:
            if state.get("format") != STATE_FORMAT:
                raise CheckpointError(f"{str(self.state_path)!r} is not a distillation state "
                                      f"(format {state.get('format')!r}, expected {STATE_FORMAT!r})")
            saved = state.get("run_identity")
            if saved is not None and saved.get("kind") == self.identity.get("kind"):  # a recipe's vs the hooks' own
                check_identity(saved, self.identity, self.state_path)
            if state["world_size"] != self.world_size:
                raise CheckpointError(f"resume: {str(self.state_path.resolve())!r} was saved by {state['world_size']} "
                                      f"process(es); this run has {self.world_size}: resume with that many")
        match = [s for s in candidates if s["global_step"] == global_step]
        if not match:
            raise CheckpointError(
                f"resume from step {global_step}: {str(self.state_path)!r} holds steps "
                f"{[s['global_step'] for s in candidates]} only. hooks.save must run BEFORE the loop's own "
                f"checkpoint is written, so that a kill between the two leaves a matching pair")
        state = match[0]
        if state["world_size"] != self.world_size or len(state["heads"]) != len(self.terms):
            raise CheckpointError(f"{str(self.state_path)!r} was written by {state['world_size']} process(es) with "
                                  f"{len(state['heads'])} head(s); this run has {self.world_size} and "
                                  f"{len(self.terms)}")
        for term, sd in zip(self.terms, state["heads"]):
            term.head.load_state_dict(sd)
        if "rng" in state:
            set_rng_state(state["rng"])
        else:  # a state of an older version: torch's RNGs only
            torch.set_rng_state(state["rng_cpu"])
            if "rng_cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state(state["rng_cuda"])
        if self.rank == 0:
            logger.info("resumed distillation state of epoch %d, step %d", state["epoch"], global_step)
        return start_epoch, global_step

    def end(self) -> None:
        """Undo what the build installed (partial FC's margin_softmax observer)."""
        if self.logits is not None:
            self.logits.close()
        for undo in self._on_end:
            undo()
        self._on_end = []
        if self._owns_lock:
            self._owns_lock = False
            unlock_output(self.output)
