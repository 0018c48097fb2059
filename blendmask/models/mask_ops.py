"""Mask geometry and encoding: crop GT masks to R x R training targets, paste R x R predictions
into images, encode pasted masks as COCO RLE.

The geometry follows detectron2's conventions (pixel ``i`` covers ``[i, i + 1)``, its center is
``i + 0.5``):
- :func:`crop_and_resize_masks` is ``BitMasks.crop_and_resize``: RoIAlign (aligned, adaptive
  sampling) of the binary mask inside the box, thresholded at 0.5; for polygons it is
  ``PolygonMasks.crop_and_resize``: the polygon rasterised inside the box at R x R;
- :func:`paste_mask_patches` is ``paste_masks_in_image``: each image pixel center inside the box
  samples the R x R mask bilinearly (as ``grid_sample``, ``align_corners=False``), computed for a
  bounded chunk of masks at once over their box regions only. :func:`paste_masks_in_image` writes
  the patches into ``(n, 1, H, W)`` float masks; :func:`paste_masks_rle` encodes them straight to
  COCO RLE, so that evaluation and prediction never hold ``n x H x W`` masks.

:func:`encode_masks_rle` binarises mask probabilities at :data:`MASK_THRESHOLD` and encodes them
with pycocotools; :func:`paste_masks_rle` gives the same RLEs from the unpasted masks.
:func:`encode_region_rle` encodes a mask given as a region of its image, and
:func:`decode_rle_region` decodes a region of an RLE's mask, neither making the image-sized mask.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.ops import roi_align

from blendmask.polygons import PolygonMasks

__all__ = [
    "MASK_THRESHOLD", "PASTE_CHUNK_BYTES", "crop_and_resize_masks", "encode_masks_rle", "encode_region_rle",
    "rle_run_lengths", "rle_column_runs", "decode_rle_region", "paste_mask_patches",
    "paste_masks_in_image", "paste_masks_rle",
]

#: A pixel belongs to an instance where its mask probability is at least this.
MASK_THRESHOLD = 0.5


def crop_and_resize_masks(masks: Union[Tensor, PolygonMasks], boxes: Tensor, size: int) -> Tensor:
    """Crop each mask with its box and resize the crop to ``size x size``.

    Polygons are rasterised directly inside their boxes at ``size x size``
    (:meth:`PolygonMasks.crop_and_resize <blendmask.polygons.PolygonMasks.crop_and_resize>`,
    detectron2's ``PolygonMasks.crop_and_resize``); bitmasks go through RoIAlign as below.

    Args:
        masks: ``(n, H, W)`` binary masks (bool, uint8 or float), or ``PolygonMasks`` of ``n`` instances.
        boxes: ``(n, 4)`` xyxy boxes in mask pixels, one per mask.
        size: output resolution R.
    Returns:
        ``(n, R, R)`` float32 tensor of 0/1 values.
    """
    if isinstance(masks, PolygonMasks):
        return masks.crop_and_resize(boxes, size)
    if masks.dim() != 3 or boxes.dim() != 2 or boxes.shape[1] != 4 or masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected masks (n, H, W) and boxes (n, 4), got {tuple(masks.shape)} and {tuple(boxes.shape)}")
    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    boxes = boxes.to(torch.float32)
    rois = torch.cat([torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    crops = roi_align(masks[:, None].to(torch.float32), rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).to(torch.float32)


#: Default bound, in bytes, of the float buffers one paste chunk allocates (its patches and
#: interpolation weights). A chunk holds at least one mask, so one very large box may exceed it.
PASTE_CHUNK_BYTES = 64 * 2**20


def _check_paste_args(masks: Tensor, boxes: Tensor) -> None:
    if masks.dim() != 3 or boxes.dim() != 2 or boxes.shape[1] != 4 or masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected masks (n, R, R) and boxes (n, 4), got {tuple(masks.shape)} and {tuple(boxes.shape)}")


def _paste_extents(boxes: Tensor, height: int, width: int) -> Tensor:
    """``(n, 4)`` int64 ``[px0, py0, px1, py1]``: the pixels whose centers can fall inside each
    box, cut at the image border; ``px1 <= px0`` or ``py1 <= py0`` where nothing is pasted
    (an empty, inverted, non-finite or outside box)."""
    b = boxes.to(torch.float64)
    valid = torch.isfinite(b).all(dim=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = torch.where(valid[:, None], b, torch.zeros_like(b))
    limits = b.new_tensor([width, height, width, height])
    lo = b[:, :2].floor().clamp(min=0).minimum(limits[:2])
    hi = b[:, 2:].ceil().clamp(min=0).minimum(limits[2:])
    return torch.cat([lo, hi.maximum(lo)], dim=1).to(torch.int64)


#: A chunk pads its masks' patches to its largest height and width: it takes a mask only while the
#: padded area stays within this factor of the masks' own areas.
_PADDING_WASTE = 1.5


def _chunks(sizes: List[Tuple[int, int]], order: List[int], resolution: int, chunk_bytes: int) -> Iterator[List[int]]:
    """Consecutive groups of ``order`` (sorted by patch size) whose padded patches
    ``(c, max h, max w)`` and interpolation weights stay under ``chunk_bytes`` float32 bytes and
    within :data:`_PADDING_WASTE` of the unpadded patches; at least one mask per group."""
    group: List[int] = []
    gh = gw = area = 0
    for i in order:
        h, w = max(gh, sizes[i][0]), max(gw, sizes[i][1])
        padded = (len(group) + 1) * h * w
        if group and ((padded + 2 * resolution * (h + w) * (len(group) + 1)) * 4 > chunk_bytes
                      or padded > _PADDING_WASTE * (area + sizes[i][0] * sizes[i][1])):
            yield group
            group, h, w, area = [], sizes[i][0], sizes[i][1], 0
        group.append(i)
        gh, gw, area = h, w, area + sizes[i][0] * sizes[i][1]
    if group:
        yield group


def _linear_weights(coords: Tensor, size: int) -> Tensor:
    """``(c, L, size)`` bilinear (triangle) weights ``max(0, 1 - |coord - j|)`` of source cells
    ``j`` at continuous source coordinates ``coords (c, L)``: ``grid_sample``'s bilinear weights
    with zero padding, along one axis."""
    taps = torch.arange(size, device=coords.device, dtype=coords.dtype)
    return (1 - (coords[..., None] - taps).abs()).clamp_(min=0)


def paste_mask_patches(
    masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], *, chunk_bytes: int = PASTE_CHUNK_BYTES
) -> Iterator[Tuple[List[int], Tensor, Tensor]]:
    """Paste ``R x R`` masks at their boxes, a bounded chunk at a time, yielding only the pasted
    region of each mask: the one paste implementation (:func:`paste_masks_in_image` and
    :func:`paste_masks_rle` consume it).

    Every image pixel whose center lies inside a box samples the mask bilinearly
    (``grid_sample`` with ``align_corners=False`` and zero padding, so pixels near the box edge
    fade); pixels outside the box stay 0. Bilinear sampling on an axis-aligned grid is separable,
    so a chunk is two batched matrix products ``Wy @ masks @ Wx^T`` over the box extents only.

    Args:
        masks: ``(n, R, R)`` float mask probabilities (or logits; interpolated as given).
        boxes: ``(n, 4)`` xyxy boxes in image pixels; parts outside the image are cut off.
        image_size: ``(height, width)`` of the image.
        chunk_bytes: bound of one chunk's float buffers (masks are grouped by patch size).
    Yields:
        ``(indices, extents, patches)``: ``c`` mask indices, ``extents (c, 4)`` int64
        ``[px0, py0, px1, py1]`` pixel ranges (cut at the border), and ``patches (c, h, w)`` whose
        ``patches[j, :py1 - py0, :px1 - px0]`` is mask ``indices[j]`` on those pixels (the rest is
        padding). Masks with an empty extent are not yielded: they are all zero.
    """
    _check_paste_args(masks, boxes)
    height, width = int(image_size[0]), int(image_size[1])
    extents = _paste_extents(boxes, height, width)
    sizes = (extents[:, 2:] - extents[:, :2]).flip(1).tolist()  # (h, w) per mask
    order = sorted((i for i, (h, w) in enumerate(sizes) if h > 0 and w > 0), key=lambda i: -sizes[i][0] * sizes[i][1])
    resolution = masks.shape[-1]
    for group in _chunks(sizes, order, resolution, chunk_bytes):
        index = torch.tensor(group, device=masks.device)
        ext = extents[group]
        box = boxes[index].to(masks.dtype)
        h = max(sizes[i][0] for i in group)
        w = max(sizes[i][1] for i in group)
        ys = ext[:, 1:2].to(masks.device, masks.dtype) + torch.arange(h, device=masks.device, dtype=masks.dtype)
        xs = ext[:, 0:1].to(masks.device, masks.dtype) + torch.arange(w, device=masks.device, dtype=masks.dtype)
        # source coordinates of the pixel centers: cell j of the R x R mask is centered at j
        v = (ys + 0.5 - box[:, 1:2]) / (box[:, 3:4] - box[:, 1:2]) * masks.shape[-2] - 0.5
        u = (xs + 0.5 - box[:, 0:1]) / (box[:, 2:3] - box[:, 0:1]) * resolution - 0.5
        wy = _linear_weights(v, masks.shape[-2])  # (c, h, R)
        wx = _linear_weights(u, resolution)  # (c, w, R)
        yield group, ext, torch.bmm(torch.bmm(wy, masks[index]), wx.transpose(1, 2))


_NUMPY_DTYPES = {torch.bool: np.bool_, torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _zeros_untouched(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero tensor whose memory is not written: on the CPU numpy's ``zeros`` (``calloc``: large
    buffers are fresh, already-zero pages, touched only where the paste writes), elsewhere
    ``torch.zeros``. ``torch.zeros`` fills every page, which would cost more than the binary paste
    itself (``benchmarks/bench_postprocess.py``)."""
    if torch.device(device).type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.zeros(shape, dtype=dtype, device=device)


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], *, chunk_bytes: int = PASTE_CHUNK_BYTES,
    threshold: Optional[float] = None,
) -> Tensor:
    """Paste ``R x R`` masks into an image at their boxes (:func:`paste_mask_patches`).

    This materialises ``n x H x W`` values (floats, or bools with ``threshold``); to evaluate or
    save masks, use :func:`paste_masks_rle`, whose memory does not grow with ``n x H x W``.

    Args:
        masks: ``(n, R, R)`` mask probabilities (or logits; values are interpolated as given).
        boxes: ``(n, 4)`` xyxy boxes in image pixels.
        image_size: ``(height, width)`` of the output image.
        chunk_bytes: bound of one paste chunk's float buffers.
        threshold: None for the pasted values; else ``> 0``: binary masks ``pasted >= threshold``,
            thresholded chunk by chunk (a quarter of the float output's memory, never held as floats).
    Returns:
        ``(n, 1, height, width)`` tensor, zero outside the boxes: ``masks.dtype``, or bool with ``threshold``.
    """
    _check_paste_args(masks, boxes)
    if threshold is not None and not threshold > 0:
        raise ValueError(f"paste_masks_in_image: threshold must be > 0 (pixels outside the boxes are 0), got {threshold}")
    dtype = masks.dtype if threshold is None else torch.bool
    out = _zeros_untouched((masks.shape[0], 1, int(image_size[0]), int(image_size[1])), dtype, masks.device)
    for group, extents, patches in paste_mask_patches(masks, boxes, image_size, chunk_bytes=chunk_bytes):
        if threshold is not None:
            patches = patches >= threshold
        for i, (x0, y0, x1, y1), patch in zip(group, extents.tolist(), patches):
            out[i, 0, y0:y1, x0:x1] = patch[: y1 - y0, : x1 - x0]
        del patches, patch  # one chunk alive at a time
    return out


def paste_masks_rle(
    masks: Tensor,
    boxes: Tensor,
    image_size: Tuple[int, int],
    *,
    threshold: float = MASK_THRESHOLD,
    chunk_bytes: int = PASTE_CHUNK_BYTES,
) -> List[Dict[str, Any]]:
    """COCO RLEs of the masks pasted into an image and binarised at ``>= threshold``, without
    materialising any image-sized mask: each is run-length encoded from its pasted box region.

    Equal to ``encode_masks_rle(paste_masks_in_image(masks, boxes, image_size)[:, 0], threshold)``;
    memory is one chunk's buffers (``chunk_bytes``) plus the RLEs, whatever ``n`` and the image size.

    Args:
        masks: ``(n, R, R)`` mask probabilities.
        boxes: ``(n, 4)`` xyxy boxes in image pixels.
        image_size: ``(height, width)`` of the image.
        threshold: binarisation threshold, ``> 0`` (pixels outside the boxes are 0).
        chunk_bytes: bound of one paste chunk's float buffers.
    Returns:
        ``n`` JSON-ready dicts ``{"size": [H, W], "counts": str}``, as :func:`encode_masks_rle`.
    """
    if not threshold > 0:
        raise ValueError(f"paste_masks_rle: threshold must be > 0 (pixels outside the boxes are 0), got {threshold}")
    height, width = int(image_size[0]), int(image_size[1])

    def compressed(counts: np.ndarray) -> Dict[str, Any]:
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}

    empty = compressed(np.array([height * width], dtype=np.uint32))
    out = [empty] * masks.shape[0]
    for group, extents, patches in paste_mask_patches(masks, boxes, image_size, chunk_bytes=chunk_bytes):
        binary = (patches >= threshold).cpu().numpy()
        for j, (i, (x0, y0, x1, y1)) in enumerate(zip(group, extents.tolist())):
            out[i] = compressed(_region_run_lengths(binary[j, : y1 - y0, : x1 - x0], y0, x0, height, width))
        del patches, binary  # one chunk alive at a time, not this one and the next
    return [dict(rle) for rle in out]


def encode_region_rle(region: np.ndarray, y0: int, x0: int, height: int, width: int) -> Dict[str, Any]:
    """COCO compressed RLE (JSON-ready, as :func:`encode_masks_rle`) of a ``height x width`` mask
    that is 0 except for the bool ``region (h, w)`` at rows ``y0:`` and columns ``x0:``, made
    without the image-sized mask."""
    counts = _region_run_lengths(region, y0, x0, height, width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _region_run_lengths(region: np.ndarray, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """COCO's uncompressed RLE counts (column-major runs, starting with a run of zeros) of a
    ``height x width`` mask that is 0 except for the bool ``region (h, w)`` at rows ``y0:`` and
    columns ``x0:``."""
    h = region.shape[0]
    padded = np.zeros((region.shape[1], h + 2), dtype=np.int8)  # one image column per row
    padded[:, 1:-1] = region.T
    col, row = np.nonzero(np.diff(padded, axis=1))  # in column-major image order
    flat = (x0 + col).astype(np.int64) * height + y0 + row  # run starts and (exclusive) ends, alternating
    starts, ends = flat[0::2], flat[1::2]
    if starts.size > 1:  # a run ending at a column's last row continues at the next column's first row
        joined = starts[1:] == ends[:-1]
        starts = np.concatenate([starts[:1], starts[1:][~joined]])
        ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
    edges = np.empty(2 * starts.size + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, height * width
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    counts = np.diff(edges).astype(np.uint32)
    return counts[:-1] if counts.size > 1 and counts[-1] == 0 else counts  # no empty last run of zeros


def rle_run_lengths(rle: Dict[str, Any]) -> np.ndarray:
    """COCO's uncompressed counts (int64, column-major runs starting with zeros) of an RLE whose
    ``counts`` is a list (uncompressed) or COCO's compressed string (``str`` or ``bytes``).

    The compressed string stores each count in 5-bit groups, least significant first, as
    characters ``48 + group``: bit 0x20 of a character says another group follows, bit 0x10 of the
    last one is the sign; from the third count on, the stored value is the difference to the
    count two places before."""
    counts = rle["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):
        return np.asarray(counts, dtype=np.int64)
    text = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    values: List[int] = []
    p = 0
    while p < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = text[p] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            p += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return np.asarray(values, dtype=np.int64)


def rle_column_runs(rle: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The foreground of an RLE as runs within columns: ``(columns, row starts, row ends)``, three
    ``(m,)`` int64 arrays (ends exclusive); a run of the RLE over several columns is split."""
    height = int(rle["size"][0])
    counts = rle_run_lengths(rle)
    ends = np.cumsum(counts)
    starts = ends - counts
    starts, ends = starts[1::2], ends[1::2]  # foreground runs, column-major pixel indices
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    first, last = starts // height, (ends - 1) // height
    spans = last - first + 1
    run = np.repeat(np.arange(starts.size), spans)  # each (run, column) piece
    column = first[run] + np.arange(run.size) - np.repeat(np.cumsum(spans) - spans, spans)
    row_start = np.maximum(starts[run] - column * height, 0)
    row_end = np.minimum(ends[run] - column * height, height)
    return column, row_start, row_end


def decode_rle_region(rle: Dict[str, Any], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Rows ``y0:y1`` and columns ``x0:x1`` of the mask of a COCO RLE (compressed or not) as a
    ``bool (y1 - y0, x1 - x0)`` array, made from the runs without the image-sized mask."""
    column, row_start, row_end = rle_column_runs(rle)
    row_start, row_end = np.maximum(row_start, y0), np.minimum(row_end, y1)
    inside = (column >= x0) & (column < x1) & (row_start < row_end)
    column, row_start, row_end = column[inside] - x0, row_start[inside] - y0, row_end[inside] - y0
    steps = np.zeros((y1 - y0 + 1, x1 - x0), dtype=np.int32)  # +1 where a run starts, -1 past its end
    np.add.at(steps, (row_start, column), 1)
    np.add.at(steps, (row_end, column), -1)
    return np.cumsum(steps, axis=0)[:-1] > 0


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
    # A bool mask is its own binarisation at any threshold in (0, 1]: comparing it would cost more
    # than the encoding. pycocotools reads column-major masks: each is transposed on its own (one
    # image-sized copy at a time, cache-friendly), not the whole (n, H, W) block at once.
    binary = masks if masks.dtype == torch.bool and 0 < threshold <= 1 else masks >= threshold
    rles = (mask_utils.encode(np.asfortranarray(mask)[:, :, None])[0] for mask in binary.cpu().numpy().view(np.uint8))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]
