"""Panoptic quality (PQ, SQ, RQ) as the COCO panoptic API (panopticapi ``pq_compute``) defines it.

Per image, with segment-id maps ``gt`` and ``pred`` (0 = void) and their ``segments_info``:

- a predicted and a ground-truth segment of the same category **match** when their IoU > 0.5, where the
  union leaves out the predicted pixels that fall on void: ``union = |p| + |g| - |p & g| - |p & void|``;
  crowd ground-truth segments (``iscrowd`` 1) never match;
- every match is a TP adding its IoU; an unmatched non-crowd ground-truth segment is a FN; an unmatched
  prediction is a FP unless more than half of it lies on void plus the crowd region of its category
  (then it is ignored).

Over the data set, per category ``c`` with ``TP + FP + FN > 0``: ``PQ = sum IoU / (TP + FP/2 + FN/2)``,
``SQ = sum IoU / TP`` (0 without TP), ``RQ = TP / (TP + FP/2 + FN/2)``, so ``PQ = SQ * RQ``. "All",
"Things" and "Stuff" average the categories (of that kind) that have ``TP + FP + FN > 0``; ``N`` is
their number. Values are fractions in ``[0, 1]`` (panopticapi prints percentages).

:func:`evaluate_panoptic` runs a :class:`~blendmask.models.PanopticBlendMask` over a
:class:`~blendmask.data.panoptic.CocoPanopticDataset` and scores it; :func:`format_pq_table` prints it.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

__all__ = ["PQStats", "match_panoptic_image", "pq_summary", "evaluate_panoptic", "format_pq_table",
           "to_dataset_segments", "PANOPTIC_RESULTS"]

VOID = 0
_OFFSET = 1 << 32  # larger than any segment id (ids are 24-bit RGB)
PANOPTIC_RESULTS = "panoptic_results.json"


class PQStats:
    """Per-category accumulators ``tp, fp, fn, iou`` (sum of the matched IoUs); ``+=`` merges."""

    def __init__(self) -> None:
        self.per_category: Dict[int, Dict[str, float]] = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})

    def __iadd__(self, other: "PQStats") -> "PQStats":
        for cat, values in other.per_category.items():
            for key, value in values.items():
                self.per_category[cat][key] += value
        return self


def _segment_areas(ids: np.ndarray, segments: Sequence[Mapping[str, Any]], what: str) -> Dict[int, int]:
    labels, counts = np.unique(ids, return_counts=True)
    present = dict(zip(labels.tolist(), counts.tolist()))
    listed = {int(s["id"]) for s in segments}
    extra = sorted(set(present) - listed - {VOID})
    if extra:
        raise ValueError(f"{what}: segment id {extra[0]} is in the map but not in segments_info")
    return {int(s["id"]): int(present.get(int(s["id"]), 0)) for s in segments}


def match_panoptic_image(gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]], pred_ids: np.ndarray,
                         pred_segments: Sequence[Mapping[str, Any]], categories: Mapping[int, Any], *,
                         where: str = "image") -> PQStats:
    """TP/FP/FN and IoU sums of one image (rules in the module docstring).

    Args:
        gt_ids, pred_ids: ``(H, W)`` integer segment-id maps (0 = void / unassigned).
        gt_segments: ``[{"id", "category_id", "iscrowd"?}, ...]``; pred_segments: ``[{"id", "category_id"}, ...]``.
        categories: the known category ids (a mapping keyed by id).
        where: names the image in errors.
    """
    gt_ids, pred_ids = np.asarray(gt_ids, dtype=np.int64), np.asarray(pred_ids, dtype=np.int64)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"{where}: prediction map {pred_ids.shape} and ground truth {gt_ids.shape} differ in size")
    for seg in list(gt_segments) + list(pred_segments):
        if seg["category_id"] not in categories:
            raise ValueError(f"{where}: segment id {seg['id']} has unknown category_id {seg['category_id']!r}")
    gt = {int(s["id"]): s for s in gt_segments}
    pred = {int(s["id"]): s for s in pred_segments}
    gt_area = _segment_areas(gt_ids, gt_segments, f"{where} (ground truth)")
    pred_area = _segment_areas(pred_ids, pred_segments, f"{where} (prediction)")
    pairs, counts = np.unique(gt_ids * _OFFSET + pred_ids, return_counts=True)
    intersection = {(int(p // _OFFSET), int(p % _OFFSET)): int(c) for p, c in zip(pairs, counts)}
    stats = PQStats()
    matched_gt, matched_pred = set(), set()
    for (g, p), inter in intersection.items():
        if g not in gt or p not in pred:
            continue
        if gt[g].get("iscrowd", 0) or gt[g]["category_id"] != pred[p]["category_id"]:
            continue
        union = pred_area[p] + gt_area[g] - inter - intersection.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            entry = stats.per_category[gt[g]["category_id"]]
            entry["tp"] += 1
            entry["iou"] += iou
            matched_gt.add(g)
            matched_pred.add(p)
    crowd_of: Dict[int, int] = {}
    for g, seg in gt.items():
        if g in matched_gt:
            continue
        if seg.get("iscrowd", 0):
            crowd_of[seg["category_id"]] = g
            continue
        stats.per_category[seg["category_id"]]["fn"] += 1
    for p, seg in pred.items():
        if p in matched_pred or pred_area[p] == 0:
            continue
        ignored = intersection.get((VOID, p), 0)
        if seg["category_id"] in crowd_of:
            ignored += intersection.get((crowd_of[seg["category_id"]], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stats.per_category[seg["category_id"]]["fp"] += 1
    return stats


def _average(stats: PQStats, cats: Sequence[int]) -> Dict[str, float]:
    pq = sq = rq = 0.0
    n = 0
    for cat in cats:
        s = stats.per_category.get(cat)
        if s is None or s["tp"] + s["fp"] + s["fn"] == 0:
            continue
        n += 1
        denominator = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
        pq += s["iou"] / denominator
        sq += s["iou"] / s["tp"] if s["tp"] else 0.0
        rq += s["tp"] / denominator
    if n == 0:
        return {"PQ": math.nan, "SQ": math.nan, "RQ": math.nan, "N": 0}
    return {"PQ": pq / n, "SQ": sq / n, "RQ": rq / n, "N": n}


def pq_summary(stats: PQStats, categories: Mapping[int, Mapping[str, Any]]) -> Dict[str, Any]:
    """``{"All"|"Things"|"Stuff": {"PQ", "SQ", "RQ", "N"}, "per_category": {name: {"PQ", "SQ", "RQ", "TP",
    "FP", "FN"}}}`` from accumulated ``stats``; ``categories`` maps id -> ``{"name", "isthing"}``.
    A category without TP, FP and FN is left out of the averages (and has nan values)."""
    ids = sorted(categories)
    out: Dict[str, Any] = {
        "All": _average(stats, ids),
        "Things": _average(stats, [c for c in ids if categories[c]["isthing"]]),
        "Stuff": _average(stats, [c for c in ids if not categories[c]["isthing"]]),
        "per_category": {},
    }
    for cat in ids:
        s = stats.per_category.get(cat, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        values = _average(stats, [cat])
        out["per_category"][categories[cat]["name"]] = {
            "PQ": values["PQ"], "SQ": values["SQ"], "RQ": values["RQ"],
            "TP": int(s["tp"]), "FP": int(s["fp"]), "FN": int(s["fn"]), "isthing": bool(categories[cat]["isthing"])}
    return out


def format_pq_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text PQ table: All / Things / Stuff rows, then one row per category."""
    def cell(value: float) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    lines = [f"{'':<10}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'N':>5}"]
    for row in ("All", "Things", "Stuff"):
        v = metrics[row]
        lines.append(f"{row:<10}{cell(v['PQ']):>8}{cell(v['SQ']):>8}{cell(v['RQ']):>8}{v['N']:>5}")
    per = metrics.get("per_category", {})
    if per:
        width = max(10, max(len(n) for n in per) + 2)
        lines += ["", f"{'category':<{width}}{'kind':>6}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'TP':>6}{'FP':>6}{'FN':>6}"]
        for name, v in per.items():
            lines.append(f"{name:<{width}}{'thing' if v['isthing'] else 'stuff':>6}{cell(v['PQ']):>8}"
                         f"{cell(v['SQ']):>8}{cell(v['RQ']):>8}{v['TP']:>6}{v['FP']:>6}{v['FN']:>6}")
    return "\n".join(lines)


def to_dataset_segments(segments_info: Sequence[Mapping[str, Any]], thing_ids: Sequence[int],
                        stuff_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """The model's ``segments_info`` (contiguous thing labels / stuff indices) with the data set's
    category ids: ``thing_ids[label]`` for things, ``stuff_ids[index]`` for stuff."""
    out = []
    for seg in segments_info:
        ids = thing_ids if seg["isthing"] else stuff_ids
        entry = {"id": int(seg["id"]), "category_id": int(ids[seg["category_id"]]), "isthing": bool(seg["isthing"]),
                 "area": int(seg["area"])}
        if "score" in seg:
            entry["score"] = round(float(seg["score"]), 5)
        out.append(entry)
    return out


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def evaluate_panoptic(model: torch.nn.Module, dataset: Any, *, output_dir: Optional[Union[str, os.PathLike]] = None,
                      progress: bool = True, category_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Run a panoptic model over ``dataset`` (a :class:`~blendmask.data.panoptic.CocoPanopticDataset`
    without transforms) and return :func:`pq_summary`'s metrics.

    ``category_ids``: the data set category each model class is scored as, its things (labels
    ``0..T-1``) then its stuff (``T..T+S-1``); default: the data set's things, then its stuff, in
    order (``dataset.category_ids + dataset.stuff_category_ids``).

    With ``output_dir``, also writes the predictions in the COCO panoptic format:
    ``panoptic_results.json`` and the PNGs in ``panoptic_results/``. The model's mode is restored.
    """
    from blendmask.data.panoptic import id_to_rgb
    from blendmask.models.inference_path import inference_model_of

    if getattr(dataset, "transforms", None) is not None:
        raise ValueError("evaluate_panoptic: the dataset has transforms; build the evaluation dataset with "
                         "transforms=None")
    categories = dataset.categories
    if category_ids is None:
        category_ids = [*dataset.category_ids, *dataset.stuff_category_ids]
    if len(category_ids) != dataset.num_classes + dataset.num_stuff_classes:
        raise ValueError(f"evaluate_panoptic: category_ids has {len(category_ids)} entries for {dataset.num_classes} "
                         f"thing and {dataset.num_stuff_classes} stuff categories")
    thing_ids, stuff_ids = category_ids[:dataset.num_classes], category_ids[dataset.num_classes:]
    png_dir = None
    if output_dir is not None:
        png_dir = Path(output_dir) / Path(PANOPTIC_RESULTS).stem
        png_dir.mkdir(parents=True, exist_ok=True)
    model = inference_model_of(model)  # a BlendMask runs as its folded copy; the caller's model is untouched
    device = _model_device(model)
    was_training = model.training
    model.eval()
    stats = PQStats()
    records = []
    try:
        with torch.no_grad():
            for index in tqdm(range(len(dataset)), desc="eval (PQ)", unit="img", disable=not progress):
                image = dataset.load_image(index)
                result = model([image.to(device)])[0]
                if "panoptic_seg" not in result:
                    raise ValueError("evaluate_panoptic: the model gives no 'panoptic_seg': it is not a panoptic "
                                     "model (config with model.panoptic.enabled)")
                pred_ids = result["panoptic_seg"].cpu().numpy().astype(np.int64)
                pred_segments = to_dataset_segments(result["segments_info"], thing_ids, stuff_ids)
                image_id = dataset.image_ids[index]
                stats += match_panoptic_image(dataset.load_id_map(index), dataset.segments(index), pred_ids,
                                              pred_segments, categories, where=f"image id {image_id}")
                if png_dir is not None:
                    name = f"{image_id:012d}.png"
                    Image.fromarray(id_to_rgb(pred_ids)).save(png_dir / name, compress_level=1)
                    records.append({"image_id": image_id, "file_name": name, "segments_info": pred_segments})
    finally:
        model.train(was_training)
    metrics = pq_summary(stats, categories)
    if output_dir is not None:
        cats = [{"id": c, "name": v["name"], "isthing": int(v["isthing"])} for c, v in sorted(categories.items())]
        (Path(output_dir) / PANOPTIC_RESULTS).write_text(json.dumps({"annotations": records, "categories": cats}))
    return metrics
