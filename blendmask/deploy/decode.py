"""Traceable FCOS decoding and class-aware NMS for the exported inference graph.

:func:`blendmask.models.fcos.inference.fcos_inference_single_image` branches on data-dependent
sizes (``if scores.numel() > pre_nms_topk``, and torchvision's ``batched_nms`` switches
algorithm on the box count), which ``torch.export`` cannot trace. :func:`decode_detections`
computes the same detections without such branches:

- per level, the threshold-then-top-k of the eager path becomes top-k over
  ``where(candidate, score, -1)`` followed by dropping the non-candidates: the same set, because
  every candidate outranks every non-candidate;
- class-aware NMS uses the per-class coordinate offset on boxes shifted to start at 0, so that
  boxes of different classes can never overlap (the offset of torchvision's ``batched_nms``,
  ``label * (max + 1)``, lets them overlap when coordinates are negative, which happens for
  unclipped boxes). ``torchvision.ops.nms`` exports to ONNX ``NonMaxSuppression``.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["class_aware_nms", "decode_detections"]


def _clip_boxes(boxes: Tensor, image_size: Tensor) -> Tensor:
    """Clip ``(n, 4)`` xyxy boxes to ``[0, w] x [0, h]``; ``image_size`` is a ``(2,)`` float ``[h, w]``
    tensor (a traced input, unlike the Python ints of ``clip_boxes`` in the eager model)."""
    upper = torch.stack([image_size[1], image_size[0], image_size[1], image_size[0]])
    return torch.minimum(boxes.clamp(min=0), upper)


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS run separately per label, as one ``nms`` call on class-offset boxes.

    Args:
        boxes: ``(n, 4)`` xyxy boxes.
        scores: ``(n,)`` scores.
        labels: ``(n,)`` int64 labels.
        iou_threshold: boxes with IoU above it (same label) are suppressed.
    Returns:
        ``(k,)`` int64 indices of the kept boxes, by decreasing score.
    """
    # min/max over the boxes and one 0, so that empty inputs need no data-dependent branch
    coords = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)])
    low = coords.min()
    span = coords.max() - low + 1
    shifted = boxes - low + (labels.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def decode_detections(
    logits: Sequence[Tensor],
    reg: Sequence[Tensor],
    ctrness: Sequence[Tensor],
    locations: Sequence[Tensor],
    strides: Sequence[int],
    extras: Sequence[Tensor],
    image_size: Tensor,
    *,
    score_thresh: float,
    thresh_with_ctr: bool,
    pre_nms_topk: int,
    nms_thresh: float,
    post_nms_topk: int,
) -> Dict[str, Tensor]:
    """Detections of one image, equal to ``fcos_inference_single_image`` + ``clip_boxes``.

    Args:
        logits: per level ``(C, Hl, Wl)`` class logits.
        reg: per level ``(4, Hl, Wl)`` distances in stride units.
        ctrness: per level ``(1, Hl, Wl)`` centerness logits.
        locations: per level ``(Hl * Wl, 2)`` location coordinates.
        strides: per level stride.
        extras: per level ``(E, Hl, Wl)`` features gathered at the kept locations.
        image_size: ``(2,)`` float ``[height, width]`` the boxes are clipped to.
    Returns:
        dict with ``boxes (n, 4)`` clipped xyxy, ``scores (n,)`` = sqrt(cls * ctr),
        ``labels (n,)`` int64 and ``extras (n, E)``, sorted by decreasing score, ``n <= post_nms_topk``.
    """
    all_boxes, all_scores, all_labels, all_extras = [], [], [], []
    for cls_l, reg_l, ctr_l, loc_l, ext_l, stride in zip(logits, reg, ctrness, locations, extras, strides):
        num_classes = cls_l.shape[0]
        cls_prob = cls_l.permute(1, 2, 0).reshape(-1, num_classes).sigmoid()  # (HW, C)
        ctr_prob = ctr_l.permute(1, 2, 0).reshape(-1).sigmoid()  # (HW,)
        scores = cls_prob * ctr_prob[:, None]  # (HW, C)
        candidates = (scores if thresh_with_ctr else cls_prob) > score_thresh
        ranked = torch.where(candidates, scores, torch.full_like(scores, -1.0)).reshape(-1)  # (HW * C,)
        top_scores, top_idx = ranked.topk(min(pre_nms_topk, ranked.shape[0]))
        keep = top_scores >= 0
        top_scores, top_idx = top_scores[keep], top_idx[keep]
        loc_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
        labels = top_idx - loc_idx * num_classes
        dist = reg_l.permute(1, 2, 0).reshape(-1, 4)[loc_idx] * stride  # (k, 4)
        loc = loc_l[loc_idx]  # (k, 2)
        all_boxes.append(torch.cat([loc - dist[:, :2], loc + dist[:, 2:]], dim=1))
        all_scores.append(torch.sqrt(top_scores))
        all_labels.append(labels)
        all_extras.append(ext_l.permute(1, 2, 0).reshape(-1, ext_l.shape[0])[loc_idx])

    boxes = torch.cat(all_boxes)
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    keep = class_aware_nms(boxes, scores, labels, nms_thresh)[:post_nms_topk]
    return {
        "boxes": _clip_boxes(boxes[keep], image_size),
        "scores": scores[keep],
        "labels": labels[keep],
        "extras": torch.cat(all_extras)[keep],
    }
