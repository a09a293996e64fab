"""Small CPU backbones for the host, built by name like arcface_torch's ``get_model``.

- ``tiny_cnn``: conv(3->16, s2) BN PReLU, conv(16->32, s2) BN PReLU, flatten, linear, BN1d: a few thousand
  parameters, for tests on 16x16 or 32x32 images.
- ``tiny_mbf``: a MobileFaceNet-shaped net (depthwise-separable bottlenecks, global depthwise conv, linear
  embedding + BN1d), narrow, for 32x32 to 112x112 images.
Both map N x 3 x H x W float images to N x ``num_features`` embeddings (not normalised).
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch import nn

__all__ = ["get_model", "BACKBONES", "TinyCNN", "TinyMobileFaceNet"]


class TinyCNN(nn.Module):
    """Two strided conv blocks and a linear embedding (the host's test network)."""

    def __init__(self, num_features: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16),
            nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.PReLU(32),
            nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(32 * 16, num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.body(x).flatten(1)))


def _conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True,
             pad: int = -1) -> nn.Sequential:
    pad = k // 2 if pad < 0 else pad
    layers = [nn.Conv2d(cin, cout, k, s, pad, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(_conv_bn(c, h, 1, 1), _conv_bn(h, h, 3, 1, groups=h),
                                   _conv_bn(h, c, 1, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class TinyMobileFaceNet(nn.Module):
    """MobileFaceNet's layout at a small width: stem, depthwise bottlenecks, global depthwise conv, embedding."""

    def __init__(self, num_features: int = 128, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(3, width, 3, 2), _conv_bn(width, width, 3, 1, groups=width),
            _Bottleneck(width, 2), _conv_bn(width, 2 * width, 3, 2), _Bottleneck(2 * width, 2),
            _conv_bn(2 * width, 4 * width, 1, 1), nn.AdaptiveAvgPool2d(4),
            _conv_bn(4 * width, 4 * width, 4, 1, groups=4 * width, act=False, pad=0))
        self.fc = nn.Linear(4 * width, num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.body(x).flatten(1)))


BACKBONES: Dict[str, Callable[..., nn.Module]] = {
    "tiny_cnn": lambda num_features: TinyCNN(num_features),
    "tiny_mbf": lambda num_features: TinyMobileFaceNet(num_features),
    # the real-LFW benchmark's students: width 16 (the scratch preset) and 24 (the from-baseline preset)
    "tiny_mbf24": lambda num_features: TinyMobileFaceNet(num_features, width=24),
}


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build backbone ``name`` (upstream's call: ``get_model(name, dropout=0.0, fp16=False, num_features=D)``;
    ``dropout`` and ``fp16`` are accepted and ignored on CPU)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown host backbone {name!r}; the CPU host has {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](int(kwargs.get("num_features", 512)))
