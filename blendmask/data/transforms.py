"""Training augmentation on ``(image, target)`` pairs.

The model resizes its inputs itself (shortest side sampled from ``config.input.min_size_train``
with ``max_size_train``, like torchvision's ``GeneralizedRCNNTransform``), so the data side
crops (AdelaiDet's ``INPUT.CROP``, which detectron2 applies before the resize), optionally applies
large-scale jitter (:mod:`blendmask.data.jitter`) and flips; :func:`build_train_transforms`
assembles them from ``config.input`` (copy-paste, which mixes two samples, is a dataset wrapper:
:mod:`blendmask.data.copy_paste`). Transforms take and return ``(image Tensor(3, H, W), target dict)`` with the target keys of
:class:`blendmask.data.CocoInstanceDataset` (``boxes`` xyxy, ``masks``: ``(n, H, W)`` bitmasks or
:class:`blendmask.polygons.PolygonMasks`, whose vertices are transformed, ...).

Randomness comes from torch's global RNG; :func:`blendmask.data.build_train_loader` seeds it per
sample, so the augmentation of every sample is a function of (seed, position in the stream).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import torch

from blendmask.polygons import PolygonMasks

from .jitter import LargeScaleJitter
from .sample import Sample, mask_boxes

__all__ = ["Compose", "RandomHorizontalFlip", "RandomInstanceCrop", "build_train_transforms", "mask_boxes"]


class Compose:
    """Apply ``transforms`` in order; each is ``(image, target) -> (image, target)``."""

    def __init__(self, transforms: Iterable[Callable[[torch.Tensor, Dict[str, Any]], Sample]]) -> None:
        self.transforms: List[Callable[[torch.Tensor, Dict[str, Any]], Sample]] = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {t!r}")

    def __call__(self, image: torch.Tensor, target: Dict[str, Any]) -> Sample:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Flip image, boxes and masks left-right with probability ``p``.

    A box ``[x1, y1, x2, y2]`` in an image of width ``W`` becomes ``[W - x2, y1, W - x1, y2]``
    (pixel-edge coordinates, so the flip is exact and involutive).
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image: torch.Tensor, target: Dict[str, Any]) -> Sample:
        if self.p == 0.0 or torch.rand(()).item() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = masks.hflip() if isinstance(masks, PolygonMasks) else masks.flip(-1)
        if "sem_seg" in target:  # the panoptic semantic target (H, W)
            target["sem_seg"] = target["sem_seg"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomInstanceCrop:
    """Crop a random window around a random instance: detectron2's ``RandomCrop`` sizes with
    AdelaiDet's instance-aware placement (``RandomCropWithInstance``, ``CROP_INSTANCE: True``).

    Size: ``"relative_range"`` draws ``u ~ U[crop_size[0], 1]``, ``v ~ U[crop_size[1], 1]`` and
    crops ``(int(H*u + 0.5), int(W*v + 0.5))``; ``"relative"`` crops ``(int(H*crop_size[0] + 0.5),
    int(W*crop_size[1] + 0.5))``; ``"absolute"`` crops ``(min(crop_size[0], H), min(crop_size[1],
    W))`` pixels (detectron2's ``"absolute"``): a window of fixed size at the image's native
    resolution, the random-window sampler for training on large images without shrinking them
    (with ``min_size_train`` at the window's size, the model's resize leaves it as it is). Placement: the window contains the centre of one instance box
    drawn uniformly (uniform over the image when there is none). Instances cut by the window keep
    their visible part: ``masks`` are cropped, ``boxes`` become the tight boxes of the cropped
    masks (detectron2's ``recompute_boxes`` with masks; without masks the boxes are shifted and
    clipped), and instances left with an empty box or mask are dropped from ``boxes``, ``labels``
    and ``masks`` alike. Other per-instance keys are refused rather than silently misaligned.
    :class:`~blendmask.polygons.PolygonMasks` are cropped as detectron2 crops polygons: each polygon
    is clipped to the window (:func:`~blendmask.polygons.clip_polygon`), the boxes are the extents of
    the clipped vertices, and an instance with no polygon left is empty.
    """

    _PER_INSTANCE = ("boxes", "labels", "masks")
    _PER_IMAGE = ("image_id", "sem_seg")  # sem_seg (H, W): cropped with the image

    def __init__(self, crop_type: str = "relative_range", crop_size: Sequence[float] = (0.9, 0.9)) -> None:
        if crop_type not in ("relative_range", "relative", "absolute"):
            raise ValueError("RandomInstanceCrop: crop_type must be 'relative_range', 'relative' or 'absolute', "
                             f"got {crop_type!r}")
        crop_size = tuple(float(v) for v in crop_size)
        if crop_type == "absolute":
            if len(crop_size) != 2 or not all(v >= 1.0 and v == int(v) for v in crop_size):
                raise ValueError(f"RandomInstanceCrop: an 'absolute' crop_size must be two whole numbers of pixels "
                                 f">= 1, got {crop_size!r}")
        elif len(crop_size) != 2 or not all(0.0 < v <= 1.0 for v in crop_size):
            raise ValueError(f"RandomInstanceCrop: crop_size must be two fractions in (0, 1], got {crop_size!r}")
        self.crop_type = crop_type
        self.crop_size = crop_size

    def _crop_hw(self, height: int, width: int) -> Tuple[int, int]:
        if self.crop_type == "absolute":
            return min(int(self.crop_size[0]), height), min(int(self.crop_size[1]), width)
        fractions = torch.tensor(self.crop_size, dtype=torch.float64)
        if self.crop_type == "relative_range":
            fractions = fractions + torch.rand(2, dtype=torch.float64) * (1.0 - fractions)
        return int(height * float(fractions[0]) + 0.5), int(width * float(fractions[1]) + 0.5)

    @staticmethod
    def _start(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, ()).item())

    def _origin(self, boxes: torch.Tensor, height: int, width: int, crop_h: int, crop_w: int) -> Tuple[int, int]:
        if len(boxes) == 0:
            return self._start(0, height - crop_h), self._start(0, width - crop_w)
        box = boxes[int(torch.randint(len(boxes), ()).item())].tolist()
        cx = (min(max(box[0], 0.0), width) + min(max(box[2], 0.0), width)) / 2
        cy = (min(max(box[1], 0.0), height) + min(max(box[3], 0.0), height)) / 2
        y0 = self._start(max(math.floor(cy) - crop_h, 0), min(height - crop_h, math.ceil(cy)))
        x0 = self._start(max(math.floor(cx) - crop_w, 0), min(width - crop_w, math.ceil(cx)))
        return y0, x0

    def __call__(self, image: torch.Tensor, target: Dict[str, Any]) -> Sample:
        unknown = sorted(set(target) - set(self._PER_INSTANCE) - set(self._PER_IMAGE))
        if unknown:
            raise ValueError(f"RandomInstanceCrop: cannot crop target keys {unknown}; "
                             f"known: {list(self._PER_INSTANCE + self._PER_IMAGE)}")
        height, width = (int(v) for v in image.shape[-2:])
        crop_h, crop_w = self._crop_hw(height, width)
        boxes = target.get("boxes", torch.zeros((0, 4)))
        y0, x0 = self._origin(boxes, height, width, crop_h, crop_w)
        target = dict(target)
        if isinstance(target.get("masks"), PolygonMasks):
            target["masks"] = target["masks"].crop(x0, y0, crop_w, crop_h)
            target["boxes"] = target["masks"].bounding_boxes()
            keep = target["masks"].nonempty()
        elif "masks" in target:
            target["masks"] = target["masks"][:, y0:y0 + crop_h, x0:x0 + crop_w]
            target["boxes"] = mask_boxes(target["masks"])
            keep = target["masks"].flatten(1).any(dim=1).bool()  # any() of uint8 masks is uint8
        elif "boxes" in target:
            shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
            shifted[:, 0::2] = shifted[:, 0::2].clamp(0, crop_w)
            shifted[:, 1::2] = shifted[:, 1::2].clamp(0, crop_h)
            target["boxes"] = shifted
            keep = torch.ones(len(shifted), dtype=torch.bool)
        else:
            keep = None
        if "sem_seg" in target:
            target["sem_seg"] = target["sem_seg"][y0:y0 + crop_h, x0:x0 + crop_w]
        if keep is not None:
            sizes = target["boxes"][:, 2:] - target["boxes"][:, :2]
            keep &= (sizes > 1e-5).all(dim=1)  # detectron2's filter_empty_instances threshold
            for key in self._PER_INSTANCE:
                if key in target:
                    target[key] = target[key][keep]
        return image[..., y0:y0 + crop_h, x0:x0 + crop_w], target

    def __repr__(self) -> str:
        return f"RandomInstanceCrop(crop_type={self.crop_type!r}, crop_size={self.crop_size})"


def build_train_transforms(input_cfg: Any) -> Compose:
    """The per-image training augmentation of ``config.input``: the crop when ``crop_enabled``, the
    large-scale jitter when ``lsj.enabled`` (:class:`blendmask.data.jitter.LargeScaleJitter`), then the flip."""
    transforms: List[Callable[[torch.Tensor, Dict[str, Any]], Sample]] = []
    if input_cfg.crop_enabled:
        transforms.append(RandomInstanceCrop(input_cfg.crop_type, input_cfg.crop_size))
    if input_cfg.lsj.enabled:
        transforms.append(LargeScaleJitter(input_cfg.lsj.output_size, input_cfg.lsj.scale_range))
    if input_cfg.hflip_prob > 0:
        transforms.append(RandomHorizontalFlip(input_cfg.hflip_prob))
    return Compose(transforms)
