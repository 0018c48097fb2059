"""Layers the model parts build on: norms (FrozenBN, BN, GN) and convolutions that own their norm."""
from .conv_norm import ConvNorm, DeformConvNorm
from .norm import NORMS, FrozenBatchNorm2d, convert_frozen_batchnorm, freeze_stages, get_norm, group_norm_groups

__all__ = ["ConvNorm", "DeformConvNorm", "FrozenBatchNorm2d", "NORMS", "convert_frozen_batchnorm", "freeze_stages",
           "get_norm", "group_norm_groups"]
