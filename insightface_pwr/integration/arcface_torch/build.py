"""The one module that knows arcface_torch: ``build_hooks`` turns a recipe into :class:`DistillHooks`.

The patched ``train_v2.py`` calls (contract: the package's HOOKS_CONTRACT; the CPU host calls the same)::

    distill_hooks = build_hooks(cfg, backbone=backbone, partial_fc=module_partial_fc, optimizer=opt,
                                rank=rank, world_size=world_size, local_rank=local_rank)

(only when ``cfg.distill`` or ``cfg.lr_schedule`` is set: a config with neither never reaches this module; one with
``lr_schedule`` alone gets hooks that only replace the lr scheduler).

What it knows of upstream (commit 0159b24d):
- ``backbones.get_model(name, dropout=0.0, fp16=..., num_features=D)`` builds a backbone by name (imported lazily,
  only when a state_dict teacher needs it and no ``model_factory`` is given);
- ``PartialFC_V2`` attributes: ``margin_softmax`` (the CombinedMarginLoss callable, given the clamped cosine
  logits N_global x C_local and the labels, -1 outside this rank's classes), ``weight`` (C_local x D),
  ``class_start``, ``num_local``, ``sample_rate`` and, with ``sample_rate < 1``, ``weight_index`` (the kept
  classes of the step); ``DistCrossEntropy`` overwrites its input in place;
- class sharding: rank r of W holds C // W + (r < C % W) classes starting at C // W * r + min(r, C % W);
- ``checkpoint_gpu_{rank}.pt`` = {epoch, global_step, state_dict_backbone, state_dict_softmax_fc
  ({"weight": C_r x D}), state_optimizer, state_lr_scheduler}; ``model.pt`` = the backbone's state_dict;
- the optimizer has the backbone group first and partial FC's group LAST: head parameters go in between.

Classifier-replacing methods: ``distill.method="proxylesskd"`` (alias ``inherit_classifier``) copies the
teacher's classifier rows into partial FC's weight and freezes it; the head ``adadistill`` makes partial FC's
weight its class centres (``centres.py``: updated under no_grad from the global batch, out of the optimizer,
saved and resumed with upstream's checkpoint) and computes the loss in place of partial FC's forward.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from ...distill.hooks import DistillHooks, HeadTerm
from ...distill.lr_schedules import PolynomialWarmupLR, StepEpochLR
from ...distill.formula import combined_loss_formula
from ...distill.recipe import (
    RecipeError,
    lr_schedule_of,
    validate_distill,
)
from ...distill.checkpoint import run_identity
from ...distill.gather import average_gradients, distribute
from ...distill.sharding import shard_range
from ...distill.teachers import TeacherError, load_teacher
from ...models.weights import CheckpointError, WeightsError, extract_backbone_state, load_weights_strict, safe_load
from ...heads.registry import create_head, get_head_spec
from .centres import install_adadistill
from .classifier import ClassifierError, PartialFCLogits, load_classifier_rows
from .upstream import upstream_get_model

__all__ = ["build_hooks"]

logger = logging.getLogger("insightface_pwr")


def _probe_teacher(teacher: Callable[[torch.Tensor], torch.Tensor], shape: Tuple[int, ...],
                   device: torch.device) -> int:
    """The teacher's embedding size, from one batch of zeros of ``shape`` (fails before training, not at step 1)."""
    try:
        out = teacher(torch.zeros(*shape, device=device))
    except Exception as e:  # noqa: BLE001  (torch, TorchScript and onnxruntime raise different types)
        raise TeacherError(f"the teacher fails on a batch of shape {shape} (N, C, H, W): {type(e).__name__}: {e}; "
                           f"check config.distill.teacher.input_size") from e
    if out.dim() != 2 or out.shape[0] != shape[0]:
        raise TeacherError(f"the teacher must return N x D embeddings, got shape {tuple(out.shape)} for a batch of "
                           f"{shape[0]}")
    return int(out.shape[1])


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module


def _insert_before_last_group(optimizer: torch.optim.Optimizer, params: List[nn.Parameter]) -> None:
    optimizer.add_param_group({"params": params})
    groups = optimizer.param_groups
    new = groups.pop()
    groups.insert(len(groups) - 1, new)


def _make_lr_scheduler_factory(cfg: Any, optimizer: torch.optim.Optimizer,
                                rank: int = 0) -> Optional[Callable[[Any], Any]]:
    sched = lr_schedule_of(cfg)  # config.lr_schedule, or its alias config.distill.lr_schedule
    if sched is None:
        return None
    if rank == 0:
        what = {"step": lambda: (f"lr x {sched.factor:g} every {sched.every_epochs} epoch(s)"
                                 + (f" after {sched.warmup_epochs} warmup epoch(s)" if sched.warmup_epochs else "")),
                "multistep": lambda: f"lr x {sched.factor:g} at epochs {list(sched.milestones)}",
                "poly": lambda: f"polynomial decay, power {sched.power:g}"}[sched.kind]()
        logger.info("lr schedule: %s (replaces arcface_torch's)", what)

    def make(_upstream: Any) -> Any:
        steps_per_epoch = cfg.num_image // cfg.total_batch_size
        if sched.kind == "multistep":  # stepped per iteration, like every schedule here
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, [e * steps_per_epoch for e in sched.milestones],
                                                        gamma=sched.factor)
        if sched.kind == "step":
            return StepEpochLR(optimizer, steps_per_epoch, sched.every_epochs, sched.factor,
                               sched.warmup_epochs * steps_per_epoch)
        return PolynomialWarmupLR(optimizer, cfg.warmup_step, cfg.total_step, sched.power)
    return make


def _check_shards(cfg: Any, partial_fc: nn.Module, world_size: int, rank: int) -> Tuple[int, int]:
    start, count = shard_range(cfg.num_classes, world_size, rank)
    if (start, count) != (partial_fc.class_start, partial_fc.num_local):
        raise ClassifierError(f"partial FC holds classes [{partial_fc.class_start}, +{partial_fc.num_local}) "
                              f"on rank {rank}, expected [{start}, +{count})")
    return start, count


def build_hooks(cfg: Any, backbone: nn.Module, partial_fc: nn.Module, optimizer: torch.optim.Optimizer,
                rank: int, world_size: int, local_rank: int, *,
                model_factory: Optional[Callable[..., nn.Module]] = None) -> DistillHooks:
    """Validate ``cfg.distill``, load the teacher (+ classifier), ``student_init`` and the heads; wire them in.

    ``model_factory`` (optional) builds backbones by name; default: upstream's ``backbones.get_model``.
    Every check runs here, before the first step: a bad recipe fails before any training.

    A config without ``distill`` (only ``lr_schedule``) gets hooks with no teacher and no heads: they replace the lr
    scheduler, and ``step`` returns the loss unchanged (``save``/``resume``/``log`` do nothing)."""
    make_lr_scheduler = _make_lr_scheduler_factory(cfg, optimizer, rank)  # validates the lr schedule first
    if cfg.get("distill") is None:
        return DistillHooks(teacher=None, terms=[], classification_weight=1.0, rank=rank, world_size=world_size,
                            output=cfg.output, resume=bool(cfg.get("resume", False)), frequent=cfg.frequent,
                            formula="", input_size=(0, 0), make_lr_scheduler=make_lr_scheduler)
    cfg.distill = d = validate_distill(cfg.distill)  # a DistillSpec already when the recipe came from load_recipe
    device = next(backbone.parameters()).device
    factory = model_factory or upstream_get_model()
    spec = d.teacher.as_dict()
    if spec["embedding_size"] is None:  # a state_dict teacher is built at the student's size unless told otherwise
        spec["embedding_size"] = cfg.embedding_size
    if d.teacher.cache is not None:  # look embeddings up by record key (insightface_pwr.distill.teacher_cache)
        if cfg.get("data_backend") != "insightface_pwr":
            raise RecipeError("config.distill.teacher.cache needs a loader that tells which records a batch holds: "
                              "set config.data_backend = 'insightface_pwr' (upstream's MXNet and DALI loaders "
                              "cannot), or train on the CPU host")
        from ...distill.teacher_cache import open_cached_teacher
        teacher = open_cached_teacher(d.teacher, cfg.get("rec"))
    else:
        teacher = load_teacher(spec, factory, device)

    h, w = d.teacher.input_size
    teacher_dim = getattr(teacher, "embedding_size", None) or _probe_teacher(teacher, (2, 3, h, w), device)
    if d.teacher.embedding_size is not None and d.teacher.embedding_size != teacher_dim:
        raise TeacherError(f"config.distill.teacher.embedding_size is {d.teacher.embedding_size} but the teacher "
                           f"gives {teacher_dim}-d embeddings")
    student_dim = cfg.embedding_size

    if d.student_init is not None:
        path = Path(d.student_init)
        if not path.is_file():
            raise TeacherError(f"config.distill.student_init: file not found: {str(path)!r}")
        try:
            state = extract_backbone_state(safe_load(path, "config.distill.student_init"), path,
                                           "config.distill.student_init")
            load_weights_strict(_unwrap(backbone), state, f"config.distill.student_init {str(path)!r}")
        except (WeightsError, CheckpointError) as e:
            raise TeacherError(str(e)) from e

    terms: List[HeadTerm] = []
    bypass = None  # AdaDistill: partial FC's forward replaced (undone by hooks.end)
    for i, hd in enumerate(d.heads):
        spec = get_head_spec(hd.name)
        if spec.consumes == "embeddings" and getattr(spec.cls, "same_dim", False) and student_dim != teacher_dim:
            raise RecipeError(f"config.distill.heads[{i}] ({hd.name!r}) needs equal embedding sizes, but the student "
                              f"has config.embedding_size={student_dim} and the teacher {teacher_dim}; use a "
                              f"relational head (pwr, rkd_d, rkd_a, darkrank) or a teacher of the same size")
        if hd.name == "adadistill":  # the loss itself, over partial FC's class shards (centres.py)
            _check_shards(cfg, partial_fc, world_size, rank)
            try:
                module, bypass = install_adadistill(partial_fc, dict(hd.params), cfg.num_classes, student_dim,
                                                    f"config.distill.heads[{i}]")
            except ValueError as e:
                raise RecipeError(str(e)) from e
            terms.append(HeadTerm(hd.name, hd.weight, "embeddings", module, module, uses_labels=True))
            continue
        head = create_head(hd.name, **hd.params).to(device)
        try:
            module = distribute(head, spec.consumes, hd.gather, world_size)
        except TypeError as e:
            raise RecipeError(f"config.distill.heads[{i}]: {e}") from e
        terms.append(HeadTerm(hd.name, hd.weight, spec.consumes, module, head,
                              uses_labels=getattr(spec.cls, "uses_labels", False)))

    logits = None
    needs_logits = any(t.consumes == "logits" for t in terms)
    if needs_logits or d.inherit_classifier:
        start, count = _check_shards(cfg, partial_fc, world_size, rank)
        rows = load_classifier_rows(d.teacher.classifier, cfg.num_classes, start, count).to(device)
        if rows.shape[1] != teacher_dim:
            raise ClassifierError(f"the teacher classifier is {rows.shape[1]}-d but the teacher gives "
                                  f"{teacher_dim}-d embeddings")
        if d.inherit_classifier:
            if rows.shape[1] != student_dim:
                raise ClassifierError(f"inherit_classifier needs the teacher classifier's size ({rows.shape[1]}) to "
                                      f"equal config.embedding_size ({student_dim})")
            with torch.no_grad():
                partial_fc.weight.copy_(rows)
            partial_fc.weight.requires_grad_(False)
        if needs_logits:
            logits = PartialFCLogits(partial_fc, rows, world_size)

    hooks = DistillHooks(teacher=teacher, terms=terms, classification_weight=d.classification_weight, rank=rank,
                         world_size=world_size, output=cfg.output, resume=bool(cfg.get("resume", False)),
                         frequent=cfg.frequent, formula=combined_loss_formula(cfg), input_size=d.teacher.input_size,
                         logits=logits, make_lr_scheduler=make_lr_scheduler,
                         on_end=[bypass.close] if bypass is not None else [])
    hooks.run_identity = run_identity(cfg)  # resume refuses a state written by another recipe
    head_params = hooks.parameters()
    if head_params:
        _insert_before_last_group(optimizer, head_params)
        average_gradients(head_params, world_size)
    return hooks
