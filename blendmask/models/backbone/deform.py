"""Deformable bottleneck of detectron2's MSRA ResNet (the ``dcni3`` models of AdelaiDet's zoo).

``MSRADeformBottleneck`` has the names of detectron2's ``DeformBottleneckBlock``, so AdelaiDet
checkpoints load by name: ``conv1``/``conv3``/``shortcut`` as in the plain block, a 3x3
``conv2_offset`` (with bias) predicting the sampling offsets, and ``conv2`` (the deformable
3x3 conv, no bias, with its ``.norm``). The deformable conv is ``torchvision.ops.deform_conv2d``.

Offsets: for DCNv2 (``modulated=True``) ``conv2_offset`` has 27 = 3 x 9 output channels; the
first 18 are the (dy, dx) pairs of the 9 kernel taps (torchvision's and detectron2's layout:
channel ``2k`` is dy and ``2k + 1`` is dx of tap ``k``), the last 9 pass through a sigmoid and
modulate the taps. For DCNv1 it has 18 channels and no mask. ``conv2_offset`` starts at zero
(detectron2's init), so a fresh block samples the regular 3x3 grid, every tap weighted by
sigmoid(0) = 0.5 for DCNv2.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvNorm, DeformConvNorm

__all__ = ["MSRADeformBottleneck"]

_TAPS = 9  # 3x3 kernel


class MSRADeformBottleneck(nn.Module):
    """1x1 (stride) -> deformable 3x3 -> 1x1 bottleneck, projection ``shortcut`` when shapes change."""

    def __init__(self, *, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int,
                 norm: str, modulated: bool):
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.shortcut: Optional[nn.Module] = ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
        else:
            self.shortcut = None
        self.modulated = modulated
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride, norm=norm)
        self.conv2_offset = nn.Conv2d(bottleneck_channels, (3 if modulated else 2) * _TAPS, 3, padding=1)
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)
        self.conv2 = DeformConvNorm(bottleneck_channels, bottleneck_channels, norm=norm)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        offset = self.conv2_offset(out)
        mask = None
        if self.modulated:
            offset, mask = offset[:, : 2 * _TAPS], offset[:, 2 * _TAPS:].sigmoid()
        out = F.relu_(self.conv2(out, offset, mask))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)
