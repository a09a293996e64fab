"""A tiny teacher on disk for the host tests: ``model.pt`` (tiny_cnn) and classifier shards ``checkpoint_gpu_*.pt``."""
from pathlib import Path

import torch

from insightface_pwr.distill.sharding import shard_range
from insightface_pwr.models.backbones import get_model


def write_teacher(folder: Path, shards: int, seed: int, num_classes: int = 10, dim: int = 8) -> torch.Tensor:
    """Write a random tiny_cnn teacher and its num_classes x dim classifier in ``shards`` arcface_torch shards;
    returns the full classifier."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(get_model("tiny_cnn", num_features=dim).state_dict(), folder / "model.pt")
    weight = torch.randn(num_classes, dim)
    for r in range(shards):
        start, count = shard_range(num_classes, shards, r)
        torch.save({"state_dict_softmax_fc": {"weight": weight[start:start + count]}},
                   folder / f"checkpoint_gpu_{r}.pt")
    return weight
