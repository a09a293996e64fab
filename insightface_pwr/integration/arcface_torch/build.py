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
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from ...infra.errors import UserError
from ...distill.checkpoint import safe_load
from ...distill.collectives import all_gather_no_grad
from ...distill.hooks import DistillHooks, HeadTerm
from ...distill.lr_schedules import PolynomialWarmupLR, StepEpochLR
from ...distill.recipe import RecipeError, combined_loss_formula, lr_schedule_of, validate_distill
from ...heads.registry import create_head, get_head_spec
from ...distill.sharded_kd import sharded_hkd
from ...distill.teachers import TeacherError, extract_backbone_state, load_teacher, load_weights_strict

__all__ = ["build_hooks", "shard_range", "find_classifier_shards", "load_classifier_rows", "PartialFCLogits",
           "ClassifierError"]

logger = logging.getLogger("insightface_pwr")
_SHARD_NAME = re.compile(r"^checkpoint_gpu_(\d+)\.pt$")


class ClassifierError(UserError, ValueError):
    """The teacher's classifier shards are missing, inconsistent or do not add up to ``num_classes``."""


def shard_range(num_classes: int, world_size: int, rank: int) -> Tuple[int, int]:
    """(class_start, num_local) of ``rank``, as partial FC shards the classes."""
    num_local = num_classes // world_size + int(rank < num_classes % world_size)
    return num_classes // world_size * rank + min(rank, num_classes % world_size), num_local


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
        logits = F.linear(F.normalize(teacher_embeddings.float()), F.normalize(weight)).clamp(-1, 1)
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


def _upstream_get_model() -> Optional[Callable[..., nn.Module]]:
    try:
        from backbones import get_model  # arcface_torch's folder is the working directory of train_v2.py
    except ImportError:
        return None
    return get_model


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


def _average_grads_over_ranks(params: List[nn.Parameter], world_size: int) -> None:
    """Heads are not in DDP: broadcast rank 0's initial values and average their gradients in backward."""
    for p in params:
        dist.broadcast(p.data, 0)
        p.register_hook(lambda g: _all_reduce_mean(g, world_size))


def _all_reduce_mean(g: torch.Tensor, world_size: int) -> torch.Tensor:
    g = g.clone()
    dist.all_reduce(g)
    return g / world_size


def _logit_fn(name: str, head: nn.Module, params: dict, world_size: int) -> Callable:
    if world_size == 1:
        return lambda s, t: head(student_logits=s, teacher_logits=t)
    if name == "hkd":
        full = get_head_spec(name).defaults()
        full.update(params)
        return lambda s, t: sharded_hkd(s, t, full["temperature"], full["t2_scale"])
    raise RecipeError(f"head {name!r} consumes logits, and with {world_size} processes partial FC shards the "
                      f"classes over ranks: only 'hkd' has a sharded (global softmax) implementation")


def _make_lr_scheduler_factory(cfg: Any, optimizer: torch.optim.Optimizer,
                                rank: int = 0) -> Optional[Callable[[Any], Any]]:
    sched = lr_schedule_of(cfg)  # config.lr_schedule, or its alias config.distill.lr_schedule
    if sched is None:
        return None
    if rank == 0:
        what = (f"lr x {sched.factor:g} every {sched.every_epochs} epoch(s)"
                + (f" after {sched.warmup_epochs} warmup epoch(s)" if sched.warmup_epochs else "")
                if sched.kind == "step" else f"polynomial decay, power {sched.power:g}")
        logger.info("lr schedule: %s (replaces arcface_torch's)", what)

    def make(_upstream: Any) -> Any:
        steps_per_epoch = cfg.num_image // cfg.total_batch_size
        if sched.kind == "step":
            return StepEpochLR(optimizer, steps_per_epoch, sched.every_epochs, sched.factor,
                               sched.warmup_epochs * steps_per_epoch)
        return PolynomialWarmupLR(optimizer, cfg.warmup_step, cfg.total_step, sched.power)
    return make


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
    cfg.distill = d = validate_distill(cfg.distill)
    device = next(backbone.parameters()).device
    factory = model_factory or _upstream_get_model()
    spec = dict(d.teacher)
    if spec["embedding_size"] is None:  # a state_dict teacher is built at the student's size unless told otherwise
        spec["embedding_size"] = cfg.embedding_size
    if d.teacher.cache is not None:  # look embeddings up by record key (insightface_pwr.distill.teacher_cache)
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
        state = extract_backbone_state(safe_load(path, "student_init"), path, "config.distill.student_init")
        load_weights_strict(_unwrap(backbone), state, f"config.distill.student_init {str(path)!r}")

    terms: List[HeadTerm] = []
    for i, hd in enumerate(d.heads):
        spec = get_head_spec(hd.name)
        if spec.consumes == "embeddings" and getattr(spec.cls, "same_dim", False) and student_dim != teacher_dim:
            raise RecipeError(f"config.distill.heads[{i}] ({hd.name!r}) needs equal embedding sizes, but the student "
                              f"has config.embedding_size={student_dim} and the teacher {teacher_dim}; use a "
                              f"relational head (pwr, rkd_d, rkd_a, darkrank) or a teacher of the same size")
        head = create_head(hd.name, **hd.params).to(device)
        fn = (_logit_fn(hd.name, head, dict(hd.params), world_size) if spec.consumes == "logits"
              else (lambda s, t, _h=head: _h(student=s, teacher=t)))
        terms.append(HeadTerm(hd.name, hd.weight, spec.consumes, fn, head))

    logits = None
    needs_logits = any(t.consumes == "logits" for t in terms)
    if needs_logits or d.inherit_classifier:
        start, count = shard_range(cfg.num_classes, world_size, rank)
        if (start, count) != (partial_fc.class_start, partial_fc.num_local):
            raise ClassifierError(f"partial FC holds classes [{partial_fc.class_start}, +{partial_fc.num_local}) "
                                  f"on rank {rank}, expected [{start}, +{count})")
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
                         logits=logits, make_lr_scheduler=make_lr_scheduler)
    head_params = hooks.parameters()
    if head_params:
        _insert_before_last_group(optimizer, head_params)
        if world_size > 1:
            _average_grads_over_ranks(head_params, world_size)
    return hooks


# ------------------------------------------------------------------ the opt-in MXNet-free data layer (data_backend)
def data_layer(cfg: Any) -> Tuple[Callable[..., Any], Callable[..., Any]]:
    """``(get_dataloader, CallBackVerification)`` for ``cfg.data_backend = "insightface_pwr"``.

    The patched train_v2.py uses them instead of upstream's ``dataset.get_dataloader`` and
    ``utils.utils_callbacks.CallBackVerification`` (same call signatures), so training needs neither mxnet nor
    torchvision: images come from :class:`insightface_pwr.data.FaceDataset` (``cfg.rec == "synthetic"``: the host's
    :class:`~insightface_pwr.host.data.SyntheticFaces`), the ``.bin`` files of ``cfg.val_targets`` from the data
    layer's safe loader and metrics (10-fold accuracy of flip-summed embeddings, as upstream reports)."""
    backend = cfg.get("data_backend")
    if backend != "insightface_pwr":
        raise RecipeError(f"config.data_backend must be 'insightface_pwr' (or absent for upstream's MXNet data "
                          f"layer), got {backend!r}")

    def get_dataloader(root_dir: str, local_rank: int, batch_size: int, dali: bool = False, dali_aug: bool = False,
                       seed: int = 2048, num_workers: int = 2) -> torch.utils.data.DataLoader:
        if dali:
            raise RecipeError("config.dali needs upstream's data layer: remove config.data_backend or config.dali")
        return _face_loader(cfg, root_dir, local_rank, batch_size, seed, num_workers)
    return get_dataloader, _BinVerification


class _DeviceLoader(torch.utils.data.DataLoader):
    """A DataLoader whose batches arrive on ``device`` (upstream's DataLoaderX also moves them to the GPU)."""

    def __init__(self, device: torch.device, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = device

    def __iter__(self):
        from ...distill.batch_keys import BATCH_KEYS
        for batch in super().__iter__():
            moved = [t.to(self.device, non_blocking=True) for t in batch[:2]]
            if len(batch) == 4:  # (image, label, key, flipped): publish the keys for a teacher cache (batch_keys)
                BATCH_KEYS.publish(moved[0], batch[2], batch[3])
            yield moved


def _face_loader(cfg: Any, root_dir: str, local_rank: int, batch_size: int, seed: Optional[int],
                 num_workers: int) -> torch.utils.data.DataLoader:
    from functools import partial
    from utils.utils_distributed_sampler import DistributedSampler, get_dist_info, worker_init_fn  # upstream's
    if root_dir == "synthetic":
        from ...host.data import SyntheticFaces
        dataset = SyntheticFaces(cfg.num_image, cfg.num_classes, (112, 112), cfg.seed)
    else:
        from ...data.dataset import FaceDataset
        dataset = FaceDataset(root_dir, random_flip=True, return_meta=True)  # upstream's flip, + record keys
    rank, world_size = get_dist_info()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    init_fn = None if seed is None else partial(worker_init_fn, num_workers=num_workers, rank=rank, seed=seed)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return _DeviceLoader(device, dataset=dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                         pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=init_fn)


class _BinVerification:
    """Upstream's CallBackVerification on the data layer: rank 0 loads ``<rec_prefix>/<name>.bin`` for each name
    of ``val_targets`` (a missing file is an error, not skipped), and every call logs XNorm, Accuracy-Flip and
    Accuracy-Highest per set, as upstream does, and writes Accuracy-Flip to the summary writer (tag: the name)."""

    def __init__(self, val_targets: Sequence[str], rec_prefix: str, summary_writer: Any = None,
                 image_size: Tuple[int, int] = (112, 112), wandb_logger: Any = None) -> None:
        from ...data.verification_bin import decode_bin_images, load_bin
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.summary_writer, self.wandb_logger = summary_writer, wandb_logger
        self.sets: List[Tuple[str, torch.Tensor, Any]] = []
        self.highest = [0.0] * len(val_targets)
        if self.rank != 0:
            return
        for name in val_targets:
            path = Path(rec_prefix) / f"{name}.bin"
            if not path.is_file():
                raise RecipeError(f"config.val_targets lists {name!r} but {str(path)!r} does not exist "
                                  f"(remove it from config.val_targets)")
            vbin = load_bin(path)
            self.sets.append((name, decode_bin_images(vbin, image_size[0]), vbin.issame))

    def __call__(self, num_update: int, backbone: nn.Module) -> None:
        if self.rank != 0 or num_update <= 0:
            return
        import numpy as np
        from ...eval.embedding_models import TorchEmbeddingModel, embed_images
        from ...eval.verification_metrics import evaluate_verification
        module = _unwrap(backbone)
        model = TorchEmbeddingModel(module, 127.5, 127.5, next(module.parameters()).device)  # sets eval()
        try:
            for i, (name, images, issame) in enumerate(self.sets):
                plain = embed_images(model, images, 64, progress=False)
                flipped = embed_images(model, torch.flip(images, dims=[3]), 64, progress=False)
                result = evaluate_verification(name, plain, issame, flipped=flipped, folds=10)
                xnorm = float(np.linalg.norm(np.concatenate([plain, flipped]), axis=1).mean())
                self.highest[i] = max(self.highest[i], result.accuracy_flip)
                logging.info("[%s][%d]XNorm: %f", name, num_update, xnorm)
                logging.info("[%s][%d]Accuracy-Flip: %1.5f+-%1.5f", name, num_update, result.accuracy_flip,
                             result.accuracy_flip_std)
                logging.info("[%s][%d]Accuracy-Highest: %1.5f", name, num_update, self.highest[i])
                if self.summary_writer is not None:
                    self.summary_writer.add_scalar(tag=name, scalar_value=result.accuracy_flip, global_step=num_update)
                if self.wandb_logger:
                    self.wandb_logger.log({f"Acc/val-Acc1 {name}": result.accuracy,
                                           f"Acc/val-Acc2 {name}": result.accuracy_flip})
        finally:
            backbone.train()
