"""Simple Copy-Paste (Ghiasi et al., CVPR 2021): instances of one training image pasted onto another.

:func:`paste_instances` puts chosen instances of a source sample on top of a destination sample of
the same size: the image takes the source pixels under the union of the pasted masks; the
destination's masks lose the pixels now covered (the occluded parts are removed from the targets
underneath), every box becomes the tight box of its visible mask, and destination instances left
with no visible pixel are dropped. The pasted instances follow the destination's, with their
labels. Masks are handled as ``(n, H, W)`` uint8 bitmasks (polygon instances are rasterised once,
in uint8, when a paste happens; no float mask is built).

:class:`CopyPasteDataset` wraps a dataset that returns un-augmented samples: every sample goes
through the per-image ``transforms`` (e.g. large-scale jitter and the flip,
:func:`blendmask.data.transforms.build_train_transforms`); with probability ``prob`` a second,
uniformly drawn sample of the dataset goes through the same transforms independently and a random
subset of its instances (``1 .. min(n, max_instances)`` of them, uniformly) is pasted on the first,
resized to its size if the two differ. All draws use torch's global RNG, which
:func:`blendmask.data.build_train_loader` seeds per sample, so the result is a function of the
sample seed and stays inside the resumable data order.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch.utils.data import Dataset

from blendmask.polygons import PolygonMasks

from .jitter import resize_sample
from .sample import Sample, mask_boxes

__all__ = ["CopyPasteDataset", "paste_instances"]

_KNOWN_KEYS = ("boxes", "labels", "masks", "image_id")


def _bitmasks(target: Dict[str, Any], height: int, width: int, who: str) -> torch.Tensor:
    """The target's masks as ``(n, height, width)`` uint8."""
    unknown = sorted(set(target) - set(_KNOWN_KEYS))
    if unknown:
        raise ValueError(f"{who}: copy-paste cannot carry target keys {unknown}; known: {list(_KNOWN_KEYS)}")
    masks = target.get("masks")
    if masks is None:
        raise ValueError(f"{who}: copy-paste needs instance masks in the target (keys: {sorted(target)})")
    if isinstance(masks, PolygonMasks):
        masks = masks.to_bitmasks()
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (height, width):
        raise ValueError(f"{who}: masks of shape {tuple(masks.shape)} for a {height}x{width} image")
    return masks.to(torch.uint8)


def paste_instances(image: torch.Tensor, target: Dict[str, Any], source_image: torch.Tensor,
                    source_target: Dict[str, Any], chosen: torch.Tensor) -> Sample:
    """Paste the instances ``chosen`` (int64 indices) of the source sample onto ``(image, target)``.

    Args:
        image, source_image: ``(3, H, W)`` float images of the same size.
        target, source_target: targets with ``boxes (n, 4)``, ``labels (n,)`` and ``masks``
            (``(n, H, W)`` bitmasks or :class:`~blendmask.polygons.PolygonMasks`).
        chosen: ``(k,)`` indices into the source instances; empty: the destination is returned as is.

    Returns ``(image (3, H, W), target)`` with ``masks`` ``(m, H, W)`` uint8, ``m <= n + k``: the
    visible parts of the destination's instances that keep a pixel, then the pasted instances.
    """
    if image.shape != source_image.shape:
        raise ValueError(f"paste_instances: images of different shapes {tuple(image.shape)} and "
                         f"{tuple(source_image.shape)}")
    if len(chosen) == 0:
        return image, target
    height, width = (int(v) for v in image.shape[-2:])
    pasted = _bitmasks(source_target, height, width, "paste_instances (source)")[chosen]  # (k, H, W)
    below = _bitmasks(target, height, width, "paste_instances (destination)")  # (n, H, W)
    cover = pasted.any(dim=0).bool()  # (H, W); any() of uint8 is uint8
    image = torch.where(cover, source_image, image)
    masks = torch.cat([below * (~cover).to(torch.uint8), pasted])
    labels = torch.cat([target["labels"], source_target["labels"][chosen]])
    keep = masks.flatten(1).any(dim=1).bool()
    out = dict(target)
    out["masks"], out["labels"] = masks[keep], labels[keep]
    out["boxes"] = mask_boxes(out["masks"])
    return image, out


class CopyPasteDataset(Dataset):
    """Samples of ``dataset`` through ``transforms``, each with probability ``prob`` with instances
    of another sample pasted on (module doc).

    Args:
        dataset: returns un-augmented ``(image, target)`` (e.g. a
            :class:`~blendmask.data.CocoInstanceDataset` built without ``transforms``); its other
            attributes (``num_classes``, ``class_names``, ``coco``...) are reachable through this wrapper.
        transforms: per-image augmentation applied to both samples before the paste, or None.
        prob: probability of a paste, in ``[0, 1]``.
        max_instances: the most instances pasted at once (>= 1).
    """

    def __init__(self, dataset: Dataset, *, transforms: Optional[Callable[[torch.Tensor, Dict[str, Any]], Sample]],
                 prob: float, max_instances: int) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"CopyPasteDataset: prob must be in [0, 1], got {prob}")
        if max_instances < 1:
            raise ValueError(f"CopyPasteDataset: max_instances must be >= 1, got {max_instances}")
        if getattr(dataset, "transforms", None) is not None:
            raise ValueError("CopyPasteDataset: the wrapped dataset must return un-augmented samples "
                             "(build it with transforms=None and give the transforms here)")
        self.dataset = dataset
        self.transforms = transforms
        self.prob = float(prob)
        self.max_instances = int(max_instances)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _augmented(self, index: int) -> Sample:
        image, target = self.dataset[index]
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __getitem__(self, index: int) -> Sample:
        image, target = self._augmented(index)
        if self.prob == 0.0 or float(torch.rand(())) >= self.prob:
            return image, target
        source_image, source_target = self._augmented(int(torch.randint(len(self.dataset), ())))
        count = len(source_target["labels"])
        if count == 0:
            return image, target
        if source_image.shape != image.shape:
            source_image, source_target = resize_sample(source_image, source_target, tuple(image.shape[-2:]))
            count = len(source_target["labels"])
            if count == 0:
                return image, target
        k = int(torch.randint(1, min(count, self.max_instances) + 1, ()))
        chosen = torch.randperm(count)[:k]
        return paste_instances(image, target, source_image, source_target, chosen)

    def __repr__(self) -> str:
        return (f"CopyPasteDataset({self.dataset!r}, transforms={self.transforms!r}, prob={self.prob}, "
                f"max_instances={self.max_instances})")
