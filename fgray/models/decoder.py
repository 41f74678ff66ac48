"""OLDFS's decoder h (paper 002; spec oldfs.md §1): a pooled feature v (B, C) -> an image
(B, 3, S, S) in normalised-image space (no output activation).

The paper's appendix with the architecture is lost; the spec recovers the first author's early
code: a linear layer, then a ResNet-style up-sampling decoder of resize-convolutions. Here: a
Linear(C -> width x 4 x 4), then one scale per doubling up to S (nearest x2 up-sampling, a 3x3
conv + BN + ReLU, then ``blocks`` of timm's ResNet ``BasicBlock``), channels halved per scale
(at least 16), a 3x3 conv to RGB, and a bilinear resize when S is not 4 x 2^k. The early code's
bottleneck stacks [3, 4, 6, 3] are the ``blocks`` knob's far end; one block per scale is the
default (the CPU demo's budget).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from timm.models.resnet import BasicBlock
from torch import Tensor, nn


class FeatureDecoder(nn.Module):
    def __init__(self, in_dim: int, image_size: int, width: int = 512, blocks: int = 1):
        super().__init__()
        self.image_size, self.width = image_size, width
        self.project = nn.Linear(in_dim, width * 16)
        layers: list[nn.Module] = []
        channels = width
        for _ in range(max(0, math.ceil(math.log2(image_size / 4)))):
            out = max(16, channels // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            layers += [BasicBlock(out, out) for _ in range(blocks)]
            channels = out
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, v: Tensor) -> Tensor:
        """(B, C) -> (B, 3, S, S)."""
        x = self.net(self.project(v).view(v.shape[0], self.width, 4, 4))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x
