"""Prediction on image files: run a trained model, write an overlay PNG per image, a JSON of the
results, and optionally a picture of the bases and the attentions of the top instances."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from pycocotools import mask as mask_utils
from torch import nn

from blendmask.data.images import ImageReading, check_image_header, decode_image, read_image
from blendmask.models.blendmask import MASK_FORMATS
from blendmask.models.inference_path import inference_model_of
from blendmask.models.mask_ops import MASK_THRESHOLD, encode_masks_rle
from blendmask.tiling.sliced import DEFAULT_OVERLAP, resolve_tile, sliced_predict

__all__ = ["Predictor", "PredictionFiles", "predict_files", "expand_image_inputs",
           "RESULTS_JSON", "IMAGE_SUFFIXES"]

RESULTS_JSON = "predictions.json"
#: The file name endings taken as images when a directory is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def expand_image_inputs(inputs: Sequence[PathLike]) -> "tuple[List[Path], List[Path]]":
    """``(images, skipped)``: every input file as given, and the files of every input directory
    (not its subdirectories) whose name ends in :data:`IMAGE_SUFFIXES`, sorted; ``skipped``
    lists the other files of those directories. A missing input is a ``FileNotFoundError``."""
    images: List[Path] = []
    skipped: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            for entry in sorted(item.iterdir()):
                if entry.is_file():
                    (images if entry.suffix.lower() in IMAGE_SUFFIXES else skipped).append(entry)
        elif item.is_file():
            images.append(item)
        else:
            raise FileNotFoundError(f"image not found: {str(item)!r}")
    return images, skipped


PathLike = Union[str, os.PathLike]


class Predictor:
    """A model plus its class names and a score threshold.

    Args:
        model: a BlendMask (or any model with the same eval outputs).
        class_names: name of every contiguous label.
        score_threshold: detections scoring below it are dropped.
        device: where the model runs.
        optimize: run the copy of ``model`` made by :func:`blendmask.models.optimize_for_inference`
            (batch norms folded, channels_last; ``model`` itself is left as it is). ``self.model``
            is what runs.
        compile: also ``torch.compile`` its backbone and head (``blendmask predict --compile``;
            eager with one warning where inductor cannot compile).
        reading: how image files are read (the config's ``input`` rules the model was trained with).
    """

    def __init__(self, *, model: nn.Module, class_names: Sequence[str], score_threshold: float = 0.3,
                 device: Union[str, torch.device] = "cpu", optimize: bool = True, compile: bool = False,
                 reading: ImageReading = ImageReading()):
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if compile and not optimize:
            raise ValueError("compile=True needs optimize=True (the compiled model is the optimised copy)")
        model = model.to(device).eval()
        self.model = inference_model_of(model, compile=compile) if optimize else model
        self.class_names = list(class_names)
        self.score_threshold = score_threshold
        self.device = torch.device(device)
        self.reading = reading

    @classmethod
    def from_weights(cls, path: PathLike, *, score_threshold: float = 0.3,
                     device: Union[str, torch.device] = "cpu", compile: bool = False,
                     max_image_pixels: Optional[int] = None,
                     tta_sizes: Optional[Sequence[int]] = None) -> "Predictor":
        """Build the model from a weights file's embedded config; class names come from the file
        (``class_names``, written by ``blendmask train``) or default to ``class_<label>``; images
        are read by the config's ``input`` rules, with ``max_image_pixels`` replacing its limit.
        With ``tta_sizes`` (not None), the model runs with test-time augmentation
        (:class:`~blendmask.models.tta.TestTimeAugmentation`: flip, and these test sizes; empty: 0.8x,
        1x and 1.2x the configured one)."""
        from blendmask.models import load_model_from_weights
        from blendmask.serialization import load_checkpoint

        model, cfg = load_model_from_weights(path, device=device)
        if tta_sizes is not None:
            from blendmask.models.tta import TestTimeAugmentation, default_test_sizes

            model = TestTimeAugmentation(inference_model_of(model.eval(), compile=compile),
                                         sizes=tta_sizes or default_test_sizes(cfg.input.min_size_test))
        names = (load_checkpoint(path, what="weights file").get("class_names")
                 or [f"class_{i}" for i in range(cfg.model.num_classes)])
        if max_image_pixels is not None:
            cfg.input.max_image_pixels = max_image_pixels
        return cls(model=model, class_names=names, score_threshold=score_threshold, device=device, compile=compile,
                   reading=ImageReading.from_config(cfg.input))

    def __call__(self, image: torch.Tensor, *, internals: bool = False, mask_format: str = "probs") -> Dict[str, Any]:
        """Detections of one ``(3, H, W)`` image above the score threshold, on the CPU:
        ``boxes (n, 4)``, ``labels (n,)``, ``scores (n,)``, ``masks (n, 1, H, W)`` probabilities
        (with ``mask_format="binary"`` bool; with ``"rle"`` instead ``masks_rle``, n COCO RLE
        dicts binarised at 0.5, held without any image-sized mask), and with ``internals`` also
        ``bases (K, Hb, Wb)`` and ``attns (n, K, M, M)``."""
        return self.predict_batch([image], internals=internals, mask_format=mask_format)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[torch.Tensor], *, internals: bool = False,
                      mask_format: str = "probs") -> List[Dict[str, Any]]:
        """What :meth:`__call__` returns, for each of ``images`` (one model call for all)."""
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        previous = getattr(self.model, "return_internals", False), getattr(self.model, "mask_format", None)
        self.model.return_internals = internals
        if previous[1] is not None:
            self.model.mask_format = mask_format
        try:
            results = self.model([image.to(self.device) for image in images])
        finally:
            self.model.return_internals = previous[0]
            if previous[1] is not None:
                self.model.mask_format = previous[1]
        return [self._above_threshold(result, internals=internals, mask_format=mask_format) for result in results]

    def _above_threshold(self, result: Dict[str, Any], *, internals: bool, mask_format: str) -> Dict[str, Any]:
        keep = result["scores"] >= self.score_threshold
        out = {k: v[keep].cpu() for k, v in result.items() if k not in ("bases", "masks_rle")}
        if mask_format == "rle" and "masks_rle" in result:
            out["masks_rle"] = [result["masks_rle"][i] for i in keep.nonzero()[:, 0].tolist()]
        elif mask_format == "rle":  # a model without a mask_format attribute
            out["masks_rle"] = encode_masks_rle(out.pop("masks")[:, 0])
        elif mask_format == "binary" and out["masks"].dtype != torch.bool:  # a model without a mask_format attribute
            out["masks"] = out["masks"] >= MASK_THRESHOLD
        if internals:
            out["bases"] = result["bases"].cpu()
        return out


def _instances_json(result: Dict[str, Any], class_names: Sequence[str]) -> List[Dict[str, Any]]:
    instances = []
    for i, rle in enumerate(result["masks_rle"]):
        label = int(result["labels"][i])
        instances.append({
            "label": label,
            "class_name": class_names[label] if label < len(class_names) else f"class_{label}",
            "score": round(float(result["scores"][i]), 5),
            "box_xyxy": [round(float(v), 2) for v in result["boxes"][i]],
            "segmentation": rle,
            "area": int(mask_utils.area(rle)),
        })
    return instances


@dataclass
class PredictionFiles:
    """Files written by :func:`predict_files`."""

    results_json: Path
    overlays: List[Path] = field(default_factory=list)
    bases_figures: List[Path] = field(default_factory=list)
    #: full-resolution crops drawn beside the downscaled overlay of a large image (tiled prediction)
    crops: List[Path] = field(default_factory=list)


def predict_files(predictor: Predictor, image_paths: Sequence[PathLike], out_dir: PathLike, *,
                  show_bases: bool = False, top_instances: int = 4, tile: Union[int, str, None] = None,
                  tile_overlap: float = DEFAULT_OVERLAP, progress: bool = False) -> PredictionFiles:
    """Predict every image; write ``<stem>_pred.png`` overlays (masks in distinct colours, boxes,
    class names and scores), ``predictions.json``, and with ``show_bases`` a ``<stem>_bases.png``
    showing the K bases and the attentions of the ``top_instances`` best detections.

    Streams: every file's header is checked first (a file that is not an image fails before any
    work), then the images are read, predicted and written one at a time, so that memory does not
    grow with their number; ``progress`` shows a tqdm bar.

    With ``tile`` (pixels or ``"auto"``), each image is predicted tile by tile
    (:func:`blendmask.tiling.sliced_predict`, ``tile_overlap`` shared between neighbours), read
    one at a time in its own dtype; its overlay is drawn on a copy at most
    :data:`~blendmask.tiling.preview.DEFAULT_PREVIEW_SIDE` pixels on a side. An image larger than
    that also gets ``<stem>_crop<k>.png``: up to
    :data:`~blendmask.tiling.preview.DEFAULT_CROP_COUNT` windows of
    :data:`~blendmask.tiling.preview.DEFAULT_CROP_SIDE` pixels at native resolution where the
    detections are densest, outlined and numbered ``k`` on the overlay and listed in the JSON
    record's ``crops`` (file and ``x0, y0, x1, y1`` in image pixels)."""
    from tqdm import tqdm

    from blendmask.visualize import draw_bases_and_attentions, draw_instances

    if not image_paths:
        raise ValueError("no images given")
    for path in image_paths:
        check_image_header(path, reading=predictor.reading)
    if tile is not None:
        if show_bases:
            raise ValueError("show_bases (--show-bases) does not apply to tiled prediction (--tile)")
        resolve_tile(predictor.model, tile, tile_overlap)  # refuse bad options before any work
        return _predict_files_tiled(predictor, image_paths, Path(out_dir), tile=tile, tile_overlap=tile_overlap)
    images = (read_image(p, reading=predictor.reading) for p in image_paths)  # one image in memory at a time
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = PredictionFiles(results_json=out_dir / RESULTS_JSON)
    records = []
    stems: Dict[str, int] = {}
    for path, image in tqdm(zip(image_paths, images), total=len(image_paths), desc="predict", unit="image",
                            disable=not progress):
        result = predictor(image, internals=show_bases, mask_format="rle")
        stem = _unique_stem(path, stems)
        overlay = out_dir / f"{stem}_pred.png"
        # Lowest score first, so that the best detections are drawn on top.
        order = result["scores"].argsort()
        ascending = {k: result[k][order] for k in ("boxes", "labels", "scores")}
        ascending["masks_rle"] = [result["masks_rle"][i] for i in order.tolist()]
        draw_instances(image, ascending, predictor.class_names, score_threshold=predictor.score_threshold).save(overlay)
        files.overlays.append(overlay)
        if show_bases:
            figure = out_dir / f"{stem}_bases.png"
            titles = [f"{predictor.class_names[int(label)]} {float(score):.2f}"
                      for label, score in zip(result["labels"], result["scores"])]
            draw_bases_and_attentions(result["bases"], result["attns"], max_instances=top_instances,
                                      instance_titles=titles).save(figure)
            files.bases_figures.append(figure)
        records.append({"file": str(path), "height": int(image.shape[1]), "width": int(image.shape[2]),
                        "overlay": str(overlay), "instances": _instances_json(result, predictor.class_names)})
    _write_results(predictor, files, records)
    return files


def _write_results(predictor: Predictor, files: PredictionFiles, records: List[Dict[str, Any]], **extra: Any) -> None:
    files.results_json.write_text(json.dumps({"score_threshold": predictor.score_threshold, **extra,
                                              "class_names": predictor.class_names, "images": records}, indent=1))


def _unique_stem(path: PathLike, stems: Dict[str, int]) -> str:
    stem = Path(path).stem
    stems[stem] = stems.get(stem, 0) + 1
    return stem if stems[stem] == 1 else f"{stem}_{stems[stem]}"  # one name from different folders


def _draw_ascending(picture, view: Dict[str, Any], predictor: Predictor):
    """The overlay of ``view`` (``boxes``, ``labels``, ``scores``, ``mask_crops``) on ``picture``
    (a PIL image), the lowest score drawn first so that the best are on top (a PIL image)."""
    from blendmask.visualize import draw_instances

    order = view["scores"].argsort()
    ascending = {k: view[k][order] for k in ("boxes", "labels", "scores")}
    ascending["mask_crops"] = [view["mask_crops"][i] for i in order.tolist()]
    return draw_instances(picture, ascending, predictor.class_names, score_threshold=predictor.score_threshold)


def _predict_files_tiled(predictor: Predictor, image_paths: Sequence[PathLike], out_dir: Path, *,
                         tile: Union[int, str], tile_overlap: float) -> PredictionFiles:
    from blendmask.tiling.preview import crop_view, densest_windows, downscaled_view
    from blendmask.visualize import outline_regions

    for path in image_paths:  # a missing file fails before any work
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {os.fspath(path)!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = PredictionFiles(results_json=out_dir / RESULTS_JSON)
    records: List[Dict[str, Any]] = []
    stems: Dict[str, int] = {}
    for path in image_paths:
        image = decode_image(path, reading=predictor.reading)
        result = sliced_predict(predictor, image, tile=tile, overlap=tile_overlap, progress=True)
        stem = _unique_stem(path, stems)
        overlay = out_dir / f"{stem}_pred.png"
        picture, view, step = downscaled_view(image, result)
        drawn = _draw_ascending(picture, view, predictor)
        crops = []
        if step > 1:
            for k, window in enumerate(densest_windows(result, image.height, image.width), 1):
                crop_file = out_dir / f"{stem}_crop{k}.png"
                _draw_ascending(*crop_view(image, result, window), predictor).save(crop_file)
                files.crops.append(crop_file)
                y0, x0, y1, x1 = window
                crops.append({"file": str(crop_file), "x0": x0, "y0": y0, "x1": x1, "y1": y1})
            outline_regions(drawn, [(c["x0"] / step, c["y0"] / step, c["x1"] / step, c["y1"] / step) for c in crops],
                            [str(k) for k in range(1, len(crops) + 1)])
        drawn.save(overlay)
        files.overlays.append(overlay)
        records.append({"file": str(path), "height": image.height, "width": image.width, "overlay": str(overlay),
                        "crops": crops, "tiles": result["num_tiles"],
                        "instances": _instances_json(result, predictor.class_names)})
    _write_results(predictor, files, records, tile=tile, tile_overlap=tile_overlap)
    return files
