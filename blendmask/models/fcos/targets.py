"""FCOS training-target assignment (AdelaiDet's ``compute_targets_for_locations``).

A location is positive for a ground-truth box when
1. it lies inside the box's *center region* (center sampling: a square of half-side
   ``radius * stride`` around the box center, clipped to the box), or inside the box itself
   when center sampling is off;
2. the largest of its four regression distances lies in its level's size range
   (``sizes_of_interest`` (64, 128, 256, 512) give ``[-1, 64], [64, 128], ..., [512, inf]``);
3. among the boxes satisfying 1 and 2 it has the smallest area (the ambiguity rule).
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["compute_locations", "level_size_ranges", "FCOSTargets", "assign_targets_single", "assign_targets"]

INF = 100000000.0


def compute_locations(height: int, width: int, stride: int, device=None) -> Tensor:
    """Image-plane ``(x, y)`` of every cell of an ``height x width`` map at ``stride``.

    Returns ``(height * width, 2)``, row-major, at ``index * stride + stride // 2``.
    """
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1) + stride // 2


def level_size_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> List[Tuple[float, float]]:
    """``[(-1, s0), (s0, s1), ..., (s_last, INF)]``, one range per level."""
    bounds = [-1.0] + [float(s) for s in sizes_of_interest] + [INF]
    if len(bounds) - 1 != num_levels:
        raise ValueError(
            f"sizes_of_interest has {len(sizes_of_interest)} entries, expected {num_levels - 1} "
            f"for {num_levels} FPN levels"
        )
    return [(bounds[i], bounds[i + 1]) for i in range(num_levels)]


class FCOSTargets(NamedTuple):
    """Per-location targets of one image, locations ordered level by level.

    labels: ``(P,)`` int64 class, ``num_classes`` for background.
    reg_targets: ``(P, 4)`` ``(l, t, r, b)`` distances in pixels to the assigned box.
    gt_inds: ``(P,)`` int64 index of the assigned box in the image's boxes (``-1`` for background).
    """

    labels: Tensor
    reg_targets: Tensor
    gt_inds: Tensor


def _center_region_mask(boxes: Tensor, locations: Tensor, loc_strides: Tensor, radius: float) -> Tensor:
    """``(P, G)`` bool: location inside the box's center region (clipped to the box)."""
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    half = loc_strides[:, None] * radius  # (P, 1)
    x0 = torch.maximum(cx[None] - half, boxes[None, :, 0])
    y0 = torch.maximum(cy[None] - half, boxes[None, :, 1])
    x1 = torch.minimum(cx[None] + half, boxes[None, :, 2])
    y1 = torch.minimum(cy[None] + half, boxes[None, :, 3])
    xs, ys = locations[:, 0:1], locations[:, 1:2]
    dist = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)
    return dist.min(dim=2).values > 0


#: The most (location, box) pairs whose assignment tensors are held at once: an image with more
#: boxes is assigned in chunks of boxes (the same result, bit for bit), so memory stays bounded
#: however many instances it has.
MAX_ASSIGNMENT_PAIRS = 1 << 22


def _smallest_box_per_location(locations: Tensor, loc_strides: Tensor, loc_size_ranges: Tensor, boxes: Tensor, *,
                               center_sample: bool, radius: float) -> Tuple[Tensor, Tensor]:
    """``(min_area (P,), gt_inds (P,))``: the area and index of the smallest box each location
    may regress (inside it, or its center region, and in the location's size range); ``INF``
    and index 0 where there is none; ties go to the first box."""
    xs, ys = locations[:, 0:1], locations[:, 1:2]
    reg = torch.stack([xs - boxes[None, :, 0], ys - boxes[None, :, 1], boxes[None, :, 2] - xs, boxes[None, :, 3] - ys], dim=2)
    if center_sample:
        inside = _center_region_mask(boxes, locations, loc_strides, radius)
    else:
        inside = reg.min(dim=2).values > 0
    max_reg = reg.max(dim=2).values
    in_range = (max_reg >= loc_size_ranges[:, 0:1]) & (max_reg <= loc_size_ranges[:, 1:2])

    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    loc_to_area = area[None].expand(locations.shape[0], -1).clone()
    loc_to_area[~(inside & in_range)] = INF
    return loc_to_area.min(dim=1)  # ties go to the first box


def assign_targets_single(
    locations: Tensor,
    loc_strides: Tensor,
    loc_size_ranges: Tensor,
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    center_sample: bool = True,
    radius: float = 1.5,
    max_pairs: int = MAX_ASSIGNMENT_PAIRS,
) -> FCOSTargets:
    """Assign FCOS targets for one image.

    Args:
        locations: ``(P, 2)`` location coordinates of all levels.
        loc_strides: ``(P,)`` stride of each location's level.
        loc_size_ranges: ``(P, 2)`` ``[lo, hi]`` regression size range of each location.
        boxes: ``(G, 4)`` ground-truth boxes xyxy in pixels.
        labels: ``(G,)`` int64 classes in ``[0, num_classes)``.
        max_pairs: at most this many ``P x G`` pairs are held at once (boxes in chunks;
            the result does not depend on it).
    """
    num_locations = locations.shape[0]
    if boxes.numel() == 0:
        return FCOSTargets(
            labels=torch.full((num_locations,), num_classes, dtype=torch.int64, device=locations.device),
            reg_targets=locations.new_zeros((num_locations, 4)),
            gt_inds=torch.full((num_locations,), -1, dtype=torch.int64, device=locations.device),
        )
    chunk = max(1, max_pairs // max(num_locations, 1))
    min_area = gt_inds = None
    for start in range(0, boxes.shape[0], chunk):
        area, index = _smallest_box_per_location(locations, loc_strides, loc_size_ranges, boxes[start:start + chunk],
                                                 center_sample=center_sample, radius=radius)
        if min_area is None:
            min_area, gt_inds = area, index + start
        else:  # strictly smaller only: ties stay with the earlier box, as in one pass
            smaller = area < min_area
            min_area = torch.where(smaller, area, min_area)
            gt_inds = torch.where(smaller, index + start, gt_inds)
    background = min_area == INF

    target_labels = labels[gt_inds].clone()
    target_labels[background] = num_classes
    gt_inds = gt_inds.clone()
    gt_inds[background] = -1
    assigned = boxes[gt_inds.clamp(min=0)]  # (P, 4)
    xs, ys = locations[:, 0], locations[:, 1]
    reg_targets = torch.stack([xs - assigned[:, 0], ys - assigned[:, 1], assigned[:, 2] - xs, assigned[:, 3] - ys], dim=1)
    return FCOSTargets(labels=target_labels, reg_targets=reg_targets, gt_inds=gt_inds)


def assign_targets(
    locations_per_level: List[Tensor],
    strides: Sequence[int],
    sizes_of_interest: Sequence[float],
    gt_boxes: List[Tensor],
    gt_labels: List[Tensor],
    *,
    num_classes: int,
    center_sample: bool = True,
    radius: float = 1.5,
) -> FCOSTargets:
    """Assign targets for a batch; returns tensors flattened image-major.

    The location order is image, then level, then row-major position, i.e. the order of
    ``cat([pred_l.permute(0, 2, 3, 1).reshape(N, -1, C) for pred_l in preds], 1).reshape(-1, C)``.
    ``reg_targets`` are divided by each location's stride (AdelaiDet's normalised targets), and
    ``gt_inds`` index the concatenation of all images' boxes (``-1`` for background).
    """
    num_levels = len(locations_per_level)
    ranges = level_size_ranges(sizes_of_interest, num_levels)
    device = locations_per_level[0].device
    counts = [loc.shape[0] for loc in locations_per_level]
    locations = torch.cat(locations_per_level, dim=0)
    loc_strides = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(counts, strides)])
    loc_ranges = torch.cat([torch.tensor([r], device=device).expand(n, 2) for n, r in zip(counts, ranges)])

    labels, reg_targets, gt_inds = [], [], []
    offset = 0
    for boxes, cls in zip(gt_boxes, gt_labels):
        t = assign_targets_single(
            locations, loc_strides, loc_ranges, boxes, cls,
            num_classes=num_classes, center_sample=center_sample, radius=radius,
        )
        labels.append(t.labels)
        reg_targets.append(t.reg_targets / loc_strides[:, None])
        gt_inds.append(torch.where(t.gt_inds >= 0, t.gt_inds + offset, t.gt_inds))
        offset += boxes.shape[0]
    return FCOSTargets(torch.cat(labels), torch.cat(reg_targets), torch.cat(gt_inds))
