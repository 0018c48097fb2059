"""Resize, normalise and batch images (and their targets), like torchvision's GeneralizedRCNNTransform.

Input images are ``list[Tensor(3, H, W)]``, float RGB in [0, 1] (the package convention).
Each image is resized so that its short side is ``min_size`` (random choice among
``min_size_train`` in training, or with ``min_size_train_sampling="range"`` an int drawn
uniformly from ``[min_size_train[0], min_size_train[1]]``; ``min_size_test`` in eval; 0
disables resizing) unless the
long side would exceed ``max_size`` (detectron2's ResizeShortestEdge, sizes rounded
half-up with its arithmetic), as detectron2 resizes its uint8 images with PIL's bilinear
filter (:func:`resize_image`: antialiased when shrinking). It is then scaled to 0-255, put in the
backbone's channel order (``input_format``), normalised with ``(x - pixel_mean) / pixel_std``
and zero-padded at the bottom/right to a multiple of ``size_divisibility``.

Targets (``boxes (n, 4)`` xyxy pixels, ``labels (n,)`` int64, optional ``masks``: ``(n, H, W)``
uint8/bool or :class:`~blendmask.polygons.PolygonMasks`) are resized with their image; bitmasks are
resized bilinearly and thresholded at 0.5 and come back as uint8; polygons have their vertices
scaled (detectron2's ``ResizeTransform`` on polygons) and stay polygons.

Export notes: in eval the only Python-side data-dependent work is the validation of values
(NaN/inf/range), which is skipped while tracing, exporting or compiling. The resized size is
computed in Python from the input shape, so a traced/exported graph is specialised to the
input size it was traced with unless it is exported with dynamic shapes.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList

from blendmask.polygons import PolygonMasks

__all__ = ["ImageList", "ImageTransform", "resize_image", "resize_image_uint8", "resized_size", "postprocess_boxes"]


def _is_exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Output (h, w) of detectron2's ResizeShortestEdge: short side ``min_size``, long side
    at most ``max_size`` (``max_size <= 0``: no limit; ``min_size <= 0``: unchanged).

    The float arithmetic is detectron2's (``get_output_shape``), so that sizes on a ``.5``
    boundary round the same way: the short side is ``min_size`` exactly, the long side
    ``scale * side``; over ``max_size`` both are scaled by ``max_size / long side``; then
    ``int(x + 0.5)``."""
    if min_size <= 0:
        return height, width
    size = float(min_size)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max_size > 0 and max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a ``(3, H, W)`` float RGB image in ``[0, 1]`` to ``size = (h, w)`` as detectron2
    resizes its uint8 images (PIL's ``BILINEAR``: a triangle filter whose support grows with the
    shrink factor, so it antialiases when shrinking, and plain bilinear when enlarging).

    The image is rounded to 8 bits (what detectron2 reads), resized with torch's uint8
    antialiased bilinear (PIL's algorithm, fixed-point, rounded between the two passes) and
    returned as float ``(3, h, w)`` in ``[0, 1]`` on the 1/255 grid. It is within a grey level of
    PIL's result on aspect-preserving resizes, not bit-equal: the two round between their passes
    in different orders (docs/design.md §10 gives the measured agreement). torch's float antialiased
    bilinear would round further from PIL, and the plain bilinear does not antialias when shrinking.
    """
    return resize_image_uint8(image, size).to(image.dtype) / 255.0


def resize_image_uint8(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """:func:`resize_image` before its conversion back to float: the ``(3, h, w)`` uint8 image
    (0-255) that the transform normalises directly, without a float round trip."""
    quantised = (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(quantised[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def postprocess_boxes(boxes: torch.Tensor, image_size: Sequence[int], original_size: Sequence[int]) -> torch.Tensor:
    """Rescale ``boxes`` (n, 4) xyxy from the resized ``image_size`` (h, w) to ``original_size`` (h, w)."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {tuple(boxes.shape)}")
    ratio_h = original_size[0] / image_size[0]
    ratio_w = original_size[1] / image_size[1]
    scale = torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale


class ImageTransform(nn.Module):
    """Validate, resize, normalise and pad a list of images (and resize their targets).

    forward(images, targets=None) -> (ImageList(tensors (N, 3, Hp, Wp), image_sizes [(h, w)]), targets)

    ``image_sizes`` are the resized sizes before padding; returned targets are new dicts
    (other keys are passed through unchanged). ``pixel_mean``/``pixel_std`` are on the 0-255
    scale in ``input_format`` channel order ("RGB" or "BGR"), as the backbone attributes.
    ``num_classes``, when given, makes the labels range-checked to ``[0, num_classes)``.
    """

    def __init__(self, *, min_size_train: Sequence[int], max_size_train: int, min_size_test: int,
                 max_size_test: int, size_divisibility: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], input_format: str, num_classes: Optional[int] = None,
                 min_size_train_sampling: str = "choice"):
        super().__init__()
        if isinstance(min_size_train, int):
            min_size_train = (min_size_train,)
        if len(min_size_train) == 0 or any(not isinstance(s, int) or s < 0 for s in min_size_train):
            raise ValueError(f"min_size_train must be a non-empty sequence of ints >= 0, got {min_size_train!r}")
        for name, value in (("max_size_train", max_size_train), ("min_size_test", min_size_test),
                            ("max_size_test", max_size_test)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(size_divisibility, int) or size_divisibility < 1:
            raise ValueError(f"size_divisibility must be an int >= 1, got {size_divisibility!r}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or any(s <= 0 for s in pixel_std):
            raise ValueError(f"pixel_mean and pixel_std must have 3 values, std > 0; got {pixel_mean!r}, {pixel_std!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if min_size_train_sampling not in ("choice", "range"):
            raise ValueError(f"min_size_train_sampling must be 'choice' or 'range', got {min_size_train_sampling!r}")
        if min_size_train_sampling == "range" and (len(min_size_train) != 2 or min_size_train[0] > min_size_train[1]):
            raise ValueError(f"min_size_train_sampling='range' needs min_size_train = (low, high) with low <= high, "
                             f"got {tuple(min_size_train)!r}")
        self.min_size_train = tuple(min_size_train)
        self.min_size_train_sampling = min_size_train_sampling
        self.max_size_train = max_size_train
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test
        self.size_divisibility = size_divisibility
        self.input_format = input_format
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ validation
    def _check_images(self, images: Any) -> None:
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError(f"images must be a non-empty list of Tensor(3, H, W), got {type(images).__name__}"
                             + ("" if isinstance(images, (list, tuple)) else " (wrap a single image in a list)"))
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor):
                raise TypeError(f"images[{i}] must be a Tensor, got {type(image).__name__}")
            if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
                raise ValueError(f"images[{i}] must have shape (3, H, W) with H, W > 0, got {tuple(image.shape)}")
            if not image.is_floating_point():
                raise TypeError(f"images[{i}] must be a float tensor with RGB values in [0, 1], got {image.dtype} "
                                f"(convert uint8 images with image.float() / 255)")
            if not _is_exporting():
                low, high = (float(v) for v in torch.aminmax(image))  # one pass; NaN propagates, inf is extreme
                if not (math.isfinite(low) and math.isfinite(high)):
                    raise ValueError(f"images[{i}] contains NaN or inf")
                if low < -1e-3 or high > 1 + 1e-3:
                    raise ValueError(f"images[{i}] must hold RGB values in [0, 1], found range [{low:g}, {high:g}] "
                                     f"(divide 0-255 images by 255)")

    def _check_targets(self, images: Sequence[torch.Tensor], targets: Any) -> None:
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
        if len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets; give one target dict per image")
        for i, (image, target) in enumerate(zip(images, targets)):
            if not isinstance(target, dict):
                raise TypeError(f"targets[{i}] must be a dict, got {type(target).__name__}")
            for key in ("boxes", "labels"):
                if not isinstance(target.get(key), torch.Tensor):
                    raise ValueError(f"targets[{i}] needs a tensor {key!r}; it has keys {sorted(target)}")
            boxes, labels = target["boxes"], target["labels"]
            if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
                raise ValueError(f"targets[{i}]['boxes'] must be a float tensor of shape (n, 4), "
                                 f"got {boxes.dtype} {tuple(boxes.shape)}")
            n = boxes.shape[0]
            if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(f"targets[{i}]['labels'] must be an integer tensor of shape ({n},), "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            if not bool(torch.isfinite(boxes).all()):
                raise ValueError(f"targets[{i}]['boxes'] contains NaN or inf")
            degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bool(degenerate.any()):
                j = int(degenerate.nonzero()[0, 0])
                raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} is degenerate: "
                                 f"boxes must be xyxy with x2 > x1 and y2 > y1")
            if n and self.num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"targets[{i}]['labels'] must lie in [0, {self.num_classes}), "
                                 f"got values in [{int(labels.min())}, {int(labels.max())}]")
            masks = target.get("masks")
            if isinstance(masks, PolygonMasks):
                size = (int(image.shape[1]), int(image.shape[2]))
                if len(masks) != n or masks.image_size != size:
                    raise ValueError(f"targets[{i}]['masks'] must hold {n} instances of a {size} image, "
                                     f"got {len(masks)} of {masks.image_size}")
            elif masks is not None:
                expected = (n, image.shape[1], image.shape[2])
                if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != expected:
                    shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
                    raise ValueError(f"targets[{i}]['masks'] must have shape (n, H, W) = {expected}, got {shape}")
                if masks.dtype not in (torch.uint8, torch.bool):
                    raise ValueError(f"targets[{i}]['masks'] must be uint8 or bool, got {masks.dtype}")

    # ------------------------------------------------------------------ transform
    def _pick_min_size(self) -> int:
        if not self.training:
            return self.min_size_test
        if self.min_size_train_sampling == "range":  # detectron2's ResizeShortestEdge(sample_style="range")
            low, high = self.min_size_train
            return int(torch.randint(low, high + 1, ()).item())
        index = int(torch.randint(len(self.min_size_train), ()).item())
        return self.min_size_train[index]

    def _resize(self, image: torch.Tensor, target: Optional[Dict[str, Any]]):
        """``(pixels, target)``: ``pixels`` is the resized image as uint8 0-255
        (:func:`resize_image_uint8`) or, when the size is unchanged, ``image`` itself (float 0-1)."""
        height, width = image.shape[-2:]
        max_size = self.max_size_train if self.training else self.max_size_test
        new_h, new_w = resized_size(int(height), int(width), self._pick_min_size(), max_size)
        if (new_h, new_w) != (height, width):
            image = resize_image_uint8(image, (new_h, new_w))
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = target["boxes"] * torch.tensor(
            [new_w / width, new_h / height, new_w / width, new_h / height],
            dtype=target["boxes"].dtype, device=target["boxes"].device)
        masks = target.get("masks")
        if isinstance(masks, PolygonMasks):
            target["masks"] = masks.resize((new_h, new_w))
        elif masks is not None:
            masks = masks.to(torch.uint8)
            if (new_h, new_w) != (height, width) and masks.shape[0]:
                resized = F.interpolate(masks[:, None].float(), size=(new_h, new_w), mode="bilinear",
                                        align_corners=False)[:, 0]
                masks = (resized >= 0.5).to(torch.uint8)
            elif (new_h, new_w) != (height, width):
                masks = masks.new_zeros((0, new_h, new_w))
            target["masks"] = masks
        return image, target

    def _normalize_into(self, out: torch.Tensor, pixels: torch.Tensor) -> None:
        """Write ``pixels`` (3, h, w), uint8 0-255 or float RGB 0-1, normalised in the backbone's
        convention (channel order, ``(x * 255 - mean) / std``) into ``out`` (3, h, w), a view of the
        padded batch: three passes per channel, no temporaries. The mean and std are read from the
        ``pixel_mean``/``pixel_std`` buffers at every call, so a changed buffer takes effect."""
        order = (2, 1, 0) if self.input_format == "BGR" else (0, 1, 2)
        mean, std = self.pixel_mean.view(3), self.pixel_std.view(3)
        for channel, source in enumerate(order):
            dst = out[channel]
            if pixels.is_floating_point():
                torch.mul(pixels[source], 255.0, out=dst)
                dst.sub_(mean[channel])
            else:
                torch.sub(pixels[source], mean[channel], out=dst)  # uint8 - float: computed in dst's dtype
            dst.div_(std[channel])

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, Any]]] = None):
        """Validate, resize and normalise ``images`` straight into one zero-padded batch
        ``(N, 3, Hp, Wp)`` (bottom/right padding to multiples of ``size_divisibility``)."""
        self._check_images(images)
        if targets is not None:
            self._check_targets(images, targets)
        resized, out_targets = [], []
        for i, image in enumerate(images):
            pixels, target = self._resize(image, None if targets is None else targets[i])
            resized.append(pixels)
            out_targets.append(target)
        image_sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in resized]
        d = self.size_divisibility
        pad_h = int(math.ceil(max(h for h, _ in image_sizes) / d) * d)
        pad_w = int(math.ceil(max(w for _, w in image_sizes) / d) * d)
        batch = images[0].new_zeros((len(images), 3, pad_h, pad_w))
        for i, (pixels, (h, w)) in enumerate(zip(resized, image_sizes)):
            self._normalize_into(batch[i, :, :h, :w], pixels)
        return ImageList(batch, image_sizes), (out_targets if targets is not None else None)

    def postprocess_boxes(self, boxes: torch.Tensor, image_size: Sequence[int], original_size: Sequence[int]):
        """See :func:`postprocess_boxes`."""
        return postprocess_boxes(boxes, image_size, original_size)

    def extra_repr(self) -> str:
        return (f"min_size_train={self.min_size_train}, max_size_train={self.max_size_train}, "
                f"min_size_test={self.min_size_test}, max_size_test={self.max_size_test}, "
                f"size_divisibility={self.size_divisibility}, input_format={self.input_format!r}")
