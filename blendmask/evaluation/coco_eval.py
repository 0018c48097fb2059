"""COCO evaluation (bbox and segm) with pycocotools' COCOeval.

Metrics are **fractions in [0, 1]** (not percentages): ``metrics["segm"]["AP"] >= 0.5`` is the
demo goal. ``evaluate()`` returns::

    {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class name>", ...},
     "segm": {...same keys...}}

A value is ``nan`` when COCO cannot define it (e.g. ``APs`` when the ground truth has no small
objects, or the AP of a category without ground-truth instances in the evaluated images).
Images evaluated are exactly the images passed to ``process``; an image with no predictions
counts as all-missed, so zero predictions give AP 0 rather than an error.

Backends (``backend=``): ``"pycocotools"`` (the default and the reference) or
``"faster-coco-eval"`` (the ``faster-coco-eval`` package, a C++ COCOeval giving the same metrics
faster on large sets; ``pip install faster-coco-eval``).

Bounded work: COCOeval compares, in every image and category, each of the first ``max_dets``
detections with each ground-truth instance (:func:`matching_pairs`), ten IoU thresholds times four
area ranges over, for bbox and for segm; pycocotools does it in a Python loop. Images with
thousands of instances make that hours of work, so more pairs than ``max_pairs`` (default
:data:`DEFAULT_MAX_PAIRS` of the backend, minutes of COCOeval on one CPU core:
``docs/notes/benchmarks.md``, "Crowded images") are refused in one line naming the count, the
largest image and the limit: by ``process`` at the image that crosses the limit (the pairs add up
image by image, so no more of the model's work is wasted), and by ``evaluate()`` for the total
of all ranks, after writing the results file and before COCOeval starts.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from ..data.loader import build_test_loader
from ..distributed import dist_rank_and_world_size
from ..models.inference_path import inference_model_of
from ..models.mask_ops import encode_masks_rle

__all__ = ["COCOEvaluator", "format_results_table", "evaluate_model", "MAIN_METRICS", "RESULTS_FILE", "BACKENDS",
           "DEFAULT_MAX_DETS", "DEFAULT_BACKEND", "DEFAULT_MAX_PAIRS", "EvaluationTooLargeError", "matching_pairs"]

logger = logging.getLogger(__name__)

MAIN_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"
#: COCOeval's detections per image (its ``maxDets[-1]``).
DEFAULT_MAX_DETS = 100
_IOU_TYPES = ("bbox", "segm")
#: COCOeval implementations ``COCOEvaluator`` can use (module doc).
BACKENDS = ("pycocotools", "faster-coco-eval")
DEFAULT_BACKEND = "pycocotools"
#: The detection/ground-truth pairs each backend may match (module doc): minutes of COCOeval
#: on one CPU core for bbox and segm together (docs/notes/benchmarks.md, "Crowded images").
DEFAULT_MAX_PAIRS = {"pycocotools": 5_000_000, "faster-coco-eval": 300_000_000}


class EvaluationTooLargeError(ValueError):
    """COCOeval would match more detection/ground-truth pairs than the evaluator's ``max_pairs``."""


def matching_pairs(coco_gt: COCO, results: Sequence[Dict[str, Any]], image_ids: Sequence[int],
                   max_dets: int) -> Tuple[int, Optional[Tuple[int, int, int, int]]]:
    """The detection/ground-truth pairs COCOeval matches for ``results`` on ``image_ids``: per
    image and category, ``min(detections, max_dets) x ground-truth instances`` (crowd ones
    included), summed. Also the largest term as ``(image_id, category_id, detections, instances)``
    (None without pairs)."""
    detections = Counter((r["image_id"], r["category_id"]) for r in results)
    instances = Counter((a["image_id"], a["category_id"]) for i in set(image_ids) for a in coco_gt.imgToAnns.get(i, ()))
    total, largest, largest_pairs = 0, None, 0
    for key, count in detections.items():
        pairs = min(count, max_dets) * instances.get(key, 0)
        total += pairs
        if pairs > largest_pairs:
            largest, largest_pairs = (*key, min(count, max_dets), instances[key]), pairs
    return total, largest


class COCOEvaluator:
    """Accumulates model outputs over a data set and scores them with COCOeval.

    Args:
        dataset_or_coco_gt: a :class:`blendmask.data.CocoInstanceDataset` (anything with ``coco``
            and ``category_ids`` attributes) or a pycocotools ``COCO`` ground truth.
        category_ids: ``category_ids[label]`` is the COCO category id of the model's contiguous
            label. Defaults to the dataset's; required with a bare ``COCO``.
        output_dir: if given, ``evaluate()`` writes the results JSON there.
        results_name: its file name (default ``coco_instances_results.json``; evaluations during
            training give each its own, e.g. with the iteration).
        backend: ``"pycocotools"`` (default) or ``"faster-coco-eval"`` (module doc).
        distributed: gather the predictions of all ranks in ``evaluate()`` (every rank must call
            it). ``None`` detects an initialised process group; default False (single-process
            evaluation, e.g. on rank 0 only).
        max_dets: detections per image COCOeval scores (its ``maxDets``: ``[1, 10, max_dets]``,
            the metrics are at ``max_dets``); raise it above COCO's 100 for images holding more
            instances (tiled evaluation of large images).
        max_pairs: the most detection/ground-truth pairs COCOeval may match (module doc); None:
            the backend's :data:`DEFAULT_MAX_PAIRS`.
    """

    def __init__(
        self,
        dataset_or_coco_gt: Any,
        category_ids: Optional[Sequence[int]] = None,
        *,
        output_dir: Optional[Union[str, os.PathLike]] = None,
        distributed: Optional[bool] = False,
        results_name: str = RESULTS_FILE,
        backend: str = DEFAULT_BACKEND,
        max_dets: int = DEFAULT_MAX_DETS,
        max_pairs: Optional[int] = None,
    ) -> None:
        if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 10:
            raise ValueError(f"COCOEvaluator: max_dets must be an integer >= 10, got {max_dets!r}")
        if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
            raise ValueError(f"COCOEvaluator: max_pairs must be an integer >= 1, got {max_pairs!r}")
        if backend not in BACKENDS:
            raise ValueError(f"COCOEvaluator: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faster-coco-eval":
            try:
                import faster_coco_eval  # noqa: F401
            except ImportError:
                raise ImportError("COCOEvaluator: backend 'faster-coco-eval' needs the faster-coco-eval package "
                                  "(pip install faster-coco-eval)") from None
        if not results_name or os.path.basename(results_name) != results_name:
            raise ValueError(f"COCOEvaluator: results_name must be a file name, got {results_name!r}")
        self.backend, self.results_name = backend, results_name
        self._faster_gt = None
        if isinstance(dataset_or_coco_gt, COCO):
            coco_gt = dataset_or_coco_gt
        elif isinstance(getattr(dataset_or_coco_gt, "coco", None), COCO):
            coco_gt = dataset_or_coco_gt.coco
            if category_ids is None:
                category_ids = dataset_or_coco_gt.category_ids
        else:
            raise TypeError(
                "COCOEvaluator: dataset_or_coco_gt must be a pycocotools COCO or a dataset with a .coco "
                f"attribute, got {type(dataset_or_coco_gt).__name__}"
            )
        if category_ids is None:
            raise ValueError("COCOEvaluator: category_ids is required when a bare COCO ground truth is given")
        unknown = [c for c in category_ids if c not in coco_gt.cats]
        if unknown:
            raise ValueError(f"COCOEvaluator: category_ids {unknown} are not categories of the ground truth")
        self.coco_gt = coco_gt
        self.category_ids = [int(c) for c in category_ids]
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.distributed = distributed
        self.max_dets = max_dets
        self.max_pairs = DEFAULT_MAX_PAIRS[backend] if max_pairs is None else max_pairs
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._results: List[Dict[str, Any]] = []
        self._image_ids: List[int] = []
        self._pairs = 0
        self._largest: Optional[Tuple[int, int, int, int]] = None

    def process(self, image_ids: Sequence[int], outputs: Sequence[Dict[str, torch.Tensor]]) -> None:
        """Add the model outputs of a batch.

        Args:
            image_ids: COCO image id of each output.
            outputs: model eval outputs, one dict per image: ``boxes (n, 4)`` xyxy pixels,
                ``labels (n,)`` contiguous, ``scores (n,)``, and either ``masks (n, 1, H, W)``
                probabilities in the image's own size (binarised at 0.5) or ``masks_rle``, n COCO
                RLE dicts of that size (a BlendMask with ``mask_format = "rle"``).
        """
        if len(image_ids) != len(outputs):
            raise ValueError(f"process: got {len(image_ids)} image ids but {len(outputs)} outputs")
        for image_id, output in zip(image_ids, outputs):
            image_id = int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"process: image id {image_id} is not in the ground truth")
            results = self._to_coco_results(image_id, output)
            pairs, largest = matching_pairs(self.coco_gt, results, [image_id], self.max_dets)
            self._pairs += pairs
            if largest is not None and (self._largest is None
                                        or largest[2] * largest[3] > self._largest[2] * self._largest[3]):
                self._largest = largest
            self._results.extend(results)
            self._image_ids.append(image_id)
            if self._pairs > self.max_pairs:
                self._refuse(self._pairs, len(set(self._image_ids)), self._largest, what="after")

    def _to_coco_results(self, image_id: int, output: Dict[str, torch.Tensor]) -> List[Dict[str, Any]]:
        missing = [k for k in ("boxes", "labels", "scores") if k not in output]
        if "masks" not in output and "masks_rle" not in output:
            missing.append("masks")
        if missing:
            raise ValueError(f"process: output of image {image_id} lacks {missing} (masks: 'masks' or 'masks_rle')")
        boxes = output["boxes"].detach().float().cpu()
        labels = output["labels"].detach().cpu().long()
        scores = output["scores"].detach().float().cpu()
        n = boxes.shape[0]
        info = self.coco_gt.imgs[image_id]
        size = (info["height"], info["width"])
        if boxes.shape != (n, 4) or labels.shape != (n,) or scores.shape != (n,):
            raise ValueError(
                f"process: image {image_id}: need boxes (n, 4), labels (n,), scores (n,); got "
                f"{tuple(boxes.shape)}, {tuple(labels.shape)}, {tuple(scores.shape)}"
            )
        rles = _masks_rle(output, image_id, n, size)
        if n == 0:
            return []
        if labels.min() < 0 or labels.max() >= len(self.category_ids):
            raise ValueError(
                f"process: image {image_id}: labels must be in [0, {len(self.category_ids)}), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        # Python lists first: indexing a tensor element by element costs microseconds per detection
        return [
            {"image_id": image_id, "category_id": self.category_ids[label], "bbox": [round(v, 3) for v in box],
             "score": score, "segmentation": rle}
            for label, box, score, rle in zip(labels.tolist(), xywh, scores.tolist(), rles)
        ]

    def _gathered(self) -> tuple[List[Dict[str, Any]], List[int]]:
        _, world_size = dist_rank_and_world_size(self.distributed)
        if world_size == 1:
            return self._results, self._image_ids
        gathered: List[Any] = [None] * world_size
        dist.all_gather_object(gathered, (self._results, self._image_ids))
        results = [r for part, _ in gathered for r in part]
        image_ids = [i for _, part in gathered for i in part]
        return results, image_ids

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Score everything processed; return the metrics (module doc) and write the results JSON."""
        results, image_ids = self._gathered()
        if not image_ids:
            raise RuntimeError("COCOEvaluator.evaluate: no images were processed")
        rank, _ = dist_rank_and_world_size(self.distributed)
        results_path = None if self.output_dir is None else os.path.join(self.output_dir, self.results_name)
        if results_path is not None and rank == 0:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(results_path, "w", encoding="utf-8") as f:
                json.dump(results, f)
        pairs, largest = matching_pairs(self.coco_gt, results, image_ids, self.max_dets)
        if pairs > self.max_pairs:  # the ranks' sum: each rank checked its own part in process()
            self._refuse(pairs, len(set(image_ids)), largest, what="on", results_path=results_path)
        if not results:
            logger.warning("COCOEvaluator: no predictions on %d images; every AP is 0", len(set(image_ids)))
        return {iou_type: self._run_cocoeval(results, sorted(set(image_ids)), iou_type) for iou_type in _IOU_TYPES}

    def _refuse(self, pairs: int, images: int, largest: Tuple[int, int, int, int], *, what: str,
                results_path: Optional[str] = None) -> None:
        """Raise :class:`EvaluationTooLargeError` (one line) for ``pairs`` over ``max_pairs`` (module doc)."""
        image_id, category_id, detections, instances = largest
        faster = "" if self.backend == "faster-coco-eval" else (
            f", or --eval-backend faster-coco-eval (limit {DEFAULT_MAX_PAIRS['faster-coco-eval']:,})")
        raise EvaluationTooLargeError(
            f"COCO evaluation would match {pairs:,} detection/ground-truth pairs {what} {images} "
            f"image{'' if images == 1 else 's'}, more than the "
            f"limit of {self.max_pairs:,} for {self.backend} (image id {image_id}: {detections} detections x "
            f"{instances} instances of {self.coco_gt.cats[category_id]['name']!r}): raise it with --max-eval-pairs "
            f"N (max_pairs){faster}" + (f"; the predictions are in {results_path}" if results_path else ""))

    def _cocoeval(self, dets: List[Dict[str, Any]], iou_type: str):
        """A COCOeval of the backend over ``dets`` (not yet evaluated)."""
        if self.backend == "pycocotools":
            coco_dt = self.coco_gt.loadRes(dets) if dets else _empty_results(self.coco_gt)
            return COCOeval(self.coco_gt, coco_dt, iou_type)
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        if self._faster_gt is None:  # its own records: faster-coco-eval writes into them (not into their values)
            dataset = self.coco_gt.dataset
            self._faster_gt = FasterCOCO({key: [dict(record) for record in dataset[key]]
                                          for key in ("images", "annotations", "categories")})
        coco_dt = self._faster_gt.loadRes(dets) if dets else FasterCOCO(_empty_results(self.coco_gt).dataset)
        return COCOeval_faster(self._faster_gt, coco_dt, iou_type)

    def _run_cocoeval(self, results: List[Dict[str, Any]], image_ids: List[int], iou_type: str) -> Dict[str, float]:
        if iou_type == "segm":
            # Without "bbox" pycocotools derives box and area from the mask, as it should for segm.
            dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        else:
            dets = [dict(r) for r in results]  # loadRes writes into the dicts it gets
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_eval = self._cocoeval(dets, iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.params.maxDets = [1, 10, self.max_dets]
            coco_eval.evaluate()
            coco_eval.accumulate()
        precision = coco_eval.eval["precision"]  # (iou thresholds, recall, category, area, max dets)
        metrics = _main_metrics(precision, coco_eval.params.iouThrs)
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            metrics[f"AP-{self.coco_gt.cats[cat_id]['name']}"] = float(p.mean()) if p.size else math.nan
        return metrics


def _main_metrics(precision, iou_thresholds) -> Dict[str, float]:
    """:data:`MAIN_METRICS` from COCOeval's accumulated precision at its last ``maxDets``, as its
    ``summarize()`` computes them (which scores AP at 100 detections whatever ``maxDets`` is)."""
    def mean(p) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else math.nan

    at_50, at_75 = (int(np.flatnonzero(np.isclose(iou_thresholds, t))[0]) for t in (0.5, 0.75))
    return {"AP": mean(precision[:, :, :, 0, -1]), "AP50": mean(precision[at_50, :, :, 0, -1]),
            "AP75": mean(precision[at_75, :, :, 0, -1]), "APs": mean(precision[:, :, :, 1, -1]),
            "APm": mean(precision[:, :, :, 2, -1]), "APl": mean(precision[:, :, :, 3, -1])}


def _masks_rle(output: Dict[str, Any], image_id: int, n: int, size: tuple) -> List[Dict[str, Any]]:
    """The ``n`` RLEs of an output's masks, given as ``masks_rle`` or encoded from ``masks``."""
    if "masks_rle" in output:
        rles = list(output["masks_rle"])
        bad = [i for i, r in enumerate(rles) if not isinstance(r, dict) or list(r.get("size", ())) != list(size)]
        if len(rles) != n or bad:
            raise ValueError(
                f"process: image {image_id}: masks_rle must be {n} RLE dicts of size {list(size)} (the image's "
                f"size), got {len(rles)}" + (f", record {bad[0]} is not" if bad else "")
            )
        return rles
    masks = output["masks"].detach().cpu()
    if masks.dim() != 4 or masks.shape[0] != n or masks.shape[1] != 1 or tuple(masks.shape[2:]) != size:
        raise ValueError(
            f"process: image {image_id}: masks must be (n, 1, H, W) = ({n}, 1, {size[0]}, {size[1]}) "
            f"(the image's size), got {tuple(masks.shape)}"
        )
    return encode_masks_rle(masks[:, 0])


def _empty_results(coco_gt: COCO) -> COCO:
    """A results ``COCO`` without detections (``loadRes`` rejects an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "annotations": [],
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
    }
    coco_dt.createIndex()
    return coco_dt


def format_results_table(metrics: Dict[str, Dict[str, float]], *, max_dets: int = DEFAULT_MAX_DETS) -> str:
    """A plain-text table of ``evaluate()``'s metrics: the main metrics per task, then per-category AP;
    a ``max_dets`` other than COCO's 100 is stated above it."""
    tasks = [t for t in _IOU_TYPES if t in metrics] + [t for t in metrics if t not in _IOU_TYPES]
    if not tasks:
        raise ValueError("format_results_table: metrics is empty")

    def cell(value: Optional[float]) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.3f}"

    lines = [] if max_dets == DEFAULT_MAX_DETS else [f"COCOeval maxDets {max_dets} (detections scored per image)"]
    lines.append("task  " + "".join(f"{m:>8}" for m in MAIN_METRICS))
    for task in tasks:
        lines.append(f"{task:<6}" + "".join(f"{cell(metrics[task].get(m)):>8}" for m in MAIN_METRICS))
    names = []
    for task in tasks:
        names += [k[3:] for k in metrics[task] if k.startswith("AP-") and k[3:] not in names]
    if names:
        width = max(8, max(len(n) for n in names) + 2)
        lines.append("")
        lines.append(f"{'category':<{width}}" + "".join(f"{'AP ' + t:>10}" for t in tasks))
        for name in names:
            lines.append(f"{name:<{width}}" + "".join(f"{cell(metrics[t].get('AP-' + name)):>10}" for t in tasks))
    return "\n".join(lines)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1,
    output_dir: Optional[Union[str, os.PathLike]] = None,
    progress: bool = True,
    num_workers: int = 0,
    distributed: Optional[bool] = False,
    compile: bool = False,
    results_name: str = RESULTS_FILE,
    backend: str = DEFAULT_BACKEND,
    max_dets: int = DEFAULT_MAX_DETS,
    max_pairs: Optional[int] = None,
    category_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """Run ``model`` (in eval mode, without gradients) over ``dataset`` and return COCO metrics.

    ``dataset`` must yield ``(image, target)`` with ``target["image_id"]`` and carry ``coco`` and
    ``category_ids`` (a :class:`blendmask.data.CocoInstanceDataset` built without training
    transforms). A model with a ``mask_format`` attribute (BlendMask) runs with ``"rle"``, so that
    no image-sized masks are held; its training mode and ``mask_format`` are restored afterwards. A
    BlendMask runs as its inference copy (:func:`blendmask.models.inference_path.inference_model_of`:
    batch norms folded; with ``compile``, backbone and head compiled), so the caller's model is not modified. With ``distributed=True`` (or
    None and a process group), every rank must call this; each runs its shard and all get the
    metrics. ``results_name`` and ``backend``: see :class:`COCOEvaluator`.
    ``max_dets``, ``max_pairs``: COCOeval's detections per image and the most detection/ground-truth
    pairs it may match (:class:`COCOEvaluator`).
    metrics. ``category_ids[label]``: the data set category a model label is scored as (default
    the data set's own, in order; see :func:`blendmask.evaluation.categories.match_categories`).
    """
    if getattr(dataset, "transforms", None) is not None:
        raise ValueError(
            "evaluate_model: the dataset has transforms; the ground truth is the untransformed file, "
            "so build the evaluation dataset with transforms=None"
        )
    if len(dataset) == 0:
        raise ValueError(f"nothing to evaluate: {getattr(dataset, 'ann_file', 'the evaluation set')} has no images")
    model = inference_model_of(model, compile=compile)  # a BlendMask runs as its folded copy; the caller's model is untouched
    evaluator = COCOEvaluator(dataset, category_ids=category_ids, output_dir=output_dir, distributed=distributed,
                              results_name=results_name, backend=backend, max_dets=max_dets,
                              max_pairs=max_pairs)
    loader = build_test_loader(dataset, batch_size=batch_size, num_workers=num_workers, distributed=distributed)
    device = _model_device(model)
    was_training = model.training
    mask_format = getattr(model, "mask_format", None)
    model.eval()
    if mask_format is not None:
        model.mask_format = "rle"
    try:
        with torch.no_grad():
            for images, targets in tqdm(loader, desc="eval", unit="batch", disable=not progress):
                outputs = model([image.to(device) for image in images])
                outputs = [{k: v.cpu() if torch.is_tensor(v) else v for k, v in out.items()} for out in outputs]
                evaluator.process([t["image_id"] for t in targets], outputs)
    finally:
        model.train(was_training)
        if mask_format is not None:
            model.mask_format = mask_format
    return evaluator.evaluate()
