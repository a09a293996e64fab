"""Synthetic faces for tests and smoke runs (``config.rec = "synthetic"``): class-conditional random images, no
files. Image i has label i % C and is its class's fixed random pattern plus noise, in [-1, 1] like arcface_torch's
normalised images; deterministic given the seed."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["SyntheticFaces"]


class SyntheticFaces(torch.utils.data.Dataset):
    """In-memory class-conditional random images (N x 3 x H x W float32 in [-1, 1]) and int64 labels."""

    def __init__(self, num_image: int, num_classes: int, image_size: Tuple[int, int], seed: int) -> None:
        g = torch.Generator().manual_seed(int(seed))
        h, w = image_size
        protos = torch.rand(num_classes, 3, h, w, generator=g) * 2 - 1
        self.labels = torch.arange(num_image) % num_classes
        noise = torch.randn(num_image, 3, h, w, generator=g) * 0.3
        self.images = (protos[self.labels] + noise).clamp(-1, 1)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
