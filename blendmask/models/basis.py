"""BlendMask's bottom module: ProtoNet-FPN bases and the auxiliary semantic head.

Layout and module names follow AdelaiDet's ``ProtoNet`` (``basis_module.refine``,
``basis_module.tower``, ``basis_module.seg_head``):

- every input level (P3, P4, P5 by default) is refined by a 3x3 conv block to ``convs_dim``
  channels, resized to the first level's size (bilinear) and summed;
- ``tower``: ``num_convs`` conv blocks, x2 bilinear upsample, one conv block, 1x1 conv to
  ``num_bases`` bases, so the bases are at half the first level's stride (4 for P3);
- ``seg_head`` (training only): a small semantic-segmentation head on the first level,
  trained with cross-entropy against per-pixel class labels built on the fly from the instance
  masks (:func:`semantic_targets_from_instances`) and weighted by ``loss_weight``.

Normalisation is plain BatchNorm; the model never converts itself. As AdelaiDet's SyncBN,
multi-process training synchronises the statistics: the trainer calls
:func:`blendmask.distributed.convert_sync_batchnorm` when a process group exists
(``nn.SyncBatchNorm`` on CUDA, a gloo-capable variant on the CPU).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendmask.polygons import PolygonMasks

__all__ = ["conv_block", "ProtoNet", "semantic_targets_from_instances", "SemanticHead"]


def conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (Kaiming-uniform init, ``a=1``) -> norm -> ReLU; the conv has a bias only without norm."""
    if norm not in ("BN", "none"):
        raise ValueError(f"basis module norm must be 'BN' or 'none', got {norm!r}")
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    layers: List[nn.Module] = [conv]
    if norm == "none":
        nn.init.constant_(conv.bias, 0.0)
    else:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


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


def channels_of(in_channels: Union[int, Mapping[str, int]], name: str) -> int:
    """Channels of input ``name``: one int for every input, or a mapping per input name."""
    return in_channels if isinstance(in_channels, int) else in_channels[name]


class ProtoNet(nn.Module):
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
        super().__init__()
        if len(in_features) == 0:
            raise ValueError("basis module in_features must name at least one FPN level")
        if num_bases < 1:
            raise ValueError(f"num_bases must be >= 1, got {num_bases}")
        self.in_features = tuple(in_features)
        self.in_stride = in_stride
        self.out_stride = in_stride // 2
        self.loss_on = loss_on
        self.loss_weight = loss_weight
        self.refine = nn.ModuleList([conv_block(channels_of(in_channels, n), convs_dim, norm) for n in self.in_features])
        tower: List[nn.Module] = [conv_block(convs_dim, convs_dim, norm) for _ in range(num_convs)]
        tower.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        tower.append(conv_block(convs_dim, convs_dim, norm))
        tower.append(nn.Conv2d(convs_dim, num_bases, kernel_size=1))
        self.tower = nn.Sequential(*tower)
        if loss_on:
            self.seg_head = SemanticHead(channels_of(in_channels, self.in_features[0]), convs_dim, num_classes, loss_weight)

    def forward(
        self,
        features: Mapping[str, Tensor],
        gt_masks: Optional[Sequence[Tensor]] = None,
        gt_labels: Optional[Sequence[Tensor]] = None,
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Bases ``(N, K, Hb, Wb)`` and, in training with ``loss_on``, ``{"loss_basis_sem": ...}``.

        ``gt_masks``/``gt_labels`` (per image ``(n, H, W)`` / ``(n,)``, in the padded-batch frame)
        are needed only for the semantic loss.
        """
        x = self.refine[0](features[self.in_features[0]])
        for name, refine in zip(self.in_features[1:], self.refine[1:]):
            y = refine(features[name])
            x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        bases = self.tower(x)
        losses: Dict[str, Tensor] = {}
        if self.training and self.loss_on:
            losses["loss_basis_sem"] = self.seg_head.loss(features[self.in_features[0]], self.in_stride, gt_masks, gt_labels)
        return bases, losses
