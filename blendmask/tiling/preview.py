"""Pictures of a large image and of its tiled detections: a downscaled overview and a few
full-resolution crops of its densest regions.

The overview subsamples the image every ``step`` pixels in its own dtype (never converted whole to
float; 8-bit images are drawn from their own bytes), and each instance's mask crop likewise, so
drawing a 20,000-pixel image costs what drawing a ``max_side`` one does. A crop is a
``side x side`` window of the image at its native resolution, with the detections that reach into it clipped to it; the windows holding
the most detection centres are chosen (:func:`densest_windows`), and their places are outlined and
numbered on the overview (:func:`blendmask.visualize.outline_regions`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from blendmask.data.images import DecodedImage

from .grid import Window, tile_windows

__all__ = ["DEFAULT_PREVIEW_SIDE", "DEFAULT_CROP_SIDE", "DEFAULT_CROP_COUNT", "downscaled_view",
           "densest_windows", "crop_view"]

DEFAULT_PREVIEW_SIDE = 2048
#: Side of a full-resolution crop drawn beside the overview of an image larger than the preview.
DEFAULT_CROP_SIDE = 1024
#: Full-resolution crops drawn beside the overview of an image larger than the preview.
DEFAULT_CROP_COUNT = 4


def downscaled_view(image: DecodedImage, result: Dict[str, Any], *,
                    max_side: int = DEFAULT_PREVIEW_SIDE) -> Tuple[Image.Image, Dict[str, Any], int]:
    """``(picture (RGB, w x h), result in its pixels, step)`` for an image and its
    :func:`~blendmask.tiling.sliced_predict` result; ``step`` is 1 when the image fits ``max_side``."""
    step = max(1, math.ceil(max(image.height, image.width) / max_side))
    small = DecodedImage(pixels=image.pixels[::step, ::step], bounds=image.bounds)
    crops = []
    for x0, y0, crop in result["mask_crops"]:
        # the crop's pixels that fall on the subsampling grid
        first_y, first_x = (-y0) % step, (-x0) % step
        crops.append(((x0 + first_x) // step, (y0 + first_y) // step, crop[first_y::step, first_x::step]))
    view = {"boxes": result["boxes"] / step, "labels": result["labels"], "scores": result["scores"], "mask_crops": crops}
    return small.to_picture(), view, step


def densest_windows(result: Dict[str, Any], height: int, width: int, *, side: int = DEFAULT_CROP_SIDE,
                    count: int = DEFAULT_CROP_COUNT) -> List[Window]:
    """Up to ``count`` windows ``(y0, x0, y1, x1)`` of a ``height x width`` image, from the grid
    of ``side``-pixel windows without overlap (the last row and column moved back inside, as
    :func:`~blendmask.tiling.grid.tile_windows` does), that hold the most centres of
    ``result["boxes"] (n, 4)`` xyxy; windows holding none are not chosen; ties go to the first
    in row order. Returned in decreasing count."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"crop count must be an integer >= 0, got {count!r}")
    windows = tile_windows(height, width, tile=side, overlap=0.0)
    boxes = result["boxes"].numpy() if isinstance(result["boxes"], torch.Tensor) else np.asarray(result["boxes"])
    if count == 0 or boxes.size == 0:
        return []
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2  # (n,)
    held = np.array([np.count_nonzero((cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1))
                     for y0, x0, y1, x1 in windows])
    order = np.argsort(-held, kind="stable")
    return [windows[k] for k in order[:count] if held[k] > 0]


def crop_view(image: DecodedImage, result: Dict[str, Any], window: Window) -> Tuple[Image.Image, Dict[str, Any]]:
    """``(picture (RGB, w x h), result in its pixels)`` for the window ``(y0, x0, y1, x1)`` of
    the image at its native resolution: the detections whose mask (or, for an empty mask, box)
    reaches into the window, their masks and boxes clipped to it."""
    wy0, wx0, wy1, wx1 = window
    boxes = result["boxes"]
    keep, crops = [], []
    for i, (x0, y0, crop) in enumerate(result["mask_crops"]):
        h, w = crop.shape
        if h and w:
            top, left = max(y0, wy0), max(x0, wx0)
            bottom, right = min(y0 + h, wy1), min(x0 + w, wx1)
            if top >= bottom or left >= right:
                continue
            crops.append((left - wx0, top - wy0, crop[top - y0:bottom - y0, left - x0:right - x0]))
        else:
            bx0, by0, bx1, by1 = (float(v) for v in boxes[i])
            if bx1 <= wx0 or bx0 >= wx1 or by1 <= wy0 or by0 >= wy1:
                continue
            crops.append((0, 0, np.zeros((0, 0), dtype=bool)))
        keep.append(i)
    index = torch.as_tensor(keep, dtype=torch.int64)
    shift = torch.tensor([wx0, wy0, wx0, wy0], dtype=boxes.dtype)
    local = boxes[index] - shift
    local[:, 0::2] = local[:, 0::2].clamp(0, wx1 - wx0)
    local[:, 1::2] = local[:, 1::2].clamp(0, wy1 - wy0)
    view = {"boxes": local, "labels": result["labels"][index], "scores": result["scores"][index], "mask_crops": crops}
    return image.to_picture(wy0, wy1, wx0, wx1), view
