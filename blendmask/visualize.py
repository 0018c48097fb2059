"""Pictures: predictions over an image, bases and attentions (paper Figures 1 and 3), loss curves.

All functions draw off-screen (PIL and matplotlib's Agg canvas, never pyplot), so they work on
machines without a display and do not touch matplotlib's global state.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

__all__ = ["instance_colours", "draw_instances", "outline_regions", "draw_bases_and_attentions", "plot_curves"]

#: Colour of the outlines :func:`outline_regions` draws (with a black line outside each).
REGION_COLOUR = (255, 255, 255)

# Base colours of the paper's Figure 3 (red, blue, yellow, green), then matplotlib's tab10.
_BASE_COLOURS = [(0.89, 0.10, 0.11), (0.12, 0.35, 0.85), (0.98, 0.82, 0.10), (0.20, 0.70, 0.25),
                 (0.58, 0.40, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50),
                 (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)]


def instance_colours(n: int) -> List[Tuple[int, int, int]]:
    """``n`` distinct saturated RGB colours (golden-ratio hue steps)."""
    return [
        tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb((0.1 + i * 0.618033988749895) % 1.0, 0.8, 1.0))
        for i in range(n)
    ]


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _image_to_uint8(image: Union[torch.Tensor, np.ndarray, Image.Image]) -> np.ndarray:
    """``(H, W, 3)`` uint8 from a PIL image or a ``(3, H, W)`` float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    array = _to_numpy(image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"draw_instances: image must be (3, H, W) or a PIL image, got shape {array.shape}")
    return (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def _font(height: int) -> ImageFont.ImageFont:
    size = max(10, height // 40)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _mask_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W) bool that have a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


class _RleMasks:
    """``masks[i]``: the ``(H, W)`` bool mask decoded from the i-th COCO RLE, one at a time."""

    def __init__(self, rles: Sequence[Mapping[str, Any]], n: int, height: int, width: int):
        rles = list(rles)
        bad = [i for i, r in enumerate(rles) if list(r.get("size", ())) != [height, width]]
        if len(rles) != n or bad:
            raise ValueError(f"draw_instances: masks_rle must be {n} RLEs of size [{height}, {width}], got "
                             f"{len(rles)}" + (f", record {bad[0]} is not" if bad else ""))
        self._rles = rles

    def __getitem__(self, i: int) -> Tuple[int, int, np.ndarray]:
        rle = dict(self._rles[i])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return 0, 0, mask_utils.decode(rle).astype(bool)


class _WholeMasks:
    """``masks[i]``: ``(0, 0, mask (H, W) bool)`` of an ``(n, H, W)`` bool array."""

    def __init__(self, masks: np.ndarray):
        self._masks = masks

    def __getitem__(self, i: int) -> Tuple[int, int, np.ndarray]:
        return 0, 0, self._masks[i]


class _CropMasks:
    """``masks[i]``: ``(y0, x0, crop (h, w) bool)`` from ``(x0, y0, crop)`` entries inside the image."""

    def __init__(self, crops: Sequence[Tuple[int, int, np.ndarray]], n: int, height: int, width: int):
        crops = list(crops)
        bad = [k for k, (x0, y0, c) in enumerate(crops)
               if x0 < 0 or y0 < 0 or x0 + c.shape[1] > width or y0 + c.shape[0] > height]
        if len(crops) != n or bad:
            raise ValueError(f"draw_instances: mask_crops must be {n} (x0, y0, crop) inside the {width}x{height} "
                             f"image, got {len(crops)}" + (f", record {bad[0]} is not" if bad else ""))
        self._crops = crops

    def __getitem__(self, i: int) -> Tuple[int, int, np.ndarray]:
        x0, y0, crop = self._crops[i]
        return int(y0), int(x0), np.asarray(crop, dtype=bool)


def draw_instances(
    image: Union[torch.Tensor, np.ndarray, Image.Image],
    result: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.3,
    alpha: float = 0.5,
    labels: bool = True,
) -> Image.Image:
    """Overlay instances on an image: translucent masks in distinct colours with their outlines,
    boxes, and "name score" labels.

    Labels are placed beside their boxes where they cover no object and no other label (the best
    scores first); the instances left without such a place are listed in a legend strip added to
    the right of the picture (a swatch of their colour and their label; as many as its height
    holds, then a count of the rest). Box lines and the font scale with the image.

    Args:
        image: ``(3, H, W)`` float RGB in [0, 1] (tensor or array) or a PIL image.
        result: ``boxes (n, 4)`` xyxy pixels, ``labels (n,)``, optional ``scores (n,)`` (absent:
            ground truth, drawn without scores) and optional ``masks`` ``(n, 1, H, W)`` or
            ``(n, H, W)`` probabilities or binary masks (drawn where >= 0.5), or ``mask_crops``,
            n ``(x0, y0, bool (h, w))`` masks as crops inside the image, or ``masks_rle``,
            n COCO RLE dicts of the image's size (decoded one at a time).
        class_names: name of each contiguous label.
        score_threshold: instances scoring below it are not drawn.
        alpha: mask opacity.
        labels: draw the labels (False: masks and boxes only).

    Returns: an RGB PIL image of the input's height, wider when it holds a legend.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"draw_instances: alpha must be in [0, 1], got {alpha}")
    for key in ("boxes", "labels"):
        if key not in result:
            raise ValueError(f"draw_instances: result lacks {key!r}")
    pixels = _image_to_uint8(image)
    height, width = pixels.shape[:2]
    boxes = _to_numpy(result["boxes"]).astype(np.float64).reshape(-1, 4)
    labels_ = _to_numpy(result["labels"]).astype(np.int64).reshape(-1)
    n = len(labels_)
    scores = _to_numpy(result["scores"]).astype(np.float64).reshape(-1) if "scores" in result else None
    masks = None
    if "masks" in result:
        masks = _to_numpy(result["masks"])
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.shape != (n, height, width):
            raise ValueError(f"draw_instances: masks must be (n, [1,] H, W) = ({n}, {height}, {width}), got {masks.shape}")
        masks = _WholeMasks(masks >= 0.5)
    elif "mask_crops" in result:
        masks = _CropMasks(result["mask_crops"], n, height, width)
    elif "masks_rle" in result:
        masks = _RleMasks(result["masks_rle"], n, height, width)
    if boxes.shape[0] != n or (scores is not None and scores.shape[0] != n):
        raise ValueError(f"draw_instances: boxes, labels and scores must have the same length n={n}")
    if n and (labels_.min() < 0 or labels_.max() >= len(class_names)):
        raise ValueError(f"draw_instances: labels must be in [0, {len(class_names)}), got max {labels_.max()}")

    keep = np.arange(n) if scores is None else np.flatnonzero(scores >= score_threshold)
    colours = instance_colours(len(keep))
    canvas = pixels.astype(np.float32)
    occupied = np.zeros((height, width), dtype=bool)
    if masks is not None:
        for colour, i in zip(colours, keep):
            y0, x0, m = masks[i]
            region = canvas[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
            region[m] = region[m] * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha
            region[_mask_edge(m)] = colour
            occupied[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] |= m
    canvas += 0.5  # rounded to uint8 in place: no second or third image-sized float array
    out = Image.fromarray(np.clip(canvas, 0, 255, out=canvas).astype(np.uint8))
    del canvas
    draw = ImageDraw.Draw(out)
    line = max(1, round(max(height, width) / 500))
    for colour, i in zip(colours, keep):
        draw.rectangle(list(boxes[i]), outline=colour, width=line)
        if masks is None:
            x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
            occupied[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = True
    if not labels:
        return out
    font = _font(min(height, width))
    texts = {i: class_names[labels_[i]] if scores is None else f"{class_names[labels_[i]]} {scores[i]:.2f}" for i in keep}
    order = keep if scores is None else keep[np.argsort(-scores[keep], kind="stable")]  # the best placed first
    placed, legend = _place_labels(draw, font, [(i, texts[i], boxes[i]) for i in order], occupied)
    colour_of = dict(zip(keep.tolist(), colours))
    for i, (tx, ty, left, top) in placed.items():
        _draw_label(draw, font, (tx, ty), texts[i], colour_of[i], left, top)
    if legend:
        out = _with_legend(out, font, [(texts[i], colour_of[i]) for i in legend])
    return out


def outline_regions(picture: Image.Image, regions: Sequence[Tuple[float, float, float, float]],
                    names: Sequence[str]) -> Image.Image:
    """Outline each region ``(x0, y0, x1, y1)`` (pixels of ``picture``, exclusive ends) on
    ``picture`` in :data:`REGION_COLOUR` with a black line just outside, and write its name inside
    its top-left corner; the line width scales with the picture. Draws in place; returns ``picture``."""
    if len(names) != len(regions):
        raise ValueError(f"outline_regions: {len(regions)} regions but {len(names)} names")
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(picture.size) / 500))
    font = _font(min(picture.size))
    for (x0, y0, x1, y1), name in zip(regions, names):
        x0, y0, x1, y1 = int(math.floor(x0)), int(math.floor(y0)), int(math.ceil(x1)) - 1, int(math.ceil(y1)) - 1
        draw.rectangle([x0 - line, y0 - line, x1 + line, y1 + line], outline=(0, 0, 0), width=line)
        draw.rectangle([x0, y0, x1, y1], outline=REGION_COLOUR, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        tx, ty = x0 + line, y0 + line
        draw.rectangle([tx, ty, tx + right - left + 3, ty + bottom - top + 3], fill=REGION_COLOUR)
        draw.text((tx + 2 - left, ty + 2 - top), name, fill=(0, 0, 0), font=font)
    return picture


def _place_labels(draw: ImageDraw.ImageDraw, font, items, occupied: np.ndarray):
    """Label positions beside each box that cover no object pixel and no other label:
    ``({index: (x, y, text left, text top)}, [indices left to the legend])``."""
    height, width = occupied.shape
    placed: Dict[int, Tuple[int, int, int, int]] = {}
    rectangles: List[Tuple[int, int, int, int]] = []
    legend: List[int] = []
    for i, text, (x1, y1, x2, y2) in items:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        lw, lh = right - left + 4, bottom - top + 4
        candidates = [(x1, y1 - lh - 1), (x1, y2 + 1), (x2 + 1, y1), (x1 - lw - 1, y1), (x2 - lw, y1 - lh - 1),
                      (x2 - lw, y2 + 1), (x2 + 1, y2 - lh), (x1 - lw - 1, y2 - lh)]
        for tx, ty in candidates:
            tx, ty = int(math.floor(tx)), int(math.floor(ty))
            rect = (tx, ty, tx + lw, ty + lh)
            if tx < 0 or ty < 0 or rect[2] > width or rect[3] > height or occupied[ty:rect[3], tx:rect[2]].any():
                continue
            if any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3] for r in rectangles):
                continue
            placed[i] = (tx, ty, left, top)
            rectangles.append(rect)
            break
        else:
            legend.append(i)
    return placed, legend


def _draw_label(draw: ImageDraw.ImageDraw, font, position, text: str, colour, left: int, top: int) -> None:
    tx, ty = position
    right, bottom = draw.textbbox((0, 0), text, font=font)[2:]
    draw.rectangle([tx, ty, tx + right - left + 3, ty + bottom - top + 3], fill=colour)
    draw.text((tx + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)


def _with_legend(picture: Image.Image, font, entries) -> Image.Image:
    """``picture`` with a legend strip on its right: a swatch and the text of each entry, as many
    as the picture's height holds, then a line counting the rest."""
    probe = ImageDraw.Draw(picture)
    row = max(b[3] - b[1] for b in (probe.textbbox((0, 0), text, font=font) for text, _ in entries[:50])) + 6
    rows = max(1, (picture.height - 4) // row)
    if len(entries) > rows:
        entries = entries[:rows - 1] + [(f"+ {len(entries) - rows + 1} more", None)]
    sizes = [probe.textbbox((0, 0), text, font=font) for text, _ in entries]
    swatch = row - 4
    strip = max(b[2] - b[0] for b in sizes) + swatch + 12
    out = Image.new("RGB", (picture.width + strip, picture.height), (255, 255, 255))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, ((text, colour), (left, top, _, _)) in enumerate(zip(entries, sizes)):
        x, y = picture.width + 4, 2 + k * row
        if colour is not None:
            draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=colour)
        draw.text((x + swatch + 4 - left, y + 3 - top), text, fill=(0, 0, 0), font=font)
    return out


def _figure_to_image(fig: Figure) -> Image.Image:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def draw_bases_and_attentions(
    bases: Union[torch.Tensor, np.ndarray],
    attns: Union[torch.Tensor, np.ndarray],
    *,
    max_instances: int = 4,
    instance_titles: Optional[Sequence[str]] = None,
) -> Image.Image:
    """The blender's inputs as a picture, like Figures 1 and 3 of the paper.

    Row 0 shows the K bases (signed, diverging colour map, each scaled to its own max |value|).
    Each following row is one instance: its K attention maps after the softmax over K (0..1), and,
    last, the attention as one colour image where every cell mixes the base colours (titles) by
    its softmax weights (Figure 3, right).

    Args:
        bases: ``(K, Hb, Wb)`` bases of one image.
        attns: ``(n, K, M, M)`` attention logits of its instances (best first).
        max_instances: rows drawn for at most this many instances.
        instance_titles: optional row labels (e.g. "circle 0.93"), one per instance.
    """
    bases_np = _to_numpy(bases).astype(np.float32)
    attns_np = _to_numpy(attns).astype(np.float32)
    if bases_np.ndim != 3:
        raise ValueError(f"draw_bases_and_attentions: bases must be (K, Hb, Wb), got shape {bases_np.shape}")
    k = bases_np.shape[0]
    if attns_np.ndim != 4 or attns_np.shape[1] != k or attns_np.shape[2] != attns_np.shape[3]:
        raise ValueError(f"draw_bases_and_attentions: attns must be (n, K={k}, M, M), got shape {attns_np.shape}")
    if max_instances < 0:
        raise ValueError(f"draw_bases_and_attentions: max_instances must be >= 0, got {max_instances}")
    n = min(attns_np.shape[0], max_instances)
    if instance_titles is not None and len(instance_titles) < n:
        raise ValueError(f"draw_bases_and_attentions: need {n} instance_titles, got {len(instance_titles)}")
    base_colours = np.array([_BASE_COLOURS[i % len(_BASE_COLOURS)] for i in range(k)], dtype=np.float32)

    fig = Figure(figsize=(1.7 * (k + 1), 1.8 * (n + 1)), dpi=100)
    axes = fig.subplots(n + 1, k + 1, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(k):
        scale = float(np.abs(bases_np[j]).max()) or 1.0
        axes[0, j].imshow(bases_np[j], cmap="coolwarm", vmin=-scale, vmax=scale)
        axes[0, j].set_title(f"base {j}", color=tuple(base_colours[j]), fontsize=9, fontweight="bold")
    axes[0, k].set_axis_off()
    logits = attns_np[:n]
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)  # (n, K, M, M), softmax over K
    for i in range(n):
        row = axes[i + 1]
        for j in range(k):
            row[j].imshow(weights[i, j], cmap="viridis", vmin=0.0, vmax=1.0)
        row[0].set_ylabel(instance_titles[i] if instance_titles is not None else f"instance {i}", fontsize=8)
        row[k].imshow(np.einsum("kyx,kc->yxc", weights[i], base_colours).clip(0.0, 1.0))
        if i == 0:
            row[k].set_title("attention", fontsize=9)
            for j in range(k):
                row[j].set_title(f"attn {j}", fontsize=9)
    fig.tight_layout()
    return _figure_to_image(fig)


def _read_records(source: Union[str, os.PathLike, Iterable[Mapping[str, Any]]]) -> List[Mapping[str, Any]]:
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"plot_curves: metrics file {path!r} not found")
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"plot_curves: {path} line {number} is not JSON: {e.msg}") from e
    return records


def plot_curves(
    jsonl_path_or_records: Union[str, os.PathLike, Iterable[Mapping[str, Any]]],
    out_png: Union[str, os.PathLike],
    keys: Sequence[str],
    *,
    x_key: str = "iteration",
) -> str:
    """Plot metric curves (one panel per key, against ``x_key``) from JSON-lines records; save a PNG.

    Records lacking a key, or holding a non-finite value for it, are skipped for that key.
    Raises ``ValueError`` if no record has ``x_key`` together with any of ``keys``. Returns the path.
    """
    if not keys:
        raise ValueError("plot_curves: keys is empty")
    records = _read_records(jsonl_path_or_records)
    series: Dict[str, Tuple[List[float], List[float]]] = {}
    for key in keys:
        xs, ys = [], []
        for rec in records:
            x, y = rec.get(x_key), rec.get(key)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
                xs.append(float(x))
                ys.append(float(y))
        if xs:
            series[key] = (xs, ys)
    if not series:
        raise ValueError(f"plot_curves: no record has {x_key!r} together with any of {list(keys)}")
    fig = Figure(figsize=(7, 2.4 * len(series)), dpi=100)
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    for ax, (key, (xs, ys)) in zip(axes, series.items()):
        ax.plot(xs, ys, linewidth=1.2)
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(x_key)
    fig.tight_layout()
    out_png = os.fspath(out_png)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    FigureCanvasAgg(fig).print_png(out_png)
    return out_png
