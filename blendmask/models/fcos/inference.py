"""FCOS inference: candidates per level, class-aware NMS, top detections per image.

Follows AdelaiDet's ``predict_proposals``: per level, scores ``sigmoid(cls) * sigmoid(ctr)``
above ``score_thresh`` (``thresh_with_ctr``; otherwise the threshold is applied on
``sigmoid(cls)`` alone), at most ``pre_nms_topk`` candidates per level; then over all levels
a class-aware batched NMS and the ``post_nms_topk`` best detections. The reported score is
``sqrt(cls * ctr)``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["clip_boxes", "class_aware_nms", "fcos_inference_single_image"]


def clip_boxes(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Clip ``(n, 4)`` xyxy boxes to an image of ``(height, width)``."""
    h, w = image_size
    x = boxes[:, 0::2].clamp(min=0, max=w)
    y = boxes[:, 1::2].clamp(min=0, max=h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by per-class NMS, sorted by decreasing score.

    torchvision's ``batched_nms`` separates the classes by offsetting boxes by
    ``label * (max_coordinate + 1)``, which lets classes overlap when coordinates are negative
    (unclipped FCOS boxes); shifting all boxes to start at 0 first makes the offset exact.
    """
    if boxes.numel() == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    return batched_nms(boxes - boxes.min(), scores, labels, iou_threshold)


def fcos_inference_single_image(
    logits: Sequence[Tensor],
    reg: Sequence[Tensor],
    ctrness: Sequence[Tensor],
    locations: Sequence[Tensor],
    strides: Sequence[int],
    extras: Optional[Sequence[Tensor]] = None,
    *,
    score_thresh: float = 0.05,
    thresh_with_ctr: bool = True,
    pre_nms_topk: int = 1000,
    nms_thresh: float = 0.6,
    post_nms_topk: int = 100,
) -> Dict[str, Tensor]:
    """Detections of one image from its per-level head outputs.

    Args:
        logits: per level ``(C, Hl, Wl)`` class logits.
        reg: per level ``(4, Hl, Wl)`` distances in stride units.
        ctrness: per level ``(1, Hl, Wl)`` centerness logits.
        locations: per level ``(Hl * Wl, 2)`` location coordinates.
        strides: per level stride.
        extras: optional per level ``(E, Hl, Wl)`` features gathered at the kept locations
            (BlendMask's top-layer attentions).
    Returns:
        dict with ``boxes (n, 4)`` xyxy (not clipped), ``scores (n,)``, ``labels (n,)`` int64,
        ``extras (n, E)`` (only when ``extras`` is given), sorted by decreasing score.
    """
    all_boxes, all_scores, all_labels, all_extras = [], [], [], []
    for level, (cls_l, reg_l, ctr_l, loc_l, stride) in enumerate(zip(logits, reg, ctrness, locations, strides)):
        num_classes = cls_l.shape[0]
        cls_prob = cls_l.permute(1, 2, 0).reshape(-1, num_classes).sigmoid()  # (HW, C)
        ctr_prob = ctr_l.permute(1, 2, 0).reshape(-1).sigmoid()  # (HW,)
        scores = cls_prob * ctr_prob[:, None]
        candidates = (scores if thresh_with_ctr else cls_prob) > score_thresh
        scores = scores[candidates]
        loc_idx, labels = candidates.nonzero(as_tuple=True)
        if scores.numel() > pre_nms_topk:
            scores, top = scores.topk(pre_nms_topk)
            loc_idx, labels = loc_idx[top], labels[top]
        dist = reg_l.permute(1, 2, 0).reshape(-1, 4)[loc_idx] * stride
        loc = loc_l[loc_idx]
        all_boxes.append(torch.cat([loc - dist[:, :2], loc + dist[:, 2:]], dim=1))
        all_scores.append(torch.sqrt(scores))
        all_labels.append(labels)
        if extras is not None:
            ext = extras[level]
            all_extras.append(ext.permute(1, 2, 0).reshape(-1, ext.shape[0])[loc_idx])

    boxes = torch.cat(all_boxes)
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    keep = class_aware_nms(boxes, scores, labels, nms_thresh)
    keep = keep[:post_nms_topk]
    result = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    if extras is not None:
        result["extras"] = torch.cat(all_extras)[keep]
    return result
