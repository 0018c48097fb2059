"""Convolutions that own their norm, named as detectron2's ``Conv2d`` (the conv's ``.norm``
child), so AdelaiDet checkpoints map onto the modules built from them by name."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from .norm import FrozenBatchNorm2d, get_norm

__all__ = ["ConvNorm", "DeformConvNorm"]


class ConvNorm(nn.Conv2d):
    """A conv (no bias) followed by its ``norm`` child, named as detectron2's ``Conv2d``.

    In training, a FrozenBN ``norm`` (a constant affine ``x * scale + shift``) is applied to the
    filters and as the conv's bias, ``conv(x, W * scale) + shift``, instead of to the output: the
    same function with one pass over the activation fewer; gradients reach ``W`` through the product. In eval the norm runs on
    the output, detectron2's arithmetic, which the AdelaiDet parity fixtures check to float
    precision (a different rounding moves R_101_dcni3_5x's boxes past their 1e-3 px); the
    inference path folds it into the weights once (:mod:`blendmask.models.batchnorm_folding`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, norm: str):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = get_norm(norm, out_channels)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and isinstance(self.norm, FrozenBatchNorm2d) and self.bias is None:
            scale, shift = self.norm.affine()
            return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), shift)
        return self.norm(super().forward(x))


class DeformConvNorm(ConvNorm):
    """A 3x3 deformable conv (no bias) followed by its ``norm`` child.

    forward(x (N, C, H, W), offset (N, 18, H', W'), mask (N, 9, H', W') or None) -> (N, C_out, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str):
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=1, norm=norm)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                            dilation=self.dilation, mask=mask)
        return self.norm(out)
