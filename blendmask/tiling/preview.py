"""A picture-sized view of a large image and of its tiled detections, for the overlay.

The image is subsampled every ``step`` pixels in its own dtype (never converted whole to float),
and each instance's mask crop likewise, so drawing a 20,000-pixel image costs what drawing a
``max_side`` one does.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch

from blendmask.data.images import DecodedImage

__all__ = ["DEFAULT_PREVIEW_SIDE", "downscaled_view"]

DEFAULT_PREVIEW_SIDE = 2048


def downscaled_view(image: DecodedImage, result: Dict[str, Any], *,
                    max_side: int = DEFAULT_PREVIEW_SIDE) -> Tuple[torch.Tensor, Dict[str, Any], int]:
    """``(picture (3, h, w) float, result in its pixels, step)`` for an image and its
    :func:`~blendmask.tiling.sliced_predict` result; ``step`` is 1 when the image fits ``max_side``."""
    step = max(1, math.ceil(max(image.height, image.width) / max_side))
    small = DecodedImage(pixels=image.pixels[::step, ::step], bounds=image.bounds)
    crops = []
    for x0, y0, crop in result["mask_crops"]:
        # the crop's pixels that fall on the subsampling grid
        first_y, first_x = (-y0) % step, (-x0) % step
        crops.append(((x0 + first_x) // step, (y0 + first_y) // step, crop[first_y::step, first_x::step]))
    view = {"boxes": result["boxes"] / step, "labels": result["labels"], "scores": result["scores"], "mask_crops": crops}
    return small.to_tensor(), view, step
