"""Training augmentation on ``(image, target)`` pairs.

The model resizes its inputs itself (shortest side sampled from ``config.input.min_size_train``
with ``max_size_train``, like torchvision's ``GeneralizedRCNNTransform``), so the data side only
flips. Transforms take and return ``(image Tensor(3, H, W), target dict)`` with the target keys of
:class:`blendmask.data.CocoInstanceDataset` (``boxes`` xyxy, ``masks`` (n, H, W), ...).

Randomness comes from torch's global RNG; :func:`blendmask.data.build_train_loader` seeds it per
sample, so the augmentation of every sample is a function of (seed, position in the stream).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Tuple

import torch

__all__ = ["Compose", "RandomHorizontalFlip"]

Sample = Tuple[torch.Tensor, Dict[str, Any]]


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
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
