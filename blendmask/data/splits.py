"""One call from a ``--data`` argument to the dataset of a split: :func:`load_split`.

A COCO JSON given as ``--data`` is parsed once per process: the format check, the image-directory
search and the dataset share the records of that one parse
(:mod:`blendmask.data.coco_index`).
"""
from __future__ import annotations

import os
from typing import Optional, Union

from .coco import CocoInstanceDataset, Transform, resolve_split
from .coco_index import load_coco_records
from .panoptic import CocoPanopticDataset, PanopticFormatError, detect_format, resolve_panoptic_split

__all__ = ["load_split"]


def load_split(
    data: str | os.PathLike,
    split: str,
    *,
    panoptic: Optional[bool] = False,
    transforms: Optional[Transform] = None,
    mask_format: str = "polygon",
    uint8_images: bool = False,
) -> Union[CocoInstanceDataset, CocoPanopticDataset]:
    """The dataset of ``split`` ("train" or "val") of a data argument.

    ``data``: a data directory or a COCO JSON file (:func:`blendmask.data.resolve_split`,
    :func:`blendmask.data.panoptic.resolve_panoptic_split`). ``panoptic``: False expects COCO
    instances, True COCO panoptic data, None takes what ``data`` holds; data of the other format
    is a one-line :class:`~blendmask.data.panoptic.PanopticFormatError` naming the format found.
    ``transforms``, and for instances ``mask_format`` and ``uint8_images`` (True for a training
    set: 8-bit images cross the loader's worker boundary as uint8), are passed to the dataset.
    """
    data = os.fspath(data)
    found = detect_format(data)
    if panoptic is not None and (found == "panoptic") != panoptic:
        expected = "COCO panoptic data (a panoptic config)" if panoptic else "COCO instance annotations"
        raise PanopticFormatError(f"--data {data} holds COCO {found} data, but {expected} are expected here"
                                  + ("; use a panoptic config (e.g. lite_mobilenet_v2_panoptic) or panoptic weights"
                                     if found == "panoptic" else ""))
    if found == "panoptic":
        return CocoPanopticDataset(*resolve_panoptic_split(data, split), transforms=transforms)
    ann_file, image_dir = resolve_split(data, split)
    return CocoInstanceDataset(ann_file, image_dir, transforms=transforms, mask_format=mask_format,
                               uint8_images=uint8_images, records=load_coco_records(ann_file))
