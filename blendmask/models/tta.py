"""Test-time augmentation: the model run on the horizontal flip and at several test sizes, its
detections merged per instance.

:class:`TestTimeAugmentation` wraps a model with BlendMask's eval API (``model(images)`` -> one dict
per image with ``boxes (n, 4)``, ``labels (n,)``, ``scores (n,)``, ``masks (n, 1, H, W)``
probabilities) and has the same API, ``mask_format`` attribute included. For every image it runs
one pass per (test size, flip): a test size sets the wrapped model's ``transform.min_size_test``
for that pass (the model resizes the image itself); a flipped pass sees the mirrored image and its
boxes and masks are mirrored back. Each detection's mask is kept only inside its box (the model's
masks are zero outside it), so what is held across passes is box-sized.

Merging (per class, greedy by score, weighted box fusion after Solovyev et al. 2021): the
highest-scoring detection not yet merged gathers, from every pass, the best-scoring not yet merged
detection of its class whose box has IoU >= ``iou_threshold`` with it (at most one per pass, so two
neighbouring objects seen by one pass stay two). The merged instance has

- the score-weighted mean of the gathered boxes;
- the score ``sum(scores) / number of passes`` (an instance found by every pass keeps its mean
  score; one found by a single pass is discounted);
- the mean of the gathered masks in image space (each mask pasted at its own box; a pass that did
  not see the instance does not dilute the mean).

At most ``max_detections`` merged instances per image are kept, by score; the outputs are on the CPU.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from .mask_ops import MASK_THRESHOLD, encode_masks_rle

__all__ = ["TestTimeAugmentation", "default_test_sizes"]

_MASK_FORMATS = ("probs", "binary", "rle")


def default_test_sizes(min_size_test: int) -> Tuple[int, ...]:
    """Three test sizes around ``min_size_test``: 0.8x, 1x and 1.2x, rounded to multiples of 32."""
    return tuple(sorted({max(32, round(min_size_test * f / 32) * 32) for f in (0.8, 1.2)} | {min_size_test}))


@dataclass
class _Detection:
    """One pass's detection in image space: its mask kept inside ``window`` ``(x0, y0, x1, y1)``."""

    box: Tensor  # (4,) xyxy
    score: float
    label: int
    window: Tuple[int, int, int, int]
    mask: Tensor  # (y1 - y0, x1 - x0) probabilities
    pass_index: int


class TestTimeAugmentation(nn.Module):
    """``model`` run with flips and test sizes, merged per instance (module doc).

    Args:
        model: a BlendMask (run as its :func:`~blendmask.models.inference_path.inference_model_of` copy)
            or any module with its eval API.
        sizes: test sizes (the model's ``transform.min_size_test`` per pass); empty: the model's own.
        flip: also run every size on the horizontally flipped image.
        iou_threshold: box IoU at which detections of one class from different passes are merged.
        max_detections: merged instances kept per image.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, model: nn.Module, *, sizes: Sequence[int] = (), flip: bool = True,
                 iou_threshold: float = 0.55, max_detections: int = 100) -> None:
        super().__init__()
        from .inference_path import inference_model_of  # deferred: it imports the model modules

        sizes = tuple(int(s) for s in sizes)
        if any(s <= 0 for s in sizes):
            raise ValueError(f"TestTimeAugmentation: sizes must be positive, got {sizes}")
        if sizes and not hasattr(getattr(model, "transform", None), "min_size_test"):
            raise ValueError("TestTimeAugmentation: test sizes need a model with transform.min_size_test")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"TestTimeAugmentation: iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_detections < 1:
            raise ValueError(f"TestTimeAugmentation: max_detections must be >= 1, got {max_detections}")
        self.model = inference_model_of(model)
        self.sizes = sizes
        self.flip = bool(flip)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.mask_format = "probs"
        self.eval()  # inference only: the wrapped model may be folded for inference and refuse train()

    @property
    def num_passes(self) -> int:
        return max(len(self.sizes), 1) * (2 if self.flip else 1)

    @contextlib.contextmanager
    def _test_size(self, size: Optional[int]) -> Iterator[None]:
        if size is None:
            yield
            return
        transform = self.model.transform
        previous = transform.min_size_test
        transform.min_size_test = size
        try:
            yield
        finally:
            transform.min_size_test = previous

    def _run(self, image: Tensor, size: Optional[int], flipped: bool, pass_index: int) -> List[_Detection]:
        width = image.shape[-1]
        previous_format = getattr(self.model, "mask_format", None)
        if previous_format is not None:
            self.model.mask_format = "probs"
        try:
            with self._test_size(size):
                out = self.model([image.flip(-1) if flipped else image])[0]
        finally:
            if previous_format is not None:
                self.model.mask_format = previous_format
        boxes, masks, scores = out["boxes"].float().cpu(), out["masks"][:, 0].cpu(), out["scores"].cpu()
        if flipped:
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            masks = masks.flip(-1)
        height = image.shape[-2]
        detections = []
        for i in range(len(boxes)):
            x0, y0 = (max(0, math.floor(float(v))) for v in boxes[i, :2])
            x1, y1 = min(width, math.ceil(float(boxes[i, 2]))), min(height, math.ceil(float(boxes[i, 3])))
            x1, y1 = max(x1, x0), max(y1, y0)
            detections.append(_Detection(boxes[i], float(scores[i]), int(out["labels"][i]), (x0, y0, x1, y1),
                                         masks[i, y0:y1, x0:x1].float().clone(), pass_index))
        return detections

    def _merge(self, detections: List[_Detection]) -> List[Tuple[Tensor, float, int, Tuple[int, int, int, int], Tensor]]:
        if not detections:
            return []
        order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
        boxes = torch.stack([d.box for d in detections])
        iou = box_iou(boxes, boxes)
        taken = [False] * len(detections)
        merged = []
        for i in order:
            if taken[i]:
                continue
            seed = detections[i]
            members, passes = [i], {seed.pass_index}
            taken[i] = True
            for j in order:
                d = detections[j]
                if taken[j] or d.pass_index in passes or d.label != seed.label or not iou[i, j] >= self.iou_threshold:
                    continue
                members.append(j)
                passes.add(d.pass_index)
                taken[j] = True
            group = [detections[m] for m in members]
            weights = torch.tensor([d.score for d in group])
            box = (torch.stack([d.box for d in group]) * weights[:, None]).sum(0) / weights.sum()
            window = (min(d.window[0] for d in group), min(d.window[1] for d in group),
                      max(d.window[2] for d in group), max(d.window[3] for d in group))
            mask = torch.zeros(window[3] - window[1], window[2] - window[0])
            for d in group:
                x0, y0 = d.window[0] - window[0], d.window[1] - window[1]
                mask[y0:y0 + d.mask.shape[0], x0:x0 + d.mask.shape[1]] += d.mask
            merged.append((box, float(weights.sum()) / self.num_passes, seed.label, window, mask / len(group)))
        merged.sort(key=lambda m: -m[1])
        return merged[: self.max_detections]

    def _one(self, image: Tensor) -> Dict[str, Any]:
        passes = [(size, flipped) for size in (self.sizes or (None,)) for flipped in ((False, True) if self.flip else (False,))]
        detections = [d for k, (size, flipped) in enumerate(passes) for d in self._run(image, size, flipped, k)]
        merged = self._merge(detections)
        height, width = image.shape[-2:]
        out: Dict[str, Any] = {
            "boxes": torch.stack([m[0] for m in merged]) if merged else torch.zeros(0, 4),
            "scores": torch.tensor([m[1] for m in merged], dtype=torch.float32),
            "labels": torch.tensor([m[2] for m in merged], dtype=torch.int64),
        }
        if self.mask_format == "rle":
            out["masks_rle"] = [encode_masks_rle(self._full(m, height, width)[None])[0] for m in merged]
        else:
            masks = torch.zeros(len(merged), 1, height, width)
            for k, m in enumerate(merged):
                masks[k, 0] = self._full(m, height, width)
            out["masks"] = masks >= MASK_THRESHOLD if self.mask_format == "binary" else masks
        return out

    @staticmethod
    def _full(merged: Tuple[Tensor, float, int, Tuple[int, int, int, int], Tensor], height: int, width: int) -> Tensor:
        """One merged instance's ``(H, W)`` mask."""
        (x0, y0, x1, y1), mask = merged[3], merged[4]
        full = torch.zeros(height, width)
        full[y0:y1, x0:x1] = mask
        return full

    @torch.no_grad()
    def forward(self, images: List[Tensor]) -> List[Dict[str, Any]]:
        """Merged detections of every image (module doc), in the format of ``mask_format``."""
        if self.mask_format not in _MASK_FORMATS:
            raise ValueError(f"TestTimeAugmentation.mask_format must be one of {_MASK_FORMATS}, got {self.mask_format!r}")
        return [self._one(image) for image in images]
