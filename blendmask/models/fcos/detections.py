"""FCOS detections from the head outputs: candidates per level, class-aware NMS, top detections per image.

Follows AdelaiDet's ``predict_proposals``: per level, scores ``sigmoid(cls) * sigmoid(ctr)``
above ``score_thresh`` (``thresh_with_ctr``; otherwise the threshold is applied on
``sigmoid(cls)`` alone), at most ``pre_nms_topk`` candidates per level; then over all levels
a class-aware NMS and the ``post_nms_topk`` best detections. The reported score is
``sqrt(cls * ctr)``.

Detections whose box is empty once clipped to the image (zero width or height: FCOS's ReLU
regression predicts zero distances, and locations in the padding predict boxes outside the
image) are dropped *before* the NMS and the final top-k, so that up to ``post_nms_topk`` real
detections come out. AdelaiDet drops them after its top-k (detectron2's
``detector_postprocess``), so it can return fewer. Empty boxes overlap nothing, so dropping
them before the NMS suppresses nothing else.

This is the only implementation, used both by the eager model and by the exported graph
(:mod:`blendmask.deploy.graph`), so it has no data-dependent Python branches and ``torch.export``
traces it:

- per level, threshold-then-top-k is top-k over ``where(candidate, score, -1)`` followed by
  dropping the non-candidates: every candidate outranks every non-candidate, so this keeps the
  candidates, or the ``pre_nms_topk`` best of them when there are more;
- class-aware NMS is one ``torchvision.ops.nms`` call (ONNX ``NonMaxSuppression``) on boxes
  shifted to start at 0 and offset per class by more than their span, so that boxes of different
  classes never overlap (the offset of torchvision's ``batched_nms``, ``label * (max + 1)``,
  lets them overlap when coordinates are negative, which happens for unclipped boxes).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["clip_boxes", "nonempty_boxes", "class_aware_nms", "fcos_inference_single_image"]


def clip_boxes(boxes: Tensor, image_size: Union[Tensor, Tuple[int, int]]) -> Tensor:
    """Clip ``(n, 4)`` xyxy boxes to ``[0, w] x [0, h]``.

    ``image_size`` is ``(height, width)``: Python ints (eager model) or a ``(2,)`` tensor
    (a traced input of the exported graph).
    """
    if not isinstance(image_size, Tensor):
        image_size = boxes.new_tensor([float(image_size[0]), float(image_size[1])])
    image_size = image_size.to(boxes.dtype)
    upper = torch.stack([image_size[1], image_size[0], image_size[1], image_size[0]])
    return torch.minimum(boxes.clamp(min=0), upper)


def nonempty_boxes(boxes: Tensor) -> Tensor:
    """``(n,)`` bool: the ``(n, 4)`` xyxy boxes with positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


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


def fcos_inference_single_image(
    logits: Sequence[Tensor],
    reg: Sequence[Tensor],
    ctrness: Sequence[Tensor],
    locations: Sequence[Tensor],
    strides: Sequence[int],
    *,
    image_size: Optional[Union[Tensor, Tuple[int, int]]] = None,
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
        image_size: optional ``(height, width)`` (ints or a ``(2,)`` tensor) of the image:
            boxes empty once clipped to it (see :func:`clip_boxes`) are dropped before the NMS
            and the top-k; without it, boxes empty as predicted are. The returned boxes are
            *not* clipped (BlendMask blends and pastes with the whole predicted box).
    Returns:
        dict with ``boxes (n, 4)`` float32 xyxy as predicted (unclipped), ``scores (n,)`` float32,
        ``labels (n,)`` int64 and ``locations (n,)`` int64, the index of each detection's location
        among the image's locations, level after level (``sum_{l' < l} Hl' * Wl' + y * Wl + x``;
        where BlendMask's top layer reads its attentions), sorted by decreasing score,
        ``n <= post_nms_topk``, every box non-empty.
    """
    all_boxes, all_scores, all_labels, all_locations = [], [], [], []
    level_start = 0
    for cls_l, reg_l, ctr_l, loc_l, stride in zip(logits, reg, ctrness, locations, strides):
        # decode in float32 whatever autocast made of the head: boxes and scores are never rounded
        cls_l, reg_l, ctr_l = cls_l.float(), reg_l.float(), ctr_l.float()
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
        all_locations.append(loc_idx + level_start)
        level_start = level_start + loc_l.shape[0]

    boxes = torch.cat(all_boxes)
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    locations = torch.cat(all_locations)
    valid = nonempty_boxes(clip_boxes(boxes, image_size) if image_size is not None else boxes)
    valid_idx = valid.nonzero()[:, 0]
    boxes, scores, labels, locations = boxes[valid_idx], scores[valid_idx], labels[valid_idx], locations[valid_idx]
    keep = class_aware_nms(boxes, scores, labels, nms_thresh)[:post_nms_topk]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "locations": locations[keep]}
