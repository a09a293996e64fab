"""The host's data: a pluggable dataset and arcface_torch's sampling (DistributedSampler, drop_last).

- ``cfg.rec == "synthetic"``: :class:`~insightface_pwr.data.synthetic.SyntheticFaces`, ``cfg.num_image`` images of ``cfg.image_size`` (H, W)
  (host key, default 112 x 112) in ``cfg.num_classes`` classes: image i has label i % C and is its class's fixed
  random pattern plus noise, in [-1, 1] like arcface_torch's normalised images. Deterministic given ``cfg.seed``.
- a RecordIO folder: the data layer's :class:`~insightface_pwr.data.dataset.FaceDataset` with upstream's
  transform (random horizontal flip drawn from torch's RNG, (pixel/255 - 0.5)/0.5); each batch's record keys and
  flips are published on :data:`~insightface_pwr.distill.batch_keys.BATCH_KEYS` as it is yielded (a teacher cache needs
  them).

:func:`epoch_batches` mirrors ``DistributedSampler(shuffle=True, seed)`` + ``drop_last=True``: a permutation
drawn from a generator seeded with seed + epoch (never the global RNG), padded to a multiple of the world size,
rank r takes every W-th index from r; ``num_image // (batch_size * W)`` batches per epoch, as upstream counts.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import torch

from ..data.synthetic import SyntheticFaces
from ..distill.batch_keys import BATCH_KEYS

__all__ = ["SyntheticFaces", "build_dataset", "epoch_batches", "steps_per_epoch"]


def build_dataset(cfg: Any) -> torch.utils.data.Dataset:
    """The dataset named by ``cfg.rec``."""
    size = cfg.get("image_size", (112, 112))
    size = (size, size) if isinstance(size, int) else tuple(size)
    if cfg.rec == "synthetic":
        return SyntheticFaces(cfg.num_image, cfg.num_classes, size, cfg.seed)
    from ..data.dataset import FaceDataset
    return FaceDataset(cfg.rec, random_flip=True, return_meta=True)


def steps_per_epoch(num_items: int, world_size: int, batch_size: int) -> int:
    """Batches per epoch and rank, as :func:`epoch_batches` yields them."""
    return -(-num_items // world_size) // batch_size


def epoch_batches(dataset: torch.utils.data.Dataset, epoch: int, seed: int, rank: int, world_size: int,
                  batch_size: int, skip: int = 0,
                  limit: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of ``epoch`` (the first ``skip`` left out, for a mid-epoch resume; at most ``limit``)."""
    n = len(dataset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + int(epoch))).tolist()
    total = -(-n // world_size) * world_size
    perm += perm[: total - n]
    mine = perm[rank:total:world_size]
    stop = len(mine) // batch_size if limit is None else min(len(mine) // batch_size, limit)
    for b in range(skip, stop):
        items = [dataset[i] for i in mine[b * batch_size:(b + 1) * batch_size]]
        img = torch.stack([it[0] for it in items])
        labels = torch.stack([torch.as_tensor(it[1]) for it in items])
        if len(items[0]) == 4:  # (image, label, key, flipped): publish the keys for a teacher cache
            BATCH_KEYS.publish(img, torch.tensor([it[2] for it in items]), torch.tensor([it[3] for it in items]))
        yield img, labels
