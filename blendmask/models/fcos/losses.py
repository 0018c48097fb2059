"""FCOS losses with AdelaiDet's normalisation.

- classification: sigmoid focal loss summed over all locations and classes, divided by the
  number of positives (averaged over ranks, at least 1);
- box regression: GIoU loss on ``(l, t, r, b)`` distances, weighted by the centerness target
  and divided by the sum of centerness targets (averaged over ranks, at least 1e-6);
- centerness: BCE with logits, summed and divided by the number of positives.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ...distributed import reduce_mean

__all__ = [
    "centerness_targets",
    "ltrb_iou_giou",
    "giou_loss",
    "FCOSLossOutputs",
    "fcos_losses",
]


def centerness_targets(reg_targets: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` for ``(P, 4)`` distances -> ``(P,)``."""
    if reg_targets.numel() == 0:
        return reg_targets.new_zeros(reg_targets.shape[0])
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return torch.sqrt(ratio)


def ltrb_iou_giou(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """IoU and GIoU of boxes given as ``(P, 4)`` distances from a shared location.

    As in AdelaiDet, the IoU is smoothed by +1 in numerator and denominator (in the units of
    the inputs, i.e. level strides during training): ``iou = (I + 1) / (U + 1)`` and
    ``giou = iou - (C - U) / C`` with ``C`` the area of the smallest enclosing box.
    """
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    enclose = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb))
    union = pred_area + target_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    giou = iou - (enclose - union) / enclose
    return iou, giou


def giou_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Sum of ``(1 - giou) * weight`` over ``(P, 4)`` distance pairs (a scalar)."""
    _, giou = ltrb_iou_giou(pred, target)
    losses = 1.0 - giou
    if weight is not None:
        losses = losses * weight
    return losses.sum()


class FCOSLossOutputs(NamedTuple):
    """Losses and the positive-location information BlendMask's mask loss needs.

    losses: ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr``.
    pos_inds: ``(Np,)`` indices of the positive locations in the flattened batch.
    ctr_targets: ``(Np,)`` centerness targets of the positives.
    loss_denorm: the normaliser of the box loss (sum of centerness targets over ranks).
    """

    losses: Dict[str, Tensor]
    pos_inds: Tensor
    ctr_targets: Tensor
    loss_denorm: float


def fcos_losses(
    logits: Tensor,
    reg_pred: Tensor,
    ctr_pred: Tensor,
    labels: Tensor,
    reg_targets: Tensor,
    *,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> FCOSLossOutputs:
    """FCOS losses over all locations of a batch.

    Args:
        logits: ``(P, C)`` class logits.
        reg_pred: ``(P, 4)`` predicted distances (stride units).
        ctr_pred: ``(P,)`` centerness logits.
        labels: ``(P,)`` int64 targets, ``num_classes`` = background.
        reg_targets: ``(P, 4)`` target distances (stride units).
    """
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, expected {num_classes}")
    pos_inds = torch.nonzero(labels != num_classes).squeeze(1)
    num_pos = reduce_mean(pos_inds.new_tensor(float(pos_inds.numel()), dtype=torch.float32))
    num_pos_avg = max(float(num_pos), 1.0)

    class_target = torch.zeros_like(logits)
    class_target[pos_inds, labels[pos_inds]] = 1.0
    loss_cls = sigmoid_focal_loss(logits, class_target, alpha=focal_alpha, gamma=focal_gamma, reduction="sum") / num_pos_avg

    pos_reg_pred = reg_pred[pos_inds]
    pos_reg_targets = reg_targets[pos_inds]
    ctr_targets = centerness_targets(pos_reg_targets)
    loss_denorm = max(float(reduce_mean(ctr_targets.sum())), 1e-6)
    loss_loc = giou_loss(pos_reg_pred, pos_reg_targets, ctr_targets) / loss_denorm
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_pred[pos_inds], ctr_targets, reduction="sum") / num_pos_avg
    losses = {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
    return FCOSLossOutputs(losses, pos_inds, ctr_targets, loss_denorm)
