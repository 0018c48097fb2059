"""The DeepLabV3+ bottom module (the paper's Table 7 main setting), a choice next to the ProtoNet.

- ``aspp``: atrous spatial pyramid pooling on the deepest input (``in_features[-1]``, e.g. P5 or
  C5): a 1x1 branch, three 3x3 branches with dilations ``ASPP_RATES``, and an image-pooling
  branch (global average, 1x1, broadcast back), each conv-BN-ReLU at ``width`` channels,
  concatenated and projected by a 1x1 conv-BN-ReLU to ``width``;
- ``shallow``: a 1x1 conv-BN-ReLU reducing the shallow input (``in_features[0]``, e.g. P3, P2 or
  C3) to ``SHALLOW_CHANNELS``;
- ``fuse``: the ASPP output upsampled (bilinear) to the shallow map, concatenated with it, two
  3x3 conv blocks at ``width`` and a 1x1 conv to ``num_bases``.

The bases are at the shallow input's stride (8 for P3 / C3, 4 for P2: Table 7's "+s/4"). The
auxiliary semantic loss is the ProtoNet's (:class:`~blendmask.models.bottom.semantic_head.SemanticHead`)
on the shallow input. Same call signature and attributes as the ProtoNet: a
:class:`~blendmask.models.bottom.base.BottomModule`.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BottomModule, channels_of, conv_block
from .semantic_head import SemanticHead

__all__ = ["DeepLabV3PlusBottom", "ASPP", "ASPP_RATES", "SHALLOW_CHANNELS"]

#: Dilations of the 3x3 ASPP branches: DeepLabV3's (6, 12, 18) are for a stride-16 map; the
#: deep input here is at stride 32 (P5 / C5), so they are scaled down to (2, 4, 6).
ASPP_RATES = (2, 4, 6)
#: Channels the shallow input is reduced to before the fusion (DeepLabV3+'s 48).
SHALLOW_CHANNELS = 48


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """``(N, in_channels, H, W) -> (N, width, H, W)``: see the module docstring."""

    def __init__(self, in_channels: int, width: int, rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, width, 1)] + [_conv_bn_relu(in_channels, width, 3, r) for r in rates]
        )
        self.pooling = _conv_bn_relu(in_channels, width, 1)
        self.project = _conv_bn_relu(width * (len(rates) + 2), width, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        # a BatchNorm over a 1x1 map with batch 1 has no statistics: pool, conv, then normalise the broadcast map
        pooled = self.pooling[0](x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        # not the in-place pooling[2]: with the norm folded away (fold_batchnorm) its input is the expanded view
        outs.append(F.relu(self.pooling[1](pooled)))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusBottom(BottomModule):
    """Bases ``(N, K, H/s, W/s)`` at the shallow input's stride ``s``, plus the semantic loss in training.

    Args:
        in_features: two or more input names; ``in_features[0]`` is the shallow input (sets the
            output stride), ``in_features[-1]`` the deep one (ASPP). Inputs in between are unused.
        in_channels: channels of the inputs (one int, or a mapping from input name).
        in_stride: stride of ``in_features[0]``.
        num_bases: K.
        width: channels of the ASPP and the fusion convs (the paper: 128, or 256 for "+128").
        norm: ``"BN"`` or ``"none"`` for the fusion conv blocks.
        num_classes, loss_on, loss_weight: the auxiliary semantic head, as in the ProtoNet.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: Union[int, Mapping[str, int]],
        in_stride: int,
        num_bases: int,
        width: int = 128,
        norm: str = "BN",
        num_classes: int = 80,
        loss_on: bool = True,
        loss_weight: float = 0.3,
    ):
        if len(in_features) < 2:
            raise ValueError(f"the deeplabv3plus bottom module needs a shallow and a deep input (e.g. ('p3', 'p5')), "
                             f"got in_features={tuple(in_features)}")
        super().__init__(in_features=in_features, in_stride=in_stride, out_stride=in_stride, num_bases=num_bases,
                         loss_on=loss_on)
        shallow, deep = self.in_features[0], self.in_features[-1]
        self.aspp = ASPP(channels_of(in_channels, deep), width)
        self.shallow = _conv_bn_relu(channels_of(in_channels, shallow), SHALLOW_CHANNELS, 1)
        self.fuse = nn.Sequential(
            conv_block(width + SHALLOW_CHANNELS, width, norm),
            conv_block(width, width, norm),
            nn.Conv2d(width, num_bases, kernel_size=1),
        )
        if loss_on:
            self.seg_head = SemanticHead(channels_of(in_channels, shallow), width, num_classes, loss_weight)

    def bases(self, features: Mapping[str, Tensor]) -> Tensor:
        """The bases ``(N, K, Hs, Ws)`` at the shallow input's stride."""
        low = self.shallow(features[self.in_features[0]])
        high = F.interpolate(self.aspp(features[self.in_features[-1]]), size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.fuse(torch.cat([high, low], dim=1))
