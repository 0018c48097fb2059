"""``blendmask analyze``: an error analysis of a COCO results file, written as JSON, Markdown and PNGs.

:func:`write_analysis` reads the ground truth and the results (:func:`~blendmask.evaluation.results_file.read_results`:
any tool's COCO results), and for ``bbox`` and, when the results carry masks, ``segm`` writes into
``output_dir``:

- ``analysis.json``: COCO's metrics and per-class AP (COCOeval), and TIDE's error breakdown
  (:func:`~blendmask.evaluation.error_analysis.analyze_errors`: count and dAP of each error type);
- ``analysis.md``: the same as Markdown tables, linking the pictures;
- ``pr_<iou type>.png``: precision-recall curves at IoU 0.5 per class and area range (COCOeval's);
- ``gallery/<iou type>_<rank>_image<id>.png``: the images with the most false positives plus
  misses, drawn with their true positives (green), false positives (red, labelled with the error
  type) and missed ground truth (yellow); detections scoring below ``gallery_score`` are not drawn.

An existing ``output_dir`` must be empty or hold an earlier analysis (its ``analysis.json`` written
by this module); nothing else is overwritten.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import load_coco_json
from ..data.coco_checks import segmentation_to_rle
from ..data.images import read_image
from .error_analysis import ERROR_TYPES, ErrorAnalysis, analyze_errors
from .results_file import read_results

__all__ = ["write_analysis", "ANALYSIS_JSON", "ANALYSIS_MARKDOWN"]

ANALYSIS_JSON = "analysis.json"
ANALYSIS_MARKDOWN = "analysis.md"
_TOOL = "blendmask analyze"
_AREAS = ("all", "small", "medium", "large")
_COLOURS = {"tp": (40, 200, 40), "fp": (230, 30, 30), "missed": (250, 210, 0)}


def _check_output_dir(output_dir: Path) -> None:
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} exists and is not a directory")
    marker = output_dir / ANALYSIS_JSON
    if any(output_dir.iterdir()):
        try:
            made_here = json.loads(marker.read_text()).get("tool") == _TOOL
        except (OSError, ValueError, AttributeError):
            made_here = False
        if not made_here:
            raise FileExistsError(f"--output {output_dir} exists and does not hold an earlier analysis; "
                                  "choose an empty or new directory")


def _coco_metrics(coco_gt: COCO, results: List[Dict[str, Any]], iou_type: str) -> Dict[str, Any]:
    """COCO AP, AP50, AP75, APs/m/l, per-class AP and the IoU-0.5 precision-recall curves."""
    key = "bbox" if iou_type == "bbox" else "segmentation"
    dets = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], key: r[key]}
            for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets) if dets else COCO()
        if not dets:
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                               "annotations": []}
            coco_dt.createIndex()
        evaluation = COCOeval(coco_gt, coco_dt, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    undefined = lambda v: None if v < 0 else float(v)  # noqa: E731 - COCOeval's -1: not defined
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    metrics = {name: undefined(evaluation.stats[i]) for i, name in enumerate(names)}
    precision = evaluation.eval["precision"]  # (T, R, K, A, M)
    per_class, curves = {}, {}
    for k, cat_id in enumerate(evaluation.params.catIds):
        name = coco_gt.cats[cat_id]["name"]
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
        curves[name] = {area: [None if v < 0 else float(v) for v in precision[0, :, k, a, -1]]
                        for a, area in enumerate(_AREAS)}
    return {"metrics": metrics, "per_class_ap": per_class, "pr_curves_iou50": curves,
            "recall_points": [float(v) for v in evaluation.params.recThrs]}


def _plot_curves(curves: Dict[str, Dict[str, List[Optional[float]]]], recall: List[float], path: Path,
                 title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    cols = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for area in _AREAS:
            values = curves[name][area]
            if all(v is None for v in values):
                continue
            ax.plot(recall, [np.nan if v is None else v for v in values], label=area)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _outline(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _draw_image(coco_gt: COCO, image_dir: str, image_id: int, results: List[Dict[str, Any]],
                analysis: ErrorAnalysis, path: Path, min_score: float) -> None:
    """One gallery picture: the detections scoring ``>= min_score`` (true positives green, false
    positives red with their error type) and the missed ground truth (yellow), as mask outlines
    (``segm``) or boxes (``bbox``), on the image enlarged to about 512 pixels when smaller."""
    from PIL import Image, ImageDraw

    info = coco_gt.imgs[image_id]
    height, width = info["height"], info["width"]
    image = read_image(os.path.join(image_dir, info["file_name"]), expected_size=(width, height),
                       context=f"image id {image_id}: ")
    zoom = max(1, 512 // max(height, width))
    canvas = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).repeat(zoom, 0).repeat(zoom, 1)
    missed = set(analysis.missed_gt.get(image_id, []))
    shapes = [(results[index], "tp" if status == "tp" else "fp", status)
              for index, status in analysis.detections.get(image_id, [])
              if status != "ignored" and results[index]["score"] >= min_score]
    shapes += [(a, "missed", "missed") for a in coco_gt.imgToAnns.get(image_id, []) if a["id"] in missed]
    several_classes = len(coco_gt.cats) > 1
    boxes, labels = [], []  # ((x0, y0, x1, y1), colour), ((x, y), text, colour)
    for record, colour_key, status in shapes:
        colour = _COLOURS[colour_key]
        x, y, w, h = (v * zoom for v in record["bbox"])
        if analysis.iou_type == "segm":
            rle = segmentation_to_rle(record["segmentation"], height, width)
            with warnings.catch_warnings():  # pycocotools' decoder trips a NumPy 2 DeprecationWarning; harmless
                warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
                mask = mask_utils.decode(rle).astype(bool)
            canvas[_outline(mask.repeat(zoom, 0).repeat(zoom, 1))] = colour
        else:
            boxes.append(((x, y, x + w, y + h), colour))
        text = (coco_gt.cats[record["category_id"]]["name"] + " " if several_classes else "") + status
        if "score" in record:
            text += f" {record['score']:.2f}"
        labels.append(((x + 1, max(y - 11, 0)), text, colour))
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for box, colour in boxes:
        draw.rectangle(box, outline=colour, width=2)
    for xy, text, colour in labels:
        draw.text(xy, text, fill=colour)
    picture.save(path)


def _markdown(report: Dict[str, Any]) -> str:
    lines = [f"# Error analysis of `{report['results']}`", "",
             f"Ground truth: `{report['ground_truth']}`; {report['num_detections']} detections on "
             f"{report['num_images']} images.", ""]
    for iou_type, part in report["iou_types"].items():
        m = part["coco"]["metrics"]
        cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines += [f"## {iou_type}", "", "| AP | AP50 | AP75 | APs | APm | APl | TIDE AP50 |", "|---" * 7 + "|",
                  "| " + " | ".join(cell(m[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
                  + f" | {part['tide']['ap50']:.3f} |", "",
                  "AP50 gained by fixing each error type (TIDE; IoU 0.5, background IoU 0.1):", "",
                  "| error | count | dAP50 |", "|---|---:|---:|"]
        for kind in ERROR_TYPES:
            lines.append(f"| {kind} | {part['tide']['counts'][kind]} | {part['tide']['delta_ap'][kind]:.3f} |")
        lines += ["", "| class | AP |", "|---|---:|"]
        lines += [f"| {name} | {cell(ap)} |" for name, ap in part["coco"]["per_class_ap"].items()]
        lines += ["", f"![precision-recall curves]({part['pr_curves_png']})", ""]
        if part["gallery"]:
            lines += [f"Images with the most false positives and misses (green: true positive, red: false "
                      f"positive and its error type, yellow: missed; detections scoring >= {report['gallery_score']}):", ""]
            lines += [f"![image {g['image_id']}]({g['png']})" for g in part["gallery"]]
            lines.append("")
    return "\n".join(lines)


def write_analysis(results_path: str | os.PathLike, ann_file: str | os.PathLike, image_dir: Optional[str],
                   output_dir: str | os.PathLike, *, gallery_size: int = 6, gallery_score: float = 0.3,
                   iou_types: Sequence[str] = ("bbox", "segm")) -> Dict[str, Any]:
    """Analyse ``results_path`` against ``ann_file`` and write the module doc's files into
    ``output_dir``; returns the report written as ``analysis.json``. ``image_dir`` (the images of
    ``ann_file``) is needed for the gallery only (``gallery_size`` images per IoU type; 0: none;
    detections scoring below ``gallery_score`` are counted but not drawn).
    ``segm`` is skipped, with a note in the report, when the results carry no masks."""
    if gallery_size < 0:
        raise ValueError(f"gallery_size (--gallery) must be >= 0, got {gallery_size}")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    coco_gt = load_coco_json(ann_file)
    results = read_results(results_path, coco_gt)
    report: Dict[str, Any] = {"tool": _TOOL, "results": os.fspath(results_path), "ground_truth": os.fspath(ann_file),
                              "num_detections": len(results), "num_images": len(coco_gt.imgs), "iou_types": {},
                              "gallery_score": gallery_score,
                              "skipped": {}}
    output_dir.mkdir(parents=True, exist_ok=True)
    for iou_type in iou_types:
        if iou_type == "segm" and not all("segmentation" in r for r in results):
            report["skipped"]["segm"] = "the results carry no segmentation for every detection"
            continue
        analysis = analyze_errors(coco_gt, results, iou_type)
        coco = _coco_metrics(coco_gt, results, iou_type)
        pr_png = f"pr_{iou_type}.png"
        _plot_curves(coco["pr_curves_iou50"], coco["recall_points"], output_dir / pr_png,
                     f"{iou_type}: precision-recall at IoU 0.5")
        worst = sorted(analysis.per_image, key=lambda i: (-(analysis.per_image[i]["false_positives"]
                                                            + analysis.per_image[i]["missed"]), i))
        worst = [i for i in worst if analysis.per_image[i]["false_positives"] + analysis.per_image[i]["missed"] > 0]
        gallery = []
        if image_dir is not None and gallery_size:
            (output_dir / "gallery").mkdir(exist_ok=True)
            for rank, image_id in enumerate(worst[:gallery_size]):
                png = f"gallery/{iou_type}_{rank}_image{image_id}.png"
                _draw_image(coco_gt, image_dir, image_id, results, analysis, output_dir / png, gallery_score)
                gallery.append({"image_id": image_id, "png": png, **analysis.per_image[image_id]})
        report["iou_types"][iou_type] = {
            "coco": {k: v for k, v in coco.items() if k != "recall_points"},
            "tide": {"ap50": analysis.ap50, "counts": analysis.counts, "delta_ap": analysis.delta_ap},
            "pr_curves_png": pr_png, "gallery": gallery}
    (output_dir / ANALYSIS_JSON).write_text(json.dumps(report, indent=1))
    (output_dir / ANALYSIS_MARKDOWN).write_text(_markdown(report))
    return report
