"""DLA-34 bottom-up network, key-compatible with AdelaiDet's ``adet/modeling/backbone/dla.py``.

Deep Layer Aggregation (Yu et al., 2018) with the names of AdelaiDet's copy of the ucbdrive
code: ``base_layer`` (7x7 conv, stride 1), ``level0``/``level1`` (3x3 conv levels, ``level1``
at stride 2), and ``level2``..``level5``, aggregation trees of ``BasicBlock`` leaves (``tree1``,
``tree2``, ``conv1/bn1/conv2/bn2``), each tree with a ``root`` (1x1 ``conv`` + ``bn`` on the
concatenation of its children) and a ``project`` (1x1 conv + norm) when the width changes.

Channels (16, 32, 64, 128, 256, 512) at strides (1, 2, 4, 8, 16, 32) for ``level0``..``level5``;
the FPN takes ``level3``..``level5`` (AdelaiDet's ``FPN.IN_FEATURES``), so forward returns
``{"level3": (N, 128, H/8, W/8), "level4": (N, 256, H/16, W/16), "level5": (N, 512, H/32, W/32)}``.

As in AdelaiDet, the ``project`` of a two-level tree (``level3``/``level4``) feeds nothing but a
zero-weighted term in training (its inner ``tree1`` projects again), which keeps every parameter
in the autograd graph; we keep that term, so training sees the same parameters with gradients.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import get_norm

__all__ = ["DLA34"]

_LEVELS = (1, 1, 1, 2, 2, 1)
_CHANNELS = (16, 32, 64, 128, 256, 512)
_OUT_FEATURES = ("level3", "level4", "level5")


class BasicBlock(nn.Module):
    """3x3 (stride) -> 3x3 residual block; the residual is passed in by the enclosing tree."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = get_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        residual = x if residual is None else residual
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + residual)


class Root(nn.Module):
    """1x1 conv + norm + ReLU on the channel concatenation of a tree's children."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = get_norm(norm, out_channels)

    def forward(self, *children: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(torch.cat(children, 1))))


class Tree(nn.Module):
    """An aggregation tree of depth ``levels`` (1 or more) over :class:`BasicBlock` leaves.

    A depth-1 tree runs ``tree1`` (strided, with the projected input as residual) and ``tree2``,
    and merges both (and, for a ``level_root`` tree, its downsampled input) in ``root``. A deeper
    tree hands its children down to ``tree2``, whose root merges them all.
    """

    def __init__(self, levels: int, in_channels: int, out_channels: int, *, stride: int, norm: str,
                 level_root: bool = False, root_channels: int = 0):
        super().__init__()
        root_channels = root_channels or 2 * out_channels
        if level_root:
            root_channels += in_channels
        if levels == 1:
            self.tree1: nn.Module = BasicBlock(in_channels, out_channels, stride, norm)
            self.tree2: nn.Module = BasicBlock(out_channels, out_channels, 1, norm)
            self.root: Optional[Root] = Root(root_channels, out_channels, norm)
        else:
            self.tree1 = Tree(levels - 1, in_channels, out_channels, stride=stride, norm=norm)
            self.tree2 = Tree(levels - 1, out_channels, out_channels, stride=1, norm=norm,
                              root_channels=root_channels + out_channels)
            self.root = None
        self.levels = levels
        self.level_root = level_root
        self.downsample = nn.MaxPool2d(stride, stride=stride) if stride > 1 else None
        self.project: Optional[nn.Module] = None
        if in_channels != out_channels:
            self.project = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                         get_norm(norm, out_channels))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                children: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        if self.training and residual is not None:
            x = x + residual.sum() * 0.0  # see the module docstring
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        residual = self.project(bottom) if self.project is not None else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, residual)
        if self.levels == 1:
            return self.root(self.tree2(x1), x1, *children)
        children.append(x1)
        return self.tree2(x1, children=children)


def _conv_level(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         get_norm(norm, out_channels), nn.ReLU(inplace=True))


class DLA34(nn.Module):
    """DLA-34 returning ``level3``..``level5`` (see the module docstring)."""

    freeze_stage_names = (("base_layer", "level0", "level1"), ("level2",), ("level3",), ("level4",), ("level5",))
    ignored_weight_prefixes = ("fc.",)  # the ImageNet classifier of dla34-ba72cf86.pth

    def __init__(self, *, norm: str, with_res2: bool = False):
        """``with_res2``: also return ``"level2"`` (64 channels, stride 4)."""
        super().__init__()
        c = _CHANNELS
        self.base_layer = nn.Sequential(nn.Conv2d(3, c[0], 7, padding=3, bias=False), get_norm(norm, c[0]),
                                        nn.ReLU(inplace=True))
        self.level0 = _conv_level(c[0], c[0], 1, norm)
        self.level1 = _conv_level(c[0], c[1], 2, norm)
        for index in range(2, 6):
            self.add_module(f"level{index}", Tree(_LEVELS[index], c[index - 1], c[index], stride=2, norm=norm,
                                                  level_root=index > 2))
        for module in self.modules():  # AdelaiDet's (ucbdrive's) init: N(0, sqrt(2 / (k * k * out)))
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        out_features = (("level2",) if with_res2 else ()) + tuple(_OUT_FEATURES)
        self.out_channels = {name: c[int(name[-1])] for name in out_features}
        self.strides = {name: 2 ** int(name[-1]) for name in out_features}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.level1(self.level0(self.base_layer(x)))
        outputs: Dict[str, torch.Tensor] = {}
        for index in range(2, 6):
            x = getattr(self, f"level{index}")(x)
            if f"level{index}" in self.out_channels:
                outputs[f"level{index}"] = x
        return outputs
