"""The AP each kind of error costs, as TIDE defines them (Bolya et al., ECCV 2020).

``tidecv`` (the authors' package) is not used: it needs OpenCV, pandas and seaborn at import time
and is unmaintained; this module follows its definitions (read from ``tidecv`` 1.0.1):

**Matching** (per image, per ``iou_type``, at the foreground threshold ``t_f`` = 0.5): detections
sorted by score (at most ``max_dets`` per image) take, in turn, the unmatched ground truth of their
class with the highest IoU, if it is ``>= t_f``. Crowd ground truth is not matched; an unmatched
detection covering a crowd region of its class (crowd IoU ``> t_f``) is ignored, as COCOeval does.

**Errors** of each unmatched detection, tested in this order (``t_b`` = 0.1):

- ``background`` when the image has no ground truth;
- ``localisation``: its best IoU with a ground truth *of its class* is in ``[t_b, t_f)``;
- ``classification``: its best IoU with a ground truth *of another class* is ``>= t_f``;
- ``duplicate``: its best IoU with an already matched ground truth of its class is ``>= t_f``;
- ``background``: its best IoU with any ground truth is ``<= t_b``;
- ``both`` (wrong class and badly localised) otherwise.

A ground truth left unmatched is ``missed`` unless a localisation or classification error points
at it (fixing that error recovers it).

**Cost** (``dAP``) of an error type: the AP50 (COCO's 101-point interpolation, averaged over the
classes with ground truth or detections) after fixing every error of that type, minus the AP50
before: a localisation or classification error pointing at an unmatched ground truth becomes a
true positive (in that ground truth's class; the highest-scoring one when several point at the same
ground truth, the others are removed); the other false positives are removed; a missed ground
truth is removed from the ground truth. Fixing never lowers the AP, so every ``dAP`` is ``>= 0``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..data.coco_checks import segmentation_to_rle

__all__ = ["ERROR_TYPES", "ErrorAnalysis", "analyze_errors", "average_precision"]

#: The error types, in TIDE's order.
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
IOU_TYPES = ("bbox", "segm")


@dataclass
class ErrorAnalysis:
    """What :func:`analyze_errors` found for one ``iou_type``.

    Attributes:
        ap50: the AP50 (in ``[0, 1]``) of the detections as they are.
        delta_ap: per error type, the AP50 gained by fixing all errors of that type.
        counts: per error type, how many errors.
        per_image: per image id, ``{"false_positives": int, "missed": int}``.
        detections: per image id, ``[(detection index, status)]``: status is ``"tp"``, ``"ignored"``
            or an error type; the index is into the results list given.
        missed_gt: per image id, the ids of the missed ground-truth annotations.
    """

    iou_type: str
    ap50: float
    delta_ap: Dict[str, float]
    counts: Dict[str, int]
    per_image: Dict[int, Dict[str, int]] = field(default_factory=dict)
    detections: Dict[int, List[Tuple[int, str]]] = field(default_factory=dict)
    missed_gt: Dict[int, List[int]] = field(default_factory=dict)


def average_precision(scores: Sequence[float], correct: Sequence[bool], num_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class: detections ``scores`` (any order), whether each
    is a true positive, and the number of ground truths. 0 when ``num_gt`` is 0."""
    if num_gt <= 0:
        return 0.0
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = np.asarray(correct, dtype=bool)[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall = tp / num_gt
    precision = np.maximum.accumulate((tp / (tp + fp))[::-1])[::-1]  # the envelope, as COCOeval
    at = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    sampled = np.zeros(101)
    reached = at < len(precision)
    sampled[reached] = precision[at[reached]]
    return float(np.mean(sampled))


def _mean_ap(points: Dict[int, List[Tuple[float, bool]]], num_gt: Dict[int, int]) -> float:
    classes = [c for c in set(points) | set(num_gt) if points.get(c) or num_gt.get(c, 0) > 0]
    if not classes:
        return 0.0
    aps = [average_precision([s for s, _ in points.get(c, [])], [t for _, t in points.get(c, [])], num_gt.get(c, 0))
           for c in classes]
    return float(np.mean(aps))


def _geometry(coco_gt: COCO, ann: Dict[str, Any], iou_type: str) -> Any:
    if iou_type == "bbox":
        return ann["bbox"]
    image = coco_gt.imgs[ann["image_id"]]
    return segmentation_to_rle(ann["segmentation"], image["height"], image["width"])


def _iou(dets: List[Any], gts: List[Any], crowd: bool) -> np.ndarray:
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_utils.iou(dets, gts, [int(crowd)] * len(gts)), dtype=np.float64).reshape(len(dets), len(gts))


@dataclass
class _Fixable:
    """A localisation or classification error pointing at an unmatched ground truth."""

    det: int
    score: float
    gt_key: Tuple[int, int]  # (image id, ground-truth annotation id)
    gt_class: int


def analyze_errors(coco_gt: COCO, results: Sequence[Dict[str, Any]], iou_type: str, *,
                   foreground_iou: float = 0.5, background_iou: float = 0.1, max_dets: int = 100,
                   image_ids: Optional[Sequence[int]] = None) -> ErrorAnalysis:
    """TIDE's error breakdown (module doc) of ``results`` (records of
    :func:`blendmask.evaluation.results_file.read_results`) against ``coco_gt`` for ``iou_type``
    ``"bbox"`` or ``"segm"``, over ``image_ids`` (default: every ground-truth image)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"analyze_errors: iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not 0.0 <= background_iou < foreground_iou <= 1.0:
        raise ValueError(f"analyze_errors: need 0 <= background_iou < foreground_iou <= 1, "
                         f"got {background_iou}, {foreground_iou}")
    key = "bbox" if iou_type == "bbox" else "segmentation"
    per_image_dets: Dict[int, List[int]] = defaultdict(list)
    for index, record in enumerate(results):
        if key not in record:
            raise ValueError(f"analyze_errors: detection {index} has no {key} ({iou_type} analysis)")
        per_image_dets[record["image_id"]].append(index)
    image_ids = sorted(coco_gt.imgs) if image_ids is None else list(image_ids)

    points: Dict[int, List[Tuple[float, bool]]] = defaultdict(list)  # class -> (score, tp)
    num_gt: Dict[int, int] = defaultdict(int)
    errors: Dict[int, Tuple[str, int]] = {}  # det index -> (type, class)
    fixable: Dict[int, _Fixable] = {}
    missed: List[Tuple[int, int, int]] = []  # (image id, ann id, class)
    analysis = ErrorAnalysis(iou_type, 0.0, {}, {})
    for image_id in image_ids:
        anns = coco_gt.imgToAnns.get(image_id, [])
        gts = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        dets = sorted(per_image_dets.get(image_id, []), key=lambda i: -results[i]["score"])[:max_dets]
        for a in gts:
            num_gt[a["category_id"]] += 1
        det_cls = np.array([results[i]["category_id"] for i in dets])
        gt_cls = np.array([a["category_id"] for a in gts])
        det_geo = [results[i][key] for i in dets]
        iou = _iou(det_geo, [_geometry(coco_gt, a, iou_type) for a in gts], crowd=False)  # (D, G)
        same = det_cls[:, None] == gt_cls[None, :] if len(dets) and len(gts) else np.zeros(iou.shape, bool)
        same_iou = np.where(same, iou, 0.0)
        gt_used = np.zeros(len(gts), dtype=bool)
        det_used = np.zeros(len(dets), dtype=bool)
        for d in range(len(dets)):
            candidates = np.where(gt_used, 0.0, same_iou[d])
            if len(gts) and candidates.max() >= foreground_iou:
                gt_used[int(candidates.argmax())] = det_used[d] = True
        crowd_iou = _iou(det_geo, [_geometry(coco_gt, a, iou_type) for a in crowds], crowd=True)
        crowd_cls = np.array([a["category_id"] for a in crowds])
        statuses: List[Tuple[int, str]] = []
        targeted = set()
        for d, index in enumerate(dets):
            score, cls = results[index]["score"], results[index]["category_id"]
            if det_used[d]:
                points[cls].append((score, True))
                statuses.append((index, "tp"))
                continue
            if len(crowds) and ((crowd_iou[d] > foreground_iou) & (crowd_cls == cls)).any():
                statuses.append((index, "ignored"))
                continue
            points[cls].append((score, False))
            kind, target = _error_of(d, iou, same, same_iou, gt_used, foreground_iou, background_iou)
            errors[index] = (kind, cls)
            statuses.append((index, kind))
            if target is not None and not gt_used[target]:
                fixable[index] = _Fixable(index, score, (image_id, gts[target]["id"]), int(gt_cls[target]))
                targeted.add(target)
        image_missed = [g for g in range(len(gts)) if not gt_used[g] and g not in targeted]
        missed.extend((image_id, gts[g]["id"], int(gt_cls[g])) for g in image_missed)
        analysis.detections[image_id] = statuses
        analysis.missed_gt[image_id] = [gts[g]["id"] for g in image_missed]
        analysis.per_image[image_id] = {
            "false_positives": sum(1 for _, s in statuses if s not in ("tp", "ignored")),
            "missed": len(image_missed)}

    analysis.ap50 = _mean_ap(points, num_gt)
    analysis.counts = {kind: sum(1 for k, _ in errors.values() if k == kind) for kind in ERROR_TYPES}
    analysis.counts["missed"] = len(missed)
    for kind in ERROR_TYPES:
        analysis.delta_ap[kind] = _mean_ap(*_fixed(kind, results, points, num_gt, errors, fixable, missed)) - analysis.ap50
    return analysis


def _error_of(d: int, iou: np.ndarray, same: np.ndarray, same_iou: np.ndarray, gt_used: np.ndarray,
              foreground_iou: float, background_iou: float) -> Tuple[str, Optional[int]]:
    """The error type of unmatched detection ``d`` and the ground truth it points at (module doc)."""
    if iou.shape[1] == 0:
        return "background", None
    best_same = int(same_iou[d].argmax())
    if background_iou <= same_iou[d, best_same] < foreground_iou:
        return "localisation", best_same
    other_iou = np.where(same[d], 0.0, iou[d])
    best_other = int(other_iou.argmax())
    if other_iou[best_other] >= foreground_iou:
        return "classification", best_other
    if np.where(gt_used, same_iou[d], 0.0).max() >= foreground_iou:
        return "duplicate", None
    if iou[d].max() <= background_iou:
        return "background", None
    return "both", None


def _fixed(kind: str, results: Sequence[Dict[str, Any]], points: Dict[int, List[Tuple[float, bool]]],
           num_gt: Dict[int, int], errors: Dict[int, Tuple[str, int]], fixable: Dict[int, _Fixable],
           missed: List[Tuple[int, int, int]]) -> Tuple[Dict[int, List[Tuple[float, bool]]], Dict[int, int]]:
    """The AP data points and ground-truth counts with every error of ``kind`` fixed (module doc)."""
    new_gt = dict(num_gt)
    if kind == "missed":
        for _, _, cls in missed:
            new_gt[cls] -= 1
        return points, new_gt
    winners: Dict[Tuple[int, int], _Fixable] = {}
    for index, (k, _) in errors.items():
        if k == kind and index in fixable:
            f = fixable[index]
            if f.gt_key not in winners or f.score > winners[f.gt_key].score:
                winners[f.gt_key] = f
    fixed_dets = {f.det for f in winners.values()}
    new_points: Dict[int, List[Tuple[float, bool]]] = defaultdict(list)
    for cls, pts in points.items():
        new_points[cls].extend(p for p in pts if p[1])
    for index, (k, cls) in errors.items():
        score = results[index]["score"]
        if k != kind:
            new_points[cls].append((score, False))
        elif index in fixed_dets:
            new_points[fixable[index].gt_class].append((score, True))
    return new_points, new_gt
