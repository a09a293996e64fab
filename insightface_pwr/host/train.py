"""The CPU host's training loop: arcface_torch's ``train_v2.py`` step by step, on CPU with gloo.

It mirrors upstream's ``main()`` (commit 0159b24d) in order, so that the distillation hooks are driven exactly as
the patched upstream script drives them: config -> seed -> data -> backbone in DDP (``find_unused_parameters``,
static graph) -> margin softmax + partial FC -> optimizer (backbone group first, partial FC last) ->
``build_hooks`` -> total/warmup steps -> polynomial warmup lr -> ``hooks.lr_scheduler`` -> resume ->
``hooks.resume`` -> loop: ``backbone(img)``, ``partial_fc(emb, labels)``, ``hooks.step``, backward, gradient
accumulation with ``clip_grad_norm_(backbone, 5)``, ``lr_scheduler.step()`` every step, logging every ``frequent``
steps, ``hooks.log`` -> per epoch ``hooks.save`` then ``checkpoint_gpu_{rank}.pt`` (``save_all_states``) and
``model.pt`` (rank 0) -> ``hooks.end``.

Differences, all small: CPU and fp32 only (no GradScaler, no fp16 comm hook, no DALI, no verification callback);
checkpoints are atomic and keep their previous version; the host can also save every ``cfg.save_every_steps``
steps and resume in the middle of an epoch (upstream saves per epoch); rank 0 appends every step's loss to
``<output>/host_losses.jsonl`` (what the resume tests compare). One training per output folder: rank 0 locks it
before anything is written (:func:`~insightface_pwr.distill.checkpoint.lock_output`; a second training is refused,
on every rank). Each checkpoint also holds the process count, the run's identity (resume refuses another run's
checkpoint, naming the keys that differ) and the RNG states (torch, numpy, Python), so that a resumed run, with or
without distillation, continues exactly as the uninterrupted one. Host-only config keys: ``image_size`` (H, W),
``save_every_steps`` (0: per epoch only), ``host_threads`` (torch threads per process, default 1),
``max_steps_per_epoch`` (0: the whole data set; else each epoch stops after that many steps: a smoke run).
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import distributed as dist

from ..infra import faults
from ..distill.checkpoint import (CheckpointError, OutputInUseError, atomic_save, check_identity, load_candidates,
                                  lock_output, rng_state, run_identity, save_rotating, set_rng_state, unlock_output)
from ..distill.lr_schedules import PolynomialWarmupLR
from ..models.backbones import get_model
from .data import build_dataset, epoch_batches, steps_per_epoch
from .partial_fc import MarginSoftmax, PartialFC

__all__ = ["run_host", "train_process"]

logger = logging.getLogger("insightface_pwr.host")


def _setup_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _end_logging() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_insightface_pwr_host", False):
            root.removeHandler(h)
            if isinstance(h, logging.FileHandler):
                h.close()


class _TerminalHandler(logging.StreamHandler):
    """A log line on a terminal first clears the line it starts on (a progress bar drawn there with ``\r``), so
    that the two never mix on one line; the bar is drawn again below it on its next update."""

    def emit(self, record: logging.LogRecord) -> None:
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            self.stream.write("\r\x1b[2K")
        super().emit(record)


def _init_logging(rank: int, output: Path) -> None:
    _end_logging()
    root = logging.getLogger()
    if rank != 0:
        root.setLevel(logging.WARNING)
        return
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("Training: %(asctime)s-%(message)s")
    for h in (_TerminalHandler(sys.stdout), logging.FileHandler(output / "training.log")):
        h.setFormatter(fmt)
        h._insightface_pwr_host = True  # type: ignore[attr-defined]
        root.addHandler(h)


def _saved_process_count(output: Path) -> int:
    """How many processes wrote the checkpoints in ``output`` (its checkpoint_gpu_<rank>.pt files)."""
    ranks = [p.name[len("checkpoint_gpu_"):-len(".pt")] for p in output.glob("checkpoint_gpu_*.pt")]
    return len([r for r in ranks if r.isdigit()])


def _resume(output: Path, rank: int, world_size: int, backbone: Any, pfc: Any, opt: Any,
            lr_scheduler: Any, identity: dict) -> Tuple[int, int]:
    """Load the newest checkpoint that EVERY rank completed (ranks are at most one save apart)."""
    saved = _saved_process_count(output)  # every rank sees the same folder: all raise alike, none hangs
    if saved and saved != world_size:
        raise CheckpointError(f"resume: {str(output.resolve())!r} holds the checkpoints of {saved} process(es) "
                              f"(checkpoint_gpu_0..{saved - 1}.pt); this run has {world_size}: resume with "
                              f"--nproc {saved}")
    path = output / f"checkpoint_gpu_{rank}.pt"
    candidates = load_candidates(path, "host checkpoint")
    for c in candidates:
        if c.get("world_size", world_size) != world_size:
            raise CheckpointError(f"resume: {str(path.resolve())!r} was saved by {c['world_size']} process(es); "
                                  f"this run has {world_size}: resume with --nproc {c['world_size']}")
        check_identity(c.get("run_identity"), identity, path)
    newest = torch.tensor([max((c["global_step"] for c in candidates), default=-1)])
    if world_size > 1:
        dist.all_reduce(newest, dist.ReduceOp.MIN)
    step = int(newest)
    match = [c for c in candidates if c["global_step"] == step]
    if step < 0 or not match:
        raise CheckpointError(f"resume: no checkpoint common to all ranks in {str(output.resolve())!r} "
                              f"(rank {rank} has steps {[c['global_step'] for c in candidates]})")
    ckpt = match[0]
    backbone.module.load_state_dict(ckpt["state_dict_backbone"])
    pfc.load_state_dict(ckpt["state_dict_softmax_fc"])
    opt.load_state_dict(ckpt["state_optimizer"])
    lr_scheduler.load_state_dict(ckpt["state_lr_scheduler"])
    if "rng" in ckpt:  # flips and partial FC's class sampling continue as in the uninterrupted run
        set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), int(ckpt["global_step"])


def _lock(output: Path, rank: int, world_size: int) -> None:
    """Rank 0 locks the output folder; every rank learns the outcome (a refused run fails on all ranks)."""
    error: Optional[Exception] = None
    if rank == 0:
        try:
            lock_output(output)
        except Exception as e:  # noqa: BLE001  (a read-only folder too: every rank must learn it, then all raise)
            error = e
    if world_size > 1:
        flag = torch.tensor([int(error is not None)])
        dist.broadcast(flag, 0)
        if int(flag) and error is None:
            error = OutputInUseError(f"output folder {str(output.resolve())!r}: rank 0 could not lock it (see "
                                     f"rank 0's error)")
    if error is not None:
        raise error


def run_host(cfg: Any, rank: int, world_size: int) -> int:
    """Train with ``cfg`` (a loaded recipe) in an initialised gloo process group; returns the last global step."""
    torch.set_num_threads(int(cfg.get("host_threads", 1)))
    _setup_seed(cfg.seed)
    identity = run_identity(cfg)  # before the loop adds its derived keys
    output = Path(cfg.output)
    _lock(output, rank, world_size)  # before anything is written
    try:
        return _run_host(cfg, rank, world_size, output, identity)
    finally:
        _end_logging()
        if rank == 0:
            unlock_output(output)


def _run_host(cfg: Any, rank: int, world_size: int, output: Path, identity: dict) -> int:
    output.mkdir(parents=True, exist_ok=True)
    _init_logging(rank, output)
    if rank == 0 and cfg.get("val_targets"):
        logger.warning("config.val_targets = %r: the CPU host does not run upstream's verification callback, so "
                       "these sets are not evaluated during training; evaluate %s afterwards with insightface-pwr "
                       "eval --network %s --model %s --bin ...", list(cfg.val_targets), output / "model.pt",
                       cfg.network, output / "model.pt")

    dataset = build_dataset(cfg)
    if cfg.get("data_backend") is None:  # the host's loader is the package's data layer (it publishes record keys)
        cfg.data_backend = "insightface_pwr"
    backbone = get_model(cfg.network, dropout=0.0, fp16=False, num_features=cfg.embedding_size)
    with warnings.catch_warnings():  # upstream's broadcast_buffers=False (rank-local BN statistics), deprecated
        warnings.simplefilter("ignore", FutureWarning)
        # (upstream also passes find_unused_parameters=True, which the static graph makes redundant)
        backbone = torch.nn.parallel.DistributedDataParallel(module=backbone, broadcast_buffers=False)
    backbone.train()
    backbone._set_static_graph()

    margin_loss = MarginSoftmax(64, *cfg.margin_list)
    module_partial_fc = PartialFC(margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate)
    module_partial_fc.train()
    groups = [{"params": backbone.parameters()}, {"params": module_partial_fc.parameters()}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"config.optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")

    distill_hooks = None
    if cfg.get("distill") is not None or cfg.get("lr_schedule") is not None:  # as the patched train_v2.py
        from ..integration.arcface_torch.build import build_hooks
        distill_hooks = build_hooks(cfg, backbone=backbone, partial_fc=module_partial_fc, optimizer=opt,
                                    rank=rank, world_size=world_size, local_rank=rank, model_factory=get_model)
        distill_hooks.run_identity = identity

    cfg.total_batch_size = cfg.batch_size * world_size
    cfg.warmup_step = cfg.num_image // cfg.total_batch_size * cfg.warmup_epoch
    cfg.total_step = cfg.num_image // cfg.total_batch_size * cfg.num_epoch
    lr_scheduler = PolynomialWarmupLR(opt, cfg.warmup_step, cfg.total_step)
    if distill_hooks:
        lr_scheduler = distill_hooks.lr_scheduler(lr_scheduler)

    start_epoch, global_step = 0, 0
    if cfg.resume:
        start_epoch, global_step = _resume(output, rank, world_size, backbone, module_partial_fc, opt,
                                            lr_scheduler, identity)
    if distill_hooks:
        start_epoch, global_step = distill_hooks.resume(start_epoch, global_step)

    def save(epoch: int) -> None:
        if distill_hooks:  # first: a kill between the two saves leaves a distill state matching the checkpoint
            distill_hooks.save(epoch, global_step)
        save_rotating({"epoch": epoch, "global_step": global_step, "world_size": world_size,
                       "run_identity": identity, "rng": rng_state(),
                       "state_dict_backbone": backbone.module.state_dict(),
                       "state_dict_softmax_fc": module_partial_fc.state_dict(),
                       "state_optimizer": opt.state_dict(),
                       "state_lr_scheduler": lr_scheduler.state_dict()}, output / f"checkpoint_gpu_{rank}.pt")

    spe = steps_per_epoch(len(dataset), world_size, cfg.batch_size)
    if int(cfg.get("max_steps_per_epoch", 0)) > 0:  # host key: a smoke run on a big data set
        spe = min(spe, int(cfg.max_steps_per_epoch))
    save_every = int(cfg.get("save_every_steps", 0))
    loss_log = open(output / "host_losses.jsonl", "a") if rank == 0 else None
    loss_sum, loss_n = 0.0, 0
    try:
        for epoch in range(start_epoch, cfg.num_epoch):
            skip = max(0, global_step - epoch * spe)
            for img, local_labels in epoch_batches(dataset, epoch, cfg.seed, rank, world_size, cfg.batch_size,
                                                   skip, limit=spe):
                global_step += 1
                local_embeddings = backbone(img)
                loss = module_partial_fc(local_embeddings, local_labels)
                if distill_hooks:
                    loss = distill_hooks.step(global_step, img, local_embeddings, local_labels, loss)
                loss.backward()
                if global_step % cfg.gradient_acc == 0:
                    torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
                    opt.step()
                    opt.zero_grad()
                lr_scheduler.step()

                with torch.no_grad():
                    value = loss.item()
                    loss_sum, loss_n = loss_sum + value, loss_n + 1
                    if rank == 0 and global_step % cfg.frequent == 0:
                        logger.info("Loss %.4f   LearningRate %.6f   Epoch: %d   Global Step: %d", loss_sum / loss_n,
                                    lr_scheduler.get_last_lr()[0], epoch, global_step)
                        loss_sum, loss_n = 0.0, 0
                    if distill_hooks:
                        distill_hooks.log(global_step, None)
                    if loss_log is not None:
                        loss_log.write(json.dumps({"step": global_step, "epoch": epoch, "loss": value,
                                                   "lr": lr_scheduler.get_last_lr()[0]}) + "\n")
                        loss_log.flush()
                faults.hit("kill_after_step", global_step)
                if save_every and global_step % save_every == 0:
                    save(epoch)

            if cfg.save_all_states:
                save(epoch + 1)
            if rank == 0:
                atomic_save(backbone.module.state_dict(), output / "model.pt")
    finally:
        if loss_log is not None:
            loss_log.close()
    if distill_hooks:
        distill_hooks.end()
    return global_step


def absolute_paths(cfg: Any) -> Any:
    """``cfg`` with its relative file paths (data, output, teacher files, student_init) made absolute, so that every
    message names the file the run actually used."""
    def absolute(p: Any) -> Any:
        return os.path.abspath(p) if isinstance(p, (str, os.PathLike)) else p

    if cfg.get("rec") not in (None, "synthetic"):
        cfg.rec = absolute(cfg.rec)
    cfg.output = absolute(cfg.output)
    d = cfg.get("distill")
    if d is not None and hasattr(d, "teacher") and hasattr(d.teacher, "weights"):
        t = d.teacher
        t.weights, t.cache = absolute(t.weights), absolute(t.cache)
        t.classifier = [absolute(c) for c in t.classifier] if isinstance(t.classifier, (list, tuple)) \
            else absolute(t.classifier)
        d.student_init = absolute(d.student_init)
    return cfg


def train_process(rank: int, world_size: int, recipe: str, init_method: str,
                  overrides: Optional[dict] = None) -> None:
    """Entry point of one host process: init gloo, load the recipe (plus ``overrides``), train, clean up."""
    from ..distill.recipe import load_recipe
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        cfg = load_recipe(recipe)
        cfg.update(overrides or {})
        run_host(absolute_paths(cfg), rank, world_size)
    finally:
        dist.destroy_process_group()
