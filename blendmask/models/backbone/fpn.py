"""Feature pyramid on top of a bottom-up network, named as detectron2's FPN.

``fpn_lateral{3,4,5}`` (1x1) and ``fpn_output{3,4,5}`` (3x3) build P3-P5 from the bottom-up
network's three outputs at strides 8, 16, 32 (res3-res5 of a ResNet, level3-level5 of DLA-34) with
nearest-neighbour top-down fusion (and ``fpn_lateral2``/``fpn_output2`` for P2 when the bottom-up
network also returns its stride-4 map, as detectron2's FPN on res2-res5 in the panoptic configs); ``top_block.p6``/``top_block.p7`` (3x3, stride 2) add
P6 = conv(P5) and P7 = conv(relu(P6)) as AdelaiDet's ``LastLevelP6P7(..., "p5")``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_IN_STRIDES = (8, 16, 32)
_IN_STRIDES_P2 = (4, 8, 16, 32)  # with the stride-4 map: P2-P5


def _xavier_fill(conv: nn.Conv2d) -> nn.Conv2d:
    """Caffe2's XavierFill as detectron2's ``c2_xavier_fill``: kaiming-uniform(a=1), zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class TopBlock(nn.Module):
    """Extra levels from P5: ``p6`` (num_levels >= 1) and ``p7`` on relu(P6) (num_levels == 2)."""

    def __init__(self, *, channels: int, num_levels: int):
        super().__init__()
        if num_levels not in (1, 2):
            raise ValueError(f"num_levels must be 1 or 2, got {num_levels!r}")
        self.num_levels = num_levels
        self.p6 = _xavier_fill(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        if num_levels == 2:
            self.p7 = _xavier_fill(nn.Conv2d(channels, channels, 3, stride=2, padding=1))

    def forward(self, p5: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(p5)
        if self.num_levels == 1:
            return [p6]
        return [p6, self.p7(F.relu(p6))]


class FPNBackbone(nn.Module):
    """Bottom-up network + FPN; the module returned by :func:`build_backbone`.

    forward: (N, 3, H, W) normalised image -> ``OrderedDict`` ``"p3"``..``"p{5+top_levels}"``,
    each (N, out_channels, ceil(H/stride), ceil(W/stride)) for H, W multiples of 32.

    With ``return_stages = True`` the dict also holds the bottom-up stages ``"c3"``, ``"c4"``,
    ``"c5"`` (strides 8, 16, 32; channels in ``stage_channels``), for a bottom module fed by the
    backbone instead of the FPN (the paper's Table 4, "C3, C5").

    Attributes: ``out_channels`` (int), ``strides`` ({"p3": 8, ...}), ``stage_strides``
    ({"c3": 8, "c4": 16, "c5": 32}), ``stage_channels``, ``return_stages`` (False), ``size_divisibility`` (32),
    and the input convention ``input_format`` ("RGB"/"BGR"), ``pixel_mean``/``pixel_std``
    (lists of 3 floats on the 0-255 scale, in ``input_format`` channel order).
    """

    def __init__(self, *, bottom_up: nn.Module, out_channels: int, top_levels: int,
                 input_format: str, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels <= 0:
            raise ValueError(f"fpn_out_channels must be a positive int, got {out_channels!r}")
        if top_levels not in (0, 1, 2):
            raise ValueError(f"fpn_top_levels must be 0, 1 or 2, got {top_levels!r}")
        self.bottom_up = bottom_up
        # The bottom-up outputs, in stride order 8, 16, 32 (``bottom_up.strides`` maps name -> stride).
        self.in_features = sorted(bottom_up.strides, key=bottom_up.strides.get)
        in_strides = tuple(bottom_up.strides[name] for name in self.in_features)
        if in_strides not in (_IN_STRIDES, _IN_STRIDES_P2):
            raise ValueError(f"the bottom-up network must give strides {_IN_STRIDES} or {_IN_STRIDES_P2}, "
                             f"got {bottom_up.strides}")
        first = int(math.log2(in_strides[0]))
        for name in self.in_features:
            level = int(math.log2(bottom_up.strides[name]))
            in_channels = bottom_up.out_channels[name]
            self.add_module(f"fpn_lateral{level}", _xavier_fill(nn.Conv2d(in_channels, out_channels, 1)))
            self.add_module(f"fpn_output{level}", _xavier_fill(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.top_block = TopBlock(channels=out_channels, num_levels=top_levels) if top_levels else None
        self.out_channels = out_channels
        self.strides: Dict[str, int] = {f"p{level}": 2 ** level for level in range(first, 6 + top_levels)}
        self.size_divisibility = max(bottom_up.strides.values())
        # Bottom-up stages named by level: "c3".."c5" (and "c2" with the stride-4 map).
        stage_names = [f"c{int(math.log2(bottom_up.strides[n]))}" for n in self.in_features]
        self.stage_strides: Dict[str, int] = {c: bottom_up.strides[n] for c, n in zip(stage_names, self.in_features)}
        self.stage_channels: Dict[str, int] = {
            c: bottom_up.out_channels[n] for c, n in zip(stage_names, self.in_features)
        }
        self.return_stages = False
        self.input_format = input_format
        self.pixel_mean = [float(v) for v in pixel_mean]
        self.pixel_std = [float(v) for v in pixel_std]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"backbone input must have shape (N, 3, H, W), got {tuple(x.shape)}")
        bottom_up = self.bottom_up(x)
        features = [bottom_up[name] for name in self.in_features]  # strides (4,) 8, 16, 32
        first = 6 - len(features)
        prev = self.fpn_lateral5(features[-1])
        outputs = [self.fpn_output5(prev)]
        for level in range(4, first - 1, -1):
            lateral = getattr(self, f"fpn_lateral{level}")(features[level - first])
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, getattr(self, f"fpn_output{level}")(prev))
        if self.top_block is not None:
            outputs.extend(self.top_block(outputs[-1]))
        pyramid = OrderedDict(zip(self.strides, outputs))
        if self.return_stages:
            pyramid.update(zip(self.stage_strides, features))
        return pyramid
