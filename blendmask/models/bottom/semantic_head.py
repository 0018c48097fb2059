"""The auxiliary semantic-segmentation head of the bottom modules and its targets.

The targets are per-pixel class labels built on the fly from the instance masks
(:func:`semantic_targets_from_instances`), as AdelaiDet's ``prepare_thing_sem_from_instance.py``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendmask.polygons import PolygonMasks

__all__ = ["SemanticHead", "semantic_targets_from_instances"]


def semantic_targets_from_instances(
    masks: Sequence[Tensor],
    labels: Sequence[Tensor],
    output_size: Tuple[int, int],
    stride: int,
) -> Tensor:
    """Per-pixel class labels at ``stride`` built from instance masks.

    Follows AdelaiDet's ``prepare_thing_sem_from_instance.py`` + its nearest downsampling:
    background is 0, an instance of class ``c`` paints ``c + 1`` (later instances overwrite
    earlier ones), and the label of output cell ``(i, j)`` is that of input pixel
    ``(i * stride, j * stride)``; cells outside a mask's extent are background. Polygon masks are
    rasterised on those pixels only (:meth:`PolygonMasks.rasterize
    <blendmask.polygons.PolygonMasks.rasterize>` at ``stride``), one instance at a time.

    Args:
        masks: per image ``(n, H, W)`` binary masks in the (resized, unpadded) image frame, or
            its ``PolygonMasks``.
        labels: per image ``(n,)`` int64 classes.
        output_size: ``(Hs, Ws)`` size of the semantic logits.
        stride: pixels per output cell.
    Returns:
        ``(N, Hs, Ws)`` int64 labels in ``[0, num_classes]``.
    """
    hs, ws = output_size
    device = next((m.device for m in masks if isinstance(m, Tensor)), labels[0].device if len(labels) else None)
    out = torch.zeros((len(masks), hs, ws), dtype=torch.int64, device=device)
    for i, (m, cls) in enumerate(zip(masks, labels)):
        if isinstance(m, PolygonMasks):
            h = min(math.ceil(m.image_size[0] / stride), hs)
            w = min(math.ceil(m.image_size[1] / stride), ws)
            canvas = out[i, :h, :w]
            for j, c in enumerate(cls.tolist()):
                canvas[m.rasterize(j, stride, (h, w)).to(device)] = c + 1
            continue
        if m.shape[0] == 0:
            continue
        sub = m[:, ::stride, ::stride][:, :hs, :ws].bool()  # (n, h, w)
        canvas = out[i, : sub.shape[1], : sub.shape[2]]
        for inst_mask, c in zip(sub, cls.tolist()):
            canvas[inst_mask] = c + 1
    return out


class SemanticHead(nn.Sequential):
    """The auxiliary semantic-segmentation head of a bottom module and its loss: two 3x3
    conv-BN-ReLU blocks and a 1x1 conv to ``num_classes + 1`` logits on one input map, trained
    with cross-entropy against :func:`semantic_targets_from_instances`, times ``loss_weight``.
    Its modules are ``0``..``6`` of the sequence (AdelaiDet's ``seg_head`` names)."""

    def __init__(self, in_channels: int, width: int, num_classes: int, loss_weight: float):
        super().__init__(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, num_classes + 1, kernel_size=1, stride=1),
        )
        self.loss_weight = loss_weight

    def loss(self, feature: Tensor, stride: int, gt_masks: Optional[Sequence[Tensor]],
             gt_labels: Optional[Sequence[Tensor]]) -> Tensor:
        """Weighted cross-entropy of the logits of ``feature`` (N, C, H, W) at ``stride``."""
        if gt_masks is None or gt_labels is None:
            raise ValueError("the basis module's semantic loss needs gt_masks and gt_labels in training")
        sem_logits = self(feature)
        sem_targets = semantic_targets_from_instances(gt_masks, gt_labels, tuple(sem_logits.shape[-2:]), stride)
        return F.cross_entropy(sem_logits, sem_targets) * self.loss_weight
