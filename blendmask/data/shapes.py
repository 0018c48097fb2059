"""The built-in synthetic data set: random overlapping textured shapes in COCO format.

``make_shapes(OUT, train=N, val=M, size=S, seed=K)`` writes::

    OUT/train/000001.png ...           OUT/annotations/instances_train.json
    OUT/val/000001.png ...             OUT/annotations/instances_val.json

Each image is ``S x S`` RGB with a textured background and 2-6 (``min_instances`` to
``max_instances``) shapes of up to 4 classes (circle, rectangle, triangle, ellipse), each with its
own colour and texture (solid, stripes or noise). Later shapes occlude earlier ones; a placement
is retried (up to 30 times, then the shape is left out) whenever it would leave an earlier shape
less than 60% visible, so every instance keeps a clear, learnable majority of its pixels. The
annotations describe the **visible** pixels after occlusion: compressed-RLE segmentation, the tight
bbox and area of the visible mask, ``iscrowd`` 0. Instance masks of one image are therefore disjoint.

**Output safety.** ``make_shapes`` never overwrites a file it would not itself write, and never
writes through a symbolic link: before any work it refuses (``FileExistsError`` naming the file)
if one of the files it would write (``annotations/instances_{train,val}.json``,
``{train,val}/NNNNNN.png``) exists, unless ``overwrite=True``; even then it replaces only those
files. A symbolic link at ``annotations/``, ``train/``, ``val/`` or at one of those files is always
refused, so nothing is written outside ``out_dir`` (``out_dir`` itself may be a link: the user
named it). Files are opened with ``O_NOFOLLOW`` (and ``O_EXCL`` unless overwriting), so a link
appearing during the run is refused too. Other files in ``out_dir`` are left alone.

Shapes span about 18-40% of the image side (at least ~20 px across their narrowest part at
S = 256). Every image is generated from its own RNG seeded by ``(seed, split, index)``, so the same
arguments give byte-identical files (pixel-identical across NumPy/Pillow/zlib versions that keep
their RNG streams and encoders), and image ``i`` of a split does not depend on the split sizes.
"""
from __future__ import annotations

import colorsys
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

__all__ = ["SHAPE_CLASSES", "make_shapes", "render_shapes_image"]

SHAPE_CLASSES: Tuple[str, ...] = ("circle", "rectangle", "triangle", "ellipse")
_SPLIT_CODES = {"train": 0, "val": 1}
_MIN_VISIBLE = 0.6  # an occluded shape keeps at least this fraction of its pixels
_PLACEMENT_TRIES = 30
_MIN_COLOUR_DISTANCE = 90.0  # RGB distance between an object's colour and the background / other objects


def make_shapes(
    out_dir: str | os.PathLike,
    *,
    train: int = 1000,
    val: int = 100,
    size: int = 256,
    seed: int = 0,
    num_classes: int = 4,
    min_instances: int = 2,
    max_instances: int = 6,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the synthetic set into ``out_dir`` (layout in the module doc) and return its path.

    Args:
        out_dir: output directory (created).
        train, val: number of images per split (>= 0).
        size: image side in pixels (>= 64).
        seed: base seed; same arguments -> byte-identical files.
        num_classes: 1-4, the first ``num_classes`` of :data:`SHAPE_CLASSES`.
        min_instances, max_instances: instance count range per image (placements that would hide
            earlier shapes too much are dropped, so an image may hold fewer than ``min_instances``).
        overwrite: replace files of an earlier run (only the files make-shapes writes; see
            "Output safety" in the module doc). If False (the default), refuse
            (``FileExistsError``) when one of them exists.
        progress: show a tqdm bar.
    """
    for name, value in (("train", train), ("val", val)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"make_shapes: {name} must be a non-negative integer, got {value!r}")
    if not isinstance(size, int) or size < 64:
        raise ValueError(f"make_shapes: size must be an integer >= 64, got {size!r}")
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"make_shapes: num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes!r}")
    if not 1 <= min_instances <= max_instances:
        raise ValueError(
            f"make_shapes: need 1 <= min_instances <= max_instances, got {min_instances}, {max_instances}"
        )
    out = Path(out_dir)
    ann_dir = out / "annotations"
    _prepare_output(out, {"train": train, "val": val}, overwrite=overwrite)
    categories = [{"id": i + 1, "name": SHAPE_CLASSES[i], "supercategory": "shape"} for i in range(num_classes)]
    bar = tqdm(total=train + val, desc="make-shapes", unit="img", disable=not progress)
    for split, count in (("train", train), ("val", val)):
        image_dir = out / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images: List[Dict[str, Any]] = []
        annotations: List[Dict[str, Any]] = []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            pixels, instances = render_shapes_image(
                rng, size=size, num_classes=num_classes, min_instances=min_instances, max_instances=max_instances
            )
            image_id = index + 1
            file_name = f"{image_id:06d}.png"
            png = io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG", compress_level=1)
            _write_file(image_dir / file_name, png.getvalue(), overwrite=overwrite)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for label, mask in instances:
                annotations.append(_annotation(len(annotations) + 1, image_id, label + 1, mask))
            bar.update(1)
        coco = {
            "info": {"description": "blendmask synthetic shapes", "seed": seed, "size": size, "split": split},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        text = json.dumps(coco, separators=(",", ":"))
        _write_file(ann_dir / f"instances_{split}.json", text.encode("utf-8"), overwrite=overwrite)
    bar.close()
    return out


def _output_files(counts: Dict[str, int]) -> List[Path]:
    """Every file ``make_shapes`` writes for ``{split: image count}``, relative to the output dir."""
    files = [Path("annotations") / f"instances_{split}.json" for split in counts]
    for split, count in counts.items():
        files += [Path(split) / f"{index:06d}.png" for index in range(1, count + 1)]
    return files


def _prepare_output(out: Path, counts: Dict[str, int], *, overwrite: bool) -> None:
    """Check the whole output before any work (rules in the module doc), then create the directories."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"make_shapes: output {out} exists and is not a directory")
    for sub in ["annotations", *counts]:
        path = out / sub
        if path.is_symlink():
            raise FileExistsError(f"make_shapes: {path} is a symbolic link; make-shapes never writes through links")
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"make_shapes: {path} exists and is not a directory")
    for rel in _output_files(counts):
        path = out / rel
        if path.is_symlink():
            raise FileExistsError(f"make_shapes: {path} is a symbolic link; make-shapes never writes through links")
        if path.exists():
            if not path.is_file():
                raise FileExistsError(f"make_shapes: {path} exists and is not a regular file")
            if not overwrite:
                raise FileExistsError(
                    f"make_shapes: {path} exists; refusing to overwrite it (pass --overwrite / overwrite=True "
                    "to replace the files make-shapes writes, or choose a new directory)"
                )
    for sub in ["annotations", *counts]:
        (out / sub).mkdir(parents=True, exist_ok=True)


def _write_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` without following a symbolic link (and without replacing an
    existing file unless ``overwrite``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise FileExistsError(f"make_shapes: {path} appeared during the run; refusing to overwrite it") from None
    except OSError as e:
        if path.is_symlink():
            raise FileExistsError(f"make_shapes: {path} is a symbolic link; make-shapes never writes through links") from None
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> Dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def render_shapes_image(
    rng: np.random.Generator, *, size: int, num_classes: int = 4, min_instances: int = 2, max_instances: int = 6
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Render one image: ``(pixels (size, size, 3) uint8, [(label, visible mask (size, size) bool), ...])``.

    Labels index :data:`SHAPE_CLASSES`; instances are in painting order (later ones on top).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    background_colour = _random_colour(rng, saturation=(0.0, 0.35), value=(0.15, 0.55))
    canvas = _background(rng, background_colour, xx, yy)
    used_colours = [background_colour]
    labels: List[int] = []
    full_areas: List[int] = []
    visible: List[np.ndarray] = []
    for _ in range(int(rng.integers(min_instances, max_instances + 1))):
        for _ in range(_PLACEMENT_TRIES):
            label = int(rng.integers(num_classes))
            mask = _shape_mask(rng, label, size, xx, yy)
            if all((vis & ~mask).sum() >= _MIN_VISIBLE * area for vis, area in zip(visible, full_areas)):
                break
        else:
            continue
        for vis in visible:
            vis &= ~mask
        colour = _distinct_colour(rng, used_colours)
        used_colours.append(colour)
        canvas[mask] = _texture(rng, colour, xx[mask], yy[mask])
        labels.append(label)
        full_areas.append(int(mask.sum()))
        visible.append(mask)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, list(zip(labels, visible))


def _random_colour(rng: np.random.Generator, *, saturation: Tuple[float, float], value: Tuple[float, float]) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _distinct_colour(rng: np.random.Generator, used: List[np.ndarray]) -> np.ndarray:
    """A saturated colour far from ``used`` (best of a few tries)."""
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = _random_colour(rng, saturation=(0.5, 1.0), value=(0.55, 1.0))
        distance = min(float(np.linalg.norm(colour - u)) for u in used)
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _MIN_COLOUR_DISTANCE:
            break
    return best


def _background(rng: np.random.Generator, colour: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Low-contrast background: the colour plus a linear gradient and mild noise, (S, S, 3) float."""
    size = xx.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size - 0.5  # about [-0.7, 0.7]
    canvas = colour[None, None, :] + rng.uniform(10, 30) * ramp[..., None]
    return canvas + 5.0 * rng.standard_normal(canvas.shape, dtype=np.float32)


def _texture(rng: np.random.Generator, colour: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Texture of one object at pixel centres ``(xs, ys)`` (each (P,)), as (P, 3) float: solid,
    stripes or noise."""
    kind = rng.choice(3, p=[0.4, 0.3, 0.3])
    base = np.broadcast_to(colour, xs.shape + (3,))
    if kind == 0:  # solid
        return base + 3.0 * rng.standard_normal(base.shape, dtype=np.float32)
    if kind == 1:  # stripes of the colour and a darker shade
        angle, period = rng.uniform(0, np.pi), rng.uniform(6.0, 12.0)
        phase = (np.cos(angle) * xs + np.sin(angle) * ys) / period
        dark = (np.floor(phase) % 2 == 1)[:, None]
        return np.where(dark, base * 0.6, base)
    return base + 22.0 * rng.standard_normal(base.shape, dtype=np.float32)  # noise


def _shape_mask(rng: np.random.Generator, label: int, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A random shape of class ``label`` as an (S, S) bool mask, kept inside the image."""
    radius = rng.uniform(0.09, 0.2) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    dx, dy = xx - cx, yy - cy
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's rotated frame
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return dx * dx + dy * dy <= radius * radius
    if name == "ellipse":
        minor = radius * rng.uniform(0.4, 0.6)
        return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0
    if name == "rectangle":
        tilt = rng.uniform(-np.pi / 6, np.pi / 6)  # keep rectangles from turning into diamonds
        c, s = np.cos(tilt), np.sin(tilt)
        u, v = c * dx + s * dy, -s * dx + c * dy
        half_w, half_h = radius * 0.85, radius * 0.85 * rng.uniform(0.5, 1.0)
        if rng.uniform() < 0.5:
            half_w, half_h = half_h, half_w
        return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    # triangle: three vertices around the centre, jittered away from equilateral
    angles = angle + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.25, 0.25, size=3)
    radii = radius * rng.uniform(0.9, 1.1, size=3)
    px, py = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    inside = np.ones_like(xx, dtype=bool)
    for i in range(3):  # counter-clockwise vertices: inside is left of every edge
        j = (i + 1) % 3
        inside &= (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i]) >= 0
    return inside
