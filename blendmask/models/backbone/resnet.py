"""ResNet-50/101 bottom-up networks in two layouts.

- ``MSRAResNet``: detectron2/AdelaiDet layout (the stride sits in the first 1x1 conv of a
  block; module names ``stem.conv1``, ``res2``..``res5`` with ``conv1/conv2/conv3/shortcut``,
  each conv owning its ``.norm``), so AdelaiDet checkpoints map onto it by name. Optionally
  with deformable blocks (:mod:`.deform`) at an interval, as AdelaiDet's ``resnet_interval``.
- ``TorchvisionResNet``: torchvision's layout and names (stride in the 3x3 conv;
  ``conv1``, ``bn1``, ``layer1``..``layer4``), so torchvision ImageNet state dicts load.

Both return ``{"res3": (N, 512, H/8, W/8), "res4": (N, 1024, H/16, W/16),
"res5": (N, 2048, H/32, W/32)}`` for an input of shape (N, 3, H, W).
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from ..layers import ConvNorm, get_norm
from .deform import MSRADeformBottleneck

RESNET_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
RESNET_OUT_CHANNELS = {"res3": 512, "res4": 1024, "res5": 2048}
RESNET_STRIDES = {"res3": 8, "res4": 16, "res5": 32}


class MSRABottleneck(nn.Module):
    """1x1 (stride) -> 3x3 -> 1x1 bottleneck with a projection ``shortcut`` when shapes change."""

    def __init__(self, *, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int, norm: str):
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.shortcut: Optional[nn.Module] = ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
        else:
            self.shortcut = None
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride, norm=norm)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, padding=1, norm=norm)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class MSRAStem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max pool: (N, 3, H, W) -> (N, 64, H/4, W/4)."""

    def __init__(self, *, norm: str):
        super().__init__()
        self.conv1 = ConvNorm(3, 64, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class MSRAResNet(nn.Module):
    """ResNet in detectron2's MSRA layout (the one AdelaiDet's model zoo was trained with)."""

    freeze_stage_names = (("stem",), ("res2",), ("res3",), ("res4",), ("res5",))
    ignored_weight_prefixes = ()

    def __init__(self, *, name: str, norm: str, deform_on_per_stage: Sequence[bool] = (False,) * 4,
                 deform_modulated: bool = False, deform_interval: int = 1, with_res2: bool = False):
        """``deform_on_per_stage``: one flag per stage res2..res5; in a flagged stage, the blocks
        whose index is a multiple of ``deform_interval`` are :class:`MSRADeformBottleneck`
        (DCNv2 when ``deform_modulated``), the others plain."""
        super().__init__()
        if name not in RESNET_DEPTHS:
            raise ValueError(f"name must be one of {list(RESNET_DEPTHS)}, got {name!r}")
        deform_on_per_stage = tuple(deform_on_per_stage)
        if len(deform_on_per_stage) != 4 or not all(isinstance(flag, bool) for flag in deform_on_per_stage):
            raise ValueError(f"deform_on_per_stage must be 4 bools (res2..res5), got {deform_on_per_stage!r}")
        if not isinstance(deform_interval, int) or isinstance(deform_interval, bool) or deform_interval < 1:
            raise ValueError(f"deform_interval must be an int >= 1, got {deform_interval!r}")
        self.stem = MSRAStem(norm=norm)
        in_channels, bottleneck = 64, 64
        for index, num_blocks in enumerate(RESNET_DEPTHS[name]):
            out_channels = bottleneck * 4
            blocks: List[nn.Module] = []
            for block in range(num_blocks):
                stride = 2 if block == 0 and index > 0 else 1
                shape = dict(in_channels=in_channels, out_channels=out_channels,
                             bottleneck_channels=bottleneck, stride=stride, norm=norm)
                if deform_on_per_stage[index] and block % deform_interval == 0:
                    blocks.append(MSRADeformBottleneck(**shape, modulated=deform_modulated))
                else:
                    blocks.append(MSRABottleneck(**shape))
                in_channels = out_channels
            self.add_module(f"res{index + 2}", nn.Sequential(*blocks))
            bottleneck *= 2
        self.out_channels, self.strides = _out_shapes(with_res2)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.res2(self.stem(x))
        res3 = self.res3(x)
        res4 = self.res4(res3)
        res5 = self.res5(res4)
        return {**({"res2": x} if "res2" in self.strides else {}), "res3": res3, "res4": res4, "res5": res5}


class TorchvisionResNet(ResNet):
    """torchvision's ResNet without ``avgpool``/``fc``, returning the res3-res5 features."""

    freeze_stage_names = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
    ignored_weight_prefixes = ("fc.",)

    def __init__(self, *, name: str, norm: str, with_res2: bool = False):
        if name not in RESNET_DEPTHS:
            raise ValueError(f"name must be one of {list(RESNET_DEPTHS)}, got {name!r}")
        super().__init__(Bottleneck, list(RESNET_DEPTHS[name]), norm_layer=partial(get_norm, norm))
        del self.avgpool, self.fc
        self.out_channels, self.strides = _out_shapes(with_res2)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        res3 = self.layer2(x)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {**({"res2": x} if "res2" in self.strides else {}), "res3": res3, "res4": res4, "res5": res5}


def _out_shapes(with_res2: bool):
    """``(out_channels, strides)`` of the returned maps; ``with_res2`` adds res2 (256 channels, stride 4)."""
    if not with_res2:
        return dict(RESNET_OUT_CHANNELS), dict(RESNET_STRIDES)
    return {"res2": 256, **RESNET_OUT_CHANNELS}, {"res2": 4, **RESNET_STRIDES}
