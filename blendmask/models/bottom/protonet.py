"""The ProtoNet bottom module: bases from FPN features (AdelaiDet's bottom module).

Layout and module names follow AdelaiDet's ``ProtoNet`` (``basis_module.refine``,
``basis_module.tower``, ``basis_module.seg_head``):

- every input level (P3, P4, P5 by default) is refined by a 3x3 conv block to ``convs_dim``
  channels, resized to the first level's size (bilinear) and summed;
- ``tower``: ``num_convs`` conv blocks, x2 bilinear upsample, one conv block, 1x1 conv to
  ``num_bases`` bases, so the bases are at half the first level's stride (4 for P3);
- ``seg_head`` (training only): the semantic head on the first level
  (:class:`~blendmask.models.bottom.semantic_head.SemanticHead`), weighted by ``loss_weight``.
"""
from __future__ import annotations

from typing import List, Mapping, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .base import BottomModule, channels_of, conv_block
from .semantic_head import SemanticHead

__all__ = ["ProtoNet"]


class ProtoNet(BottomModule):
    """Bases from FPN features, plus the auxiliary semantic loss in training.

    Args:
        in_features: FPN level or backbone stage names, the first one sets the output resolution
            (e.g. ``("p3", "p4", "p5")``).
        in_channels: channels of the inputs (one int, or a mapping from input name).
        in_stride: stride of the first input level (8 for P3); the bases are at ``in_stride / 2``.
        num_bases: K.
        convs_dim: channels of the refine and tower convs.
        num_convs: conv blocks before the upsample.
        norm: ``"BN"`` or ``"none"``.
        num_classes: foreground classes (the semantic head predicts ``num_classes + 1``).
        loss_on: build the semantic head and its loss.
        loss_weight: weight of the semantic loss.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: Union[int, Mapping[str, int]],
        in_stride: int,
        num_bases: int,
        convs_dim: int = 128,
        num_convs: int = 3,
        norm: str = "BN",
        num_classes: int = 80,
        loss_on: bool = True,
        loss_weight: float = 0.3,
    ):
        if len(in_features) == 0:
            raise ValueError("basis module in_features must name at least one FPN level")
        super().__init__(in_features=in_features, in_stride=in_stride, out_stride=in_stride // 2, num_bases=num_bases,
                         loss_on=loss_on)
        self.loss_weight = loss_weight
        self.refine = nn.ModuleList([conv_block(channels_of(in_channels, n), convs_dim, norm) for n in self.in_features])
        tower: List[nn.Module] = [conv_block(convs_dim, convs_dim, norm) for _ in range(num_convs)]
        tower.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        tower.append(conv_block(convs_dim, convs_dim, norm))
        tower.append(nn.Conv2d(convs_dim, num_bases, kernel_size=1))
        self.tower = nn.Sequential(*tower)
        if loss_on:
            self.seg_head = SemanticHead(channels_of(in_channels, self.in_features[0]), convs_dim, num_classes, loss_weight)

    def bases(self, features: Mapping[str, Tensor]) -> Tensor:
        """The bases ``(N, K, Hb, Wb)`` at half the first input's stride."""
        x = self.refine[0](features[self.in_features[0]])
        for name, refine in zip(self.in_features[1:], self.refine[1:]):
            y = refine(features[name])
            x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.tower(x)
