"""Normalisation layers of the model parts: FrozenBN, BN, GN, and the freezing of backbone stages."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torchvision
from torch import nn

NORMS = ("FrozenBN", "BN", "GN")


class FrozenBatchNorm2d(torchvision.ops.misc.FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` that keeps the input's dtype, as detectron2's does.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` on ``(N, C, H, W)``;
    all four are buffers (the state-dict keys ``weight``, ``bias``, ``running_mean``,
    ``running_var``), ``eps`` defaults to 1e-5 (detectron2's), and a ``num_batches_tracked``
    found in a state dict is ignored, so BatchNorm2d checkpoints load into it. All of that is
    torchvision's; only :meth:`forward` differs.

    Why not torchvision's class as it is: its forward multiplies the input by the float32
    buffers, so under autocast every frozen-stage activation is promoted from fp16/bf16 to
    float32, which raises the peak memory of a training step; outputs are identical in float32.
    """

    def affine(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)``, both ``(C,)`` in the buffers' dtype: the norm is ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        """A FrozenBN carrying ``bn``'s affine parameters and running statistics."""
        frozen = cls(bn.num_features, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """Number of GN groups: 32 when it divides ``channels`` (the ResNet case), else the gcd."""
    return math.gcd(max_groups, channels)


def get_norm(norm: str, channels: int) -> nn.Module:
    """A norm layer over ``channels`` features: ``"FrozenBN"``, ``"BN"`` or ``"GN"`` (32 groups)."""
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d (and SyncBatchNorm) inside ``module`` by a FrozenBN, in place.

    Returns the converted module (a new one when ``module`` itself is a batch norm).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        converted = convert_frozen_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def freeze_stages(root: nn.Module, stages: Sequence[Sequence[str]], freeze_at: int) -> None:
    """Freeze the first ``freeze_at`` stages of ``root``, as detectron2 does.

    ``stages`` lists, in order (stem, res2, res3, res4, res5), the names of the submodules
    of ``root`` that make up each stage, e.g. ``[["conv1", "bn1"], ["layer1"], ...]``.
    Frozen stages lose ``requires_grad`` and their batch norms become FrozenBN.
    """
    if not isinstance(freeze_at, int) or isinstance(freeze_at, bool) or not 0 <= freeze_at <= len(stages):
        raise ValueError(f"freeze_at must be an int in [0, {len(stages)}], got {freeze_at!r}")
    for names in stages[:freeze_at]:
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name)
            module = getattr(parent, attr)
            for param in module.parameters():
                param.requires_grad_(False)
            setattr(parent, attr, convert_frozen_batchnorm(module))
