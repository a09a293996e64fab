"""The opt-in MXNet-free data layer of the patched trainer (``config.data_backend = "insightface_pwr"``): the
loader and the verification callback, with upstream's call signatures. What it knows of upstream: its
``utils.utils_distributed_sampler`` (DistributedSampler, get_dist_info, worker_init_fn) and the signatures of
``dataset.get_dataloader`` and ``utils.utils_callbacks.CallBackVerification``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import distributed as dist
from torch import nn

from ...distill.recipe import RecipeError

__all__ = ["data_layer"]


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module


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
    """A DataLoader whose batches arrive on ``device``, prefetched like upstream's ``DataLoaderX``: on CUDA the next
    batch is copied on a side stream (pinned memory, ``non_blocking``) while the current one trains, and the main
    stream waits for that copy only when the batch is handed over. Batches ``(image, label, key, flipped[, emb])``
    publish their record keys (and the teacher embeddings the workers looked up in a teacher cache) on
    ``BATCH_KEYS`` right before they are yielded, with the very tensor that is yielded."""

    def __init__(self, device: torch.device, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = device

    def _to_device(self, batch: Any, stream: Any) -> list:
        if stream is None:
            return [t.to(self.device, non_blocking=True) for t in batch[:2]] + list(batch[2:])
        with torch.cuda.stream(stream):
            return [t.to(self.device, non_blocking=True) for t in batch[:2]] + list(batch[2:])

    def __iter__(self):
        from ...distill.batch_keys import BATCH_KEYS
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        it = super().__iter__()
        nxt = next(it, None)
        nxt = None if nxt is None else self._to_device(nxt, stream)
        while nxt is not None:
            if stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(stream)
                for t in nxt[:2]:
                    t.record_stream(torch.cuda.current_stream(self.device))
            batch = nxt
            following = next(it, None)
            nxt = None if following is None else self._to_device(following, stream)
            if len(batch) >= 4:  # (image, label, key, flipped[, embeddings]): for a teacher cache (batch_keys)
                BATCH_KEYS.publish(batch[0], batch[2], batch[3], embeddings=batch[4] if len(batch) == 5 else None)
            yield batch[:2]


def _face_loader(cfg: Any, root_dir: str, local_rank: int, batch_size: int, seed: Optional[int],
                 num_workers: int) -> torch.utils.data.DataLoader:
    from functools import partial

    from utils.utils_distributed_sampler import (  # upstream's
        DistributedSampler,
        get_dist_info,
        worker_init_fn,
    )
    if root_dir == "synthetic":
        from ...data.synthetic import SyntheticFaces
        dataset = SyntheticFaces(cfg.num_image, cfg.num_classes, (112, 112), cfg.seed)
    else:
        from ...data.dataset import FaceDataset
        dataset = FaceDataset(root_dir, random_flip=True, return_meta=True)  # upstream's flip, + record keys
    rank, world_size = get_dist_info()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    init_fn = None if seed is None else partial(worker_init_fn, num_workers=num_workers, rank=rank, seed=seed)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    collate = None
    cache = _cache_path(cfg)
    if cache is not None:  # the workers look the teacher embeddings up and carry them with the batch
        from ...distill.teacher_cache import AttachEmbeddings, TeacherCache
        collate = AttachEmbeddings(TeacherCache(cache, verify="none"))  # build_hooks verifies it (once)
    return _DeviceLoader(device, dataset=dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                         pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=init_fn,
                         collate_fn=collate)


def _cache_path(cfg: Any) -> Optional[str]:
    distill = cfg.get("distill")
    teacher = distill.get("teacher") if distill is not None else None
    return None if teacher is None else teacher.get("cache")


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
