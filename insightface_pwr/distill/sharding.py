"""How partial FC shards the classes over ranks (upstream's ``PartialFC_V2``; the one place of the formula):
rank r of W holds C // W + (r < C % W) classes starting at C // W * r + min(r, C % W)."""
from __future__ import annotations

from typing import Tuple

__all__ = ["shard_range"]


def shard_range(num_classes: int, world_size: int, rank: int) -> Tuple[int, int]:
    """(class_start, num_local) of ``rank`` among ``world_size`` ranks for ``num_classes`` classes."""
    num_local = num_classes // world_size + int(rank < num_classes % world_size)
    return num_classes // world_size * rank + min(rank, num_classes % world_size), num_local
