"""Mask geometry and encoding: crop GT masks to R x R training targets, paste R x R predictions
into images, encode pasted masks as COCO RLE.

The geometry follows detectron2's conventions (pixel ``i`` covers ``[i, i + 1)``, its center is
``i + 0.5``):
- :func:`crop_and_resize_masks` is ``BitMasks.crop_and_resize``: RoIAlign (aligned, adaptive
  sampling) of the binary mask inside the box, thresholded at 0.5;
- :func:`paste_masks_in_image` is ``paste_masks_in_image``: each image pixel center inside the box
  samples the R x R mask bilinearly (``grid_sample``, ``align_corners=False``).

:func:`encode_masks_rle` binarises mask probabilities at :data:`MASK_THRESHOLD` and encodes them
with pycocotools: the one encoder of the evaluation results and the prediction JSON.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["MASK_THRESHOLD", "crop_and_resize_masks", "encode_masks_rle", "paste_masks_in_image"]

#: A pixel belongs to an instance where its mask probability is at least this.
MASK_THRESHOLD = 0.5


def crop_and_resize_masks(masks: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop each mask with its box and resize the crop to ``size x size``.

    Args:
        masks: ``(n, H, W)`` binary masks (bool, uint8 or float).
        boxes: ``(n, 4)`` xyxy boxes in mask pixels, one per mask.
        size: output resolution R.
    Returns:
        ``(n, R, R)`` float32 tensor of 0/1 values.
    """
    if masks.dim() != 3 or boxes.dim() != 2 or boxes.shape[1] != 4 or masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected masks (n, H, W) and boxes (n, 4), got {tuple(masks.shape)} and {tuple(boxes.shape)}")
    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    boxes = boxes.to(torch.float32)
    rois = torch.cat([torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    crops = roi_align(masks[:, None].to(torch.float32), rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).to(torch.float32)


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Paste ``R x R`` masks into an image at their boxes.

    Args:
        masks: ``(n, R, R)`` mask probabilities (or logits; values are interpolated as given).
        boxes: ``(n, 4)`` xyxy boxes in image pixels.
        image_size: ``(height, width)`` of the output image.
    Returns:
        ``(n, 1, height, width)`` tensor, zero outside the boxes.
    """
    if masks.dim() != 3 or boxes.dim() != 2 or boxes.shape[1] != 4 or masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected masks (n, R, R) and boxes (n, 4), got {tuple(masks.shape)} and {tuple(boxes.shape)}")
    height, width = int(image_size[0]), int(image_size[1])
    out = masks.new_zeros((masks.shape[0], 1, height, width))
    for i, (mask, box) in enumerate(zip(masks, boxes.tolist())):
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            continue
        # integer extent of the pixels whose centers can fall inside the box
        px0, py0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        px1, py1 = min(int(math.ceil(x1)), width), min(int(math.ceil(y1)), height)
        if px1 <= px0 or py1 <= py0:
            continue
        xs = (torch.arange(px0, px1, device=masks.device, dtype=masks.dtype) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(py0, py1, device=masks.device, dtype=masks.dtype) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        patch = F.grid_sample(mask[None, None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
        out[i, 0, py0:py1, px0:px1] = patch[0, 0]
    return out


def encode_masks_rle(masks: Tensor, threshold: float = MASK_THRESHOLD) -> List[Dict[str, Any]]:
    """COCO compressed RLEs of masks binarised at ``masks >= threshold``.

    Args:
        masks: ``(n, H, W)`` mask probabilities (or a bool/uint8 binary mask, with the default
            threshold), on any device.
        threshold: binarisation threshold.
    Returns:
        ``n`` JSON-ready dicts ``{"size": [H, W], "counts": str}`` (pycocotools' RLE with its
        ``counts`` decoded from ASCII bytes), in the order of ``masks``.
    """
    if masks.dim() != 3:
        raise ValueError(f"expected masks (n, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    binary = (masks >= threshold).permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # (H, W, n)
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in mask_utils.encode(np.asfortranarray(binary))]
