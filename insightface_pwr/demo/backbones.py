"""The demo teacher's network, registered with the CPU host's backbones as ``demo_resnet``.

``demo_resnet``: a small ResNet for 32x32 faces, 3 stages (16, 32, 64 channels, each a strided conv + BN + PReLU
and one residual block of two 3x3 convs), then flatten, linear embedding, BN1d (arcface_torch's head shape).
About 10x the compute of the host's ``tiny_cnn`` (the demo's student), so it plays the teacher's part (r50 vs r18).
Importing this module registers it (the demo recipes import it, so ``insightface-pwr train`` finds it).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.backbones import BACKBONES

__all__ = ["DemoResNet"]


def _conv_bn(cin: int, cout: int, stride: int, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_conv_bn(c, c, 1), _conv_bn(c, c, 1, act=False))
        self.act = nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.block(x))


class DemoResNet(nn.Module):
    """N x 3 x H x W -> N x ``num_features`` (H, W multiples of 8; 4 x 4 x 64 features before the embedding)."""

    def __init__(self, num_features: int = 128, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(_conv_bn(3, w, 2), _Residual(w), _conv_bn(w, 2 * w, 2), _Residual(2 * w),
                                  _conv_bn(2 * w, 4 * w, 2), _Residual(4 * w), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(4 * w * 16, num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.body(x).flatten(1)))


BACKBONES.setdefault("demo_resnet", lambda num_features: DemoResNet(num_features))
