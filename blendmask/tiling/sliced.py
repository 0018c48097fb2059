"""Sliced prediction: a large image cut into tiles at its native resolution, the tiles predicted
a batch per model call, their detections merged across the seams.

::

    from blendmask.data import decode_image
    from blendmask.predict import Predictor
    from blendmask.tiling import sliced_predict

    predictor = Predictor.from_weights("model_final.pth", max_image_pixels=10**9)
    image = decode_image("slide.tif", reading=predictor.reading)   # stays uint8 / uint16
    result = sliced_predict(predictor, image, tile="auto", overlap=0.2)
    result["masks_rle"][0]       # COCO RLE of the first instance in the whole image

Memory: the image in its own dtype, one batch of float tiles and the model's activations on them,
and each detection's mask as a crop of its own extent (:mod:`blendmask.tiling.pieces`); no
image-sized float array and no image-sized mask is ever made. The per-image caps of the model
(``post_nms_topk``) apply per tile, so an image holds as many instances as its tiles do.
"""
from __future__ import annotations

from typing import Any, Dict, Union

import numpy as np
import torch
from tqdm import tqdm

from blendmask.data.images import DecodedImage
from blendmask.models.mask_ops import encode_region_rle

from .grid import auto_tile_size, check_tile_options, tile_windows
from .merge import merge_pieces
from .pieces import Pieces

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_MERGE_THRESHOLD", "sliced_predict", "resolve_tile"]

DEFAULT_OVERLAP = 0.2
#: Mask intersection over the smaller at which a tile's piece joins an instance (see merge.py).
DEFAULT_MERGE_THRESHOLD = 0.3


def resolve_tile(model, tile: Union[int, str], overlap: float) -> int:
    """The tile size in pixels for ``model``: ``tile`` itself, checked, or for ``"auto"`` its test
    size (:func:`~blendmask.tiling.grid.auto_tile_size`)."""
    transform = getattr(model, "transform", None)
    if tile == "auto":
        if transform is None:
            raise ValueError("tile='auto' needs a model with an image transform (its test size)")
        tile = auto_tile_size(transform.min_size_test, transform.max_size_test)
    strides = getattr(getattr(model, "proposal_generator", None), "strides", None) or (1,)
    check_tile_options(tile, overlap, largest_stride=int(max(strides)))
    return tile


def _tile_tensor(image: Union[DecodedImage, torch.Tensor], window) -> torch.Tensor:
    y0, x0, y1, x1 = window
    if isinstance(image, DecodedImage):
        return image.to_tensor(y0, y1, x0, x1)
    return image[:, y0:y1, x0:x1]


def sliced_predict(predictor, image: Union[DecodedImage, torch.Tensor], *, tile: Union[int, str] = "auto",
                   overlap: float = DEFAULT_OVERLAP, batch_size: int = 4,
                   merge_threshold: float = DEFAULT_MERGE_THRESHOLD, progress: bool = False) -> Dict[str, Any]:
    """Detections of a whole image, predicted tile by tile and merged.

    Args:
        predictor: a :class:`~blendmask.predict.Predictor` (its score threshold applies per tile).
        image: a :class:`~blendmask.data.images.DecodedImage` (cut in its own dtype, each tile
            mapped to float by the image's intensity bounds) or a ``(3, H, W)`` float tensor.
        tile: tile side in pixels (at least the model's largest stride), or ``"auto"``.
        overlap: fraction of a tile shared with its neighbour, in ``[0, 1)``.
        batch_size: tiles per model call (``>= 1``).
        merge_threshold: mask intersection over the smaller at which pieces merge, in ``(0, 1]``.
        progress: a tqdm bar over the tiles.
    Returns:
        ``boxes (n, 4)`` float32 xyxy, ``labels (n,)`` int64, ``scores (n,)`` float32, by
        decreasing score; ``masks_rle``: n COCO RLEs of the whole image's size; ``mask_crops``:
        n ``(x0, y0, bool (h, w))`` masks as crops; ``num_tiles`` and ``num_pieces``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"tile batch size must be an integer >= 1, got {batch_size!r}")
    tile = resolve_tile(predictor.model, tile, overlap)
    height, width = (image.height, image.width) if isinstance(image, DecodedImage) else tuple(image.shape[-2:])
    windows = tile_windows(height, width, tile=tile, overlap=overlap)
    pieces = Pieces()
    with tqdm(total=len(windows), desc="tiles", unit="tile", disable=not progress) as bar:
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            results = predictor.predict_batch([_tile_tensor(image, w) for w in batch], mask_format="binary")
            for offset, (window, result) in enumerate(zip(batch, results)):
                pieces.add_tile(result, window, start + offset)
            bar.update(len(batch))
    instances = merge_pieces(pieces, threshold=merge_threshold, cell=tile)
    return {
        "boxes": torch.tensor(np.stack([i.box for i in instances]) if instances else np.zeros((0, 4)),
                              dtype=torch.float32),
        "labels": torch.tensor([i.label for i in instances], dtype=torch.int64),
        "scores": torch.tensor([i.score for i in instances], dtype=torch.float32),
        "masks_rle": [encode_region_rle(i.crop, i.origin[1], i.origin[0], height, width) for i in instances],
        "mask_crops": [(i.origin[0], i.origin[1], i.crop) for i in instances],
        "num_tiles": len(windows),
        "num_pieces": len(pieces),
    }
