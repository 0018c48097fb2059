"""The built-in synthetic panoptic set: the shapes of :mod:`blendmask.data.shapes` over textured stuff bands.

``make_panoptic_shapes(OUT, train=N, val=M, size=S, seed=K)`` writes the COCO panoptic format::

    OUT/train/000001.png ...                      (images)
    OUT/annotations/panoptic_train.json           (segments_info per image, categories with isthing)
    OUT/annotations/panoptic_train/000001.png ... (RGB-encoded segment ids)
    (and the same for val)

Each image is :func:`~blendmask.data.shapes.render_shapes_image`'s (2-6 occluding textured shapes, the
thing categories 1-4: circle, rectangle, triangle, ellipse) with its background replaced by horizontal
stuff bands with wavy borders: "sky" on top (light, smooth gradient), then "ground" (earthy, grainy)
and/or "water" (dark blue, wave stripes); the layouts are sky+ground, sky+water and sky+water+ground.
The stuff categories are 5 (sky), 6 (ground), 7 (water). Stuff segments are the visible band pixels;
every pixel belongs to a segment (no void). Segment ids are ``1000 * category_id + k`` (so the ids use
two PNG channels). Image ``i`` of a split comes from its own RNG seeded by ``(seed, split, index)``:
the same arguments give byte-identical files.
"""
from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from .panoptic import id_to_rgb
from .shapes import SHAPE_CLASSES, render_shapes_image

__all__ = ["STUFF_CLASSES", "make_panoptic_shapes", "render_panoptic_image"]

STUFF_CLASSES: Tuple[str, ...] = ("sky", "ground", "water")
DESCRIPTION = "blendmask synthetic panoptic shapes"
_SPLIT_CODES = {"train": 0, "val": 1}
_LAYOUTS = (("sky", "ground"), ("sky", "water"), ("sky", "water", "ground"))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _stuff_texture(rng: np.random.Generator, name: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """(S, S, 3) float texture of stuff class ``name`` over the whole image."""
    size = xx.shape[0]
    if name == "sky":
        top, bottom = _hsv(rng.uniform(0.53, 0.62), rng.uniform(0.25, 0.5), rng.uniform(0.85, 1.0)), \
            _hsv(rng.uniform(0.53, 0.62), rng.uniform(0.05, 0.25), rng.uniform(0.9, 1.0))
        t = (yy / size)[..., None]
        return top * (1 - t) + bottom * t + 2.0 * rng.standard_normal(xx.shape + (3,), dtype=np.float32)
    if name == "ground":
        colour = _hsv(rng.uniform(0.05, 0.25), rng.uniform(0.45, 0.75), rng.uniform(0.35, 0.6))
        grain = 28.0 * rng.standard_normal(xx.shape + (1,), dtype=np.float32)
        return colour + grain + 8.0 * rng.standard_normal(xx.shape + (3,), dtype=np.float32)
    colour = _hsv(rng.uniform(0.56, 0.68), rng.uniform(0.6, 0.9), rng.uniform(0.35, 0.6))  # water
    period, wobble = rng.uniform(5.0, 9.0), rng.uniform(10.0, 20.0)
    waves = np.sin(2 * np.pi * yy / period + 1.5 * np.sin(xx / wobble))[..., None]
    return colour * (1.0 + 0.18 * waves) + 4.0 * rng.standard_normal(xx.shape + (3,), dtype=np.float32)


def render_panoptic_image(rng: np.random.Generator, *, size: int, num_classes: int = 4, min_instances: int = 2,
                          max_instances: int = 6) -> Tuple[np.ndarray, List[Tuple[str, int, np.ndarray]]]:
    """One image: ``(pixels (S, S, 3) uint8, [(kind, index, mask (S, S) bool), ...])``.

    ``kind`` is ``"thing"`` (``index`` into :data:`SHAPE_CLASSES`) or ``"stuff"`` (``index`` into
    :data:`STUFF_CLASSES`); the masks are disjoint and cover the image.
    """
    pixels, instances = render_shapes_image(rng, size=size, num_classes=num_classes, min_instances=min_instances,
                                            max_instances=max_instances)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    taken = np.zeros((size, size), dtype=bool)
    for _, mask in instances:
        taken |= mask
    layout = _LAYOUTS[int(rng.integers(len(_LAYOUTS)))]
    # band borders: increasing base heights, each with its own wave
    bases = np.sort(rng.uniform(0.25, 0.8, size=len(layout) - 1)) if len(layout) > 2 else \
        np.array([rng.uniform(0.3, 0.6)])
    if len(bases) > 1 and bases[1] - bases[0] < 0.15:
        bases[1] = min(bases[0] + 0.15, 0.9)
    band = np.zeros((size, size), dtype=np.int64)
    for border in bases:
        wave = border * size + rng.uniform(2, 0.06 * size) * np.sin(2 * np.pi * xx / rng.uniform(0.4, 1.2) / size
                                                                      + rng.uniform(0, 2 * np.pi))
        band += (yy >= wave).astype(np.int64)
    canvas = pixels.astype(np.float32)
    segments: List[Tuple[str, int, np.ndarray]] = []
    for position, name in enumerate(layout):
        region = (band == position) & ~taken
        if region.any():
            canvas[region] = _stuff_texture(rng, name, xx, yy)[region]
            segments.append(("stuff", STUFF_CLASSES.index(name), region))
    segments += [("thing", label, mask) for label, mask in instances]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), segments


def _categories(num_classes: int) -> List[Dict[str, Any]]:
    things = [{"id": i + 1, "name": SHAPE_CLASSES[i], "supercategory": "shape", "isthing": 1}
              for i in range(num_classes)]
    stuff = [{"id": len(SHAPE_CLASSES) + 1 + i, "name": name, "supercategory": "stuff", "isthing": 0}
             for i, name in enumerate(STUFF_CLASSES)]
    return things + stuff


def _bbox(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _check_ours(ann_dir: Path, overwrite: bool) -> None:
    """Refuse to replace panoptic annotation files this generator did not write (unless ``overwrite``)."""
    for split in _SPLIT_CODES:
        path = ann_dir / f"panoptic_{split}.json"
        if overwrite or not path.exists():
            continue
        try:
            ours = json.loads(path.read_text(encoding="utf-8")).get("info", {}).get("description") == DESCRIPTION
        except (ValueError, OSError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"make-shapes --panoptic: {path} exists and was not written by it: "
                                  "choose another output directory")


def make_panoptic_shapes(out_dir: str | os.PathLike, *, train: int = 1000, val: int = 100, size: int = 256,
                         seed: int = 0, num_classes: int = 4, min_instances: int = 2, max_instances: int = 6,
                         overwrite: bool = False, progress: bool = False) -> Path:
    """Write the synthetic panoptic set into ``out_dir`` (layout in the module doc) and return its path.

    Arguments as :func:`blendmask.data.make_shapes`; files a previous run of this function wrote are
    replaced, other existing panoptic annotation files only with ``overwrite``.
    """
    for name, value in (("train", train), ("val", val)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"make_panoptic_shapes: {name} must be a non-negative integer, got {value!r}")
    if not isinstance(size, int) or size < 64:
        raise ValueError(f"make_panoptic_shapes: size must be an integer >= 64, got {size!r}")
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"make_panoptic_shapes: num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes!r}")
    out = Path(out_dir)
    ann_dir = out / "annotations"
    _check_ours(ann_dir, overwrite)
    categories = _categories(num_classes)
    thing_ids = [c["id"] for c in categories if c["isthing"]]
    stuff_ids = [c["id"] for c in categories if not c["isthing"]]
    bar = tqdm(total=train + val, desc="make-shapes --panoptic", unit="img", disable=not progress)
    for split, count in (("train", train), ("val", val)):
        image_dir, png_dir = out / split, ann_dir / f"panoptic_{split}"
        image_dir.mkdir(parents=True, exist_ok=True)
        png_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            pixels, segments = render_panoptic_image(rng, size=size, num_classes=num_classes,
                                                     min_instances=min_instances, max_instances=max_instances)
            image_id, file_name = index + 1, f"{index + 1:06d}.png"
            ids = np.zeros((size, size), dtype=np.int64)
            info = []
            for k, (kind, label, mask) in enumerate(segments):
                category_id = thing_ids[label] if kind == "thing" else stuff_ids[label]
                segment_id = 1000 * category_id + k
                ids[mask] = segment_id
                info.append({"id": segment_id, "category_id": category_id, "iscrowd": 0,
                             "bbox": _bbox(mask), "area": int(mask.sum())})
            Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=1)
            Image.fromarray(id_to_rgb(ids)).save(png_dir / file_name, format="PNG", compress_level=1)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": info})
            bar.update(1)
        data = {"info": {"description": DESCRIPTION, "seed": seed, "size": size, "split": split},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        with open(ann_dir / f"panoptic_{split}.json", "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
    bar.close()
    return out
