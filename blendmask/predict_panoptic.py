"""Panoptic prediction on image files: a panoptic overlay PNG per image and a COCO-panoptic-style JSON.

The overlay (:func:`draw_panoptic`) paints every stuff segment in its category's colour and every
thing segment in its own colour (with its outline and a "name score" label at its top-left pixel);
``<stem>_panoptic.png`` puts the image and the overlay side by side. ``panoptic_predictions.json``
lists, per image, the segments (``id``, ``isthing``, ``category``, ``area``, ``score`` for things) and
the name of the id-map PNG (``<stem>_panoptic_ids.png``, RGB-encoded ids as the COCO panoptic format).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from blendmask.data.images import ImageReading, check_image_header, read_image

__all__ = ["PanopticPredictor", "draw_panoptic", "predict_panoptic_files", "PANOPTIC_PREDICTIONS_JSON"]

PANOPTIC_PREDICTIONS_JSON = "panoptic_predictions.json"
PathLike = Union[str, os.PathLike]


class PanopticPredictor:
    """A panoptic model plus its thing and stuff names.

    Args:
        model: a :class:`~blendmask.models.PanopticBlendMask`.
        class_names: thing names (contiguous labels); stuff_names: stuff names (stuff indices).
        reading: how image files are read (the config's ``input`` rules the model was trained with).
    """

    def __init__(self, *, model: torch.nn.Module, class_names: Sequence[str], stuff_names: Sequence[str],
                 device: Union[str, torch.device] = "cpu", compile: bool = False,
                 reading: ImageReading = ImageReading()):
        from blendmask.models.inference_path import inference_model_of

        # batch norms folded in a copy (and with ``compile`` backbone and head compiled)
        self.model = inference_model_of(model.to(device).eval(), compile=compile)
        self.class_names, self.stuff_names = list(class_names), list(stuff_names)
        self.device = torch.device(device)
        self.reading = reading

    @classmethod
    def from_weights(cls, path: PathLike, *, device: Union[str, torch.device] = "cpu",
                     compile: bool = False, max_image_pixels: Optional[int] = None) -> "PanopticPredictor":
        """The model of a weights file written by ``blendmask train`` on panoptic data (names from the file,
        else ``class_<i>`` / ``stuff_<i>``); images are read by the config's ``input`` rules, with
        ``max_image_pixels`` replacing its limit."""
        from blendmask.models import load_model_from_weights
        from blendmask.serialization import load_checkpoint

        model, cfg = load_model_from_weights(path, device=device)
        if not cfg.model.panoptic.enabled:
            raise ValueError(f"{path} is not a panoptic model (its config has model.panoptic.enabled false)")
        data = load_checkpoint(path)
        names = data.get("class_names") or [f"class_{i}" for i in range(cfg.model.num_classes)]
        stuff = data.get("stuff_names") or [f"stuff_{i}" for i in range(cfg.model.panoptic.num_stuff_classes)]
        if max_image_pixels is not None:
            cfg.input.max_image_pixels = max_image_pixels
        return cls(model=model, class_names=names, stuff_names=stuff, device=device, compile=compile,
                   reading=ImageReading.from_config(cfg.input))

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> Dict[str, Any]:
        """``panoptic_seg (H, W)`` int32 (CPU) and ``segments_info`` of one ``(3, H, W)`` image."""
        result = self.model([image.to(self.device)])[0]
        return {"panoptic_seg": result["panoptic_seg"].cpu(), "segments_info": result["segments_info"]}


def _colour(index: int, *, stuff: bool) -> np.ndarray:
    """Muted fixed colours for stuff categories, saturated golden-ratio hues for things."""
    import colorsys

    hue = (0.13 + index * 0.618033988749895) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.35 if stuff else 0.85, 0.75 if stuff else 1.0)) * 255.0


def draw_panoptic(image: torch.Tensor, panoptic_seg: torch.Tensor, segments_info: Sequence[Mapping[str, Any]],
                  class_names: Sequence[str], stuff_names: Sequence[str], *, alpha: float = 0.6) -> Image.Image:
    """The image and its panoptic overlay side by side (RGB PIL image of width ``2 W``)."""
    pixels = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).astype(np.float32)
    ids = panoptic_seg.cpu().numpy()
    canvas = pixels.copy()
    labels = []
    for rank, seg in enumerate(segments_info):
        mask = ids == seg["id"]
        if not mask.any():
            continue
        colour = _colour(seg["category_id"] if not seg["isthing"] else rank, stuff=not seg["isthing"])
        canvas[mask] = canvas[mask] * (1 - alpha) + colour * alpha
        if seg["isthing"]:
            padded = np.pad(mask, 1)
            edge = mask & ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
            canvas[edge] = colour
            ys, xs = np.nonzero(mask)
            labels.append((int(xs.min()), int(ys.min()),
                           f"{class_names[seg['category_id']]} {seg.get('score', 0.0):.2f}", colour))
        else:
            ys, xs = np.nonzero(mask)
            labels.append((int(np.median(xs)), int(np.median(ys)), stuff_names[seg["category_id"]], colour))
    overlay = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    for x, y, text, colour in labels:
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=tuple(int(c) for c in colour))
        draw.text((x, y), text, fill=(0, 0, 0))
    out = Image.new("RGB", (2 * ids.shape[1], ids.shape[0]))
    out.paste(Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), (0, 0))
    out.paste(overlay, (ids.shape[1], 0))
    return out


def predict_panoptic_files(predictor: PanopticPredictor, image_paths: Sequence[PathLike],
                           out_dir: PathLike) -> List[Path]:
    """Predict every image; write ``<stem>_panoptic.png`` (overlay), ``<stem>_panoptic_ids.png`` and
    :data:`PANOPTIC_PREDICTIONS_JSON` into ``out_dir``; return the overlay paths. Streams as
    :func:`blendmask.predict.predict_files` does."""
    from blendmask.data.panoptic import id_to_rgb

    if not image_paths:
        raise ValueError("no images given")
    for path in image_paths:  # fail on a file that is not an image before any work
        check_image_header(path, reading=predictor.reading)
    images = (read_image(p, reading=predictor.reading) for p in image_paths)  # then one image in memory at a time
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlays, records = [], []
    for path, image in zip(image_paths, images):
        result = predictor(image)
        stem = Path(path).stem
        overlay = out_dir / f"{stem}_panoptic.png"
        ids_png = out_dir / f"{stem}_panoptic_ids.png"
        draw_panoptic(image, result["panoptic_seg"], result["segments_info"], predictor.class_names,
                      predictor.stuff_names).save(overlay)
        Image.fromarray(id_to_rgb(result["panoptic_seg"].numpy())).save(ids_png)
        overlays.append(overlay)
        segments = []
        for seg in result["segments_info"]:
            names = predictor.class_names if seg["isthing"] else predictor.stuff_names
            entry = {"id": seg["id"], "isthing": seg["isthing"], "category": names[seg["category_id"]],
                     "label": seg["category_id"], "area": seg["area"]}
            if "score" in seg:
                entry["score"] = round(float(seg["score"]), 5)
            segments.append(entry)
        records.append({"file": str(path), "height": int(image.shape[1]), "width": int(image.shape[2]),
                        "overlay": str(overlay), "ids_png": ids_png.name, "segments_info": segments})
    (out_dir / PANOPTIC_PREDICTIONS_JSON).write_text(json.dumps(
        {"class_names": predictor.class_names, "stuff_names": predictor.stuff_names, "images": records}, indent=1))
    return overlays
