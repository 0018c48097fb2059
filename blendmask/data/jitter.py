"""Large-scale jitter (Ghiasi et al., "Simple Copy-Paste", CVPR 2021): a random resize over a wide
range of scales, then a fixed-size random crop or a zero pad.

:class:`LargeScaleJitter` resizes an image of ``(H, W)`` by ``r = min(out_h / H, out_w / W) * s``,
``s ~ U[scale_range]`` (torchvision's ``ScaleJitter`` with ``target_size = output_size``), to
``(round(H r), round(W r))``, then takes a window of ``output_size`` at a uniformly drawn position
when the resized image is larger, and pads with zeros at the bottom/right where it is smaller
(torchvision's ``FixedSizeCrop``). Every output has exactly ``output_size``.

Targets follow the image (keys of :class:`blendmask.data.CocoInstanceDataset`): polygons have their
vertices scaled then clipped to the window (:meth:`~blendmask.polygons.PolygonMasks.crop`);
bitmasks are sampled with nearest-pixel-centre indexing straight into the window (pixel ``i`` of
the output takes source pixel ``floor((i + 0.5) / r)``), so no mask larger than the output is
built; boxes are recomputed from the masks (the extent of the vertices for polygons), and
instances left empty are dropped. Without masks, boxes are scaled, shifted and clipped.

Randomness comes from torch's global RNG, seeded per sample by :func:`blendmask.data.build_train_loader`.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from blendmask.polygons import PolygonMasks

from .sample import Sample, mask_boxes

__all__ = ["LargeScaleJitter", "resize_crop_pad", "resize_sample"]

_KNOWN_KEYS = ("boxes", "labels", "masks", "image_id")


def _check_keys(target: Dict[str, Any], who: str) -> None:
    unknown = sorted(set(target) - set(_KNOWN_KEYS))
    if unknown:
        raise ValueError(f"{who}: cannot transform target keys {unknown}; known: {list(_KNOWN_KEYS)}")


def _source_indices(start: int, count: int, scale: float, limit: int) -> torch.Tensor:
    """``(count,)`` int64: the source pixel of output pixels ``start .. start + count - 1`` of a
    resize by ``scale`` (nearest pixel centre, clamped to ``[0, limit)``)."""
    positions = (torch.arange(start, start + count, dtype=torch.float64) + 0.5) / scale
    return positions.floor().long().clamp_(0, limit - 1)


def resize_crop_pad(image: torch.Tensor, target: Dict[str, Any], resized: Tuple[int, int],
                    x0: int, y0: int, output_size: Tuple[int, int]) -> Sample:
    """Resize ``image`` ``(3, H, W)`` (float in ``[0, 1]``, or uint8) and its target to
    ``resized = (h', w')``, then take the window ``[x0, x0 + w) x [y0, y0 + h)`` of
    ``output_size = (h, w)``, zero-padded where it leaves the resized image at the bottom/right.

    The image is resized bilinearly (antialiased when shrinking). Bitmask instances are sampled
    straight into the window (nearest pixel centre), polygons have their vertices scaled and clipped.
    Boxes become the tight boxes of the masks (without masks: scaled, shifted and clipped);
    instances left empty are dropped. Returns ``(Tensor(3, h, w), target)``.
    """
    _check_keys(target, "resize_crop_pad")
    height, width = (int(v) for v in image.shape[-2:])
    new_h, new_w = int(resized[0]), int(resized[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    if min(new_h, new_w, out_h, out_w) <= 0:
        raise ValueError(f"resize_crop_pad: sizes must be positive, got resized={tuple(resized)} "
                         f"output_size={tuple(output_size)}")
    if not (0 <= x0 < new_w and 0 <= y0 < new_h):
        raise ValueError(f"resize_crop_pad: window origin ({x0}, {y0}) outside the resized {new_w}x{new_h} image")
    win_h, win_w = min(out_h, new_h - y0), min(out_w, new_w - x0)  # the part of the window inside
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=new_h < height or new_w < width)[0]
        if image.is_floating_point():  # uint8 images (a training set's 8-bit files) saturate by themselves
            image = image.clamp_(0.0, 1.0)
    out = image.new_zeros((image.shape[0], out_h, out_w))
    out[:, :win_h, :win_w] = image[:, y0:y0 + win_h, x0:x0 + win_w]
    target = dict(target)
    masks = target.get("masks")
    if isinstance(masks, PolygonMasks):
        target["masks"] = masks.resize((new_h, new_w)).crop(x0, y0, out_w, out_h)
        target["boxes"] = target["masks"].bounding_boxes()
        keep = target["masks"].nonempty()
    elif masks is not None:
        rows = _source_indices(y0, win_h, new_h / height, height)
        cols = _source_indices(x0, win_w, new_w / width, width)
        padded = masks.new_zeros((masks.shape[0], out_h, out_w))
        padded[:, :win_h, :win_w] = masks[:, rows][:, :, cols]
        target["masks"] = padded
        target["boxes"] = mask_boxes(padded)
        keep = padded.flatten(1).any(dim=1).bool()
    elif "boxes" in target:
        factor = torch.tensor([new_w / width, new_h / height] * 2, dtype=target["boxes"].dtype)
        shifted = target["boxes"] * factor - torch.tensor([x0, y0, x0, y0], dtype=target["boxes"].dtype)
        shifted[:, 0::2] = shifted[:, 0::2].clamp(0, win_w)
        shifted[:, 1::2] = shifted[:, 1::2].clamp(0, win_h)
        target["boxes"] = shifted
        keep = torch.ones(len(shifted), dtype=torch.bool)
    else:
        keep = None
    if keep is not None:
        sizes = target["boxes"][:, 2:] - target["boxes"][:, :2]
        keep &= (sizes > 1e-5).all(dim=1)  # detectron2's filter_empty_instances threshold
        for key in ("boxes", "labels", "masks"):
            if key in target:
                target[key] = target[key][keep]
    return out, target


def resize_sample(image: torch.Tensor, target: Dict[str, Any], size: Tuple[int, int]) -> Sample:
    """``image`` and its target resized to ``size = (h, w)`` (:func:`resize_crop_pad` with the whole image as window)."""
    return resize_crop_pad(image, target, size, 0, 0, size)


class LargeScaleJitter:
    """Random resize by ``min(out_h / H, out_w / W) * s``, ``s ~ U[scale_range]``, then a random
    ``output_size`` crop or a bottom/right zero pad (module doc).

    Args:
        output_size: ``(h, w)`` of every output image.
        scale_range: ``(low, high)``, ``0 < low <= high``; Ghiasi et al. use ``(0.1, 2.0)``.
    """

    def __init__(self, output_size: Sequence[int] = (1024, 1024), scale_range: Sequence[float] = (0.1, 2.0)) -> None:
        output_size = tuple(int(v) for v in output_size)
        scale_range = tuple(float(v) for v in scale_range)
        if len(output_size) != 2 or min(output_size) <= 0:
            raise ValueError(f"LargeScaleJitter: output_size must be two positive ints (h, w), got {output_size!r}")
        if len(scale_range) != 2 or not 0.0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"LargeScaleJitter: scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.output_size = output_size
        self.scale_range = scale_range

    def resized_size(self, height: int, width: int, scale: float) -> Tuple[int, int]:
        """The size an ``(height, width)`` image is resized to at jitter ``scale`` (at least 1x1)."""
        ratio = min(self.output_size[0] / height, self.output_size[1] / width) * scale
        return max(1, int(round(height * ratio))), max(1, int(round(width * ratio)))

    def __call__(self, image: torch.Tensor, target: Dict[str, Any]) -> Sample:
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand((), dtype=torch.float64))
        height, width = (int(v) for v in image.shape[-2:])
        new_h, new_w = self.resized_size(height, width, scale)
        y0 = int(torch.randint(0, max(new_h - self.output_size[0], 0) + 1, ()))
        x0 = int(torch.randint(0, max(new_w - self.output_size[1], 0) + 1, ()))
        return resize_crop_pad(image, target, (new_h, new_w), x0, y0, self.output_size)

    def __repr__(self) -> str:
        return f"LargeScaleJitter(output_size={self.output_size}, scale_range={self.scale_range})"
