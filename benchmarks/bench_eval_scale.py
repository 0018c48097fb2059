"""COCO evaluation at val2017 scale: everything outside the model, ours against detectron2's COCOEvaluator.

Generates, seeded (nothing is downloaded), a val2017-sized ground truth in a scratch directory:
``--images`` images (5,000) of ``--width`` x ``--height`` (640x480), a Poisson(7.3) number of
objects each, 80 categories, each object a 24-vertex polygon of a rotated ellipse (semi-axes 6-120
px), and an empty file per image. Per image, ``--dets`` detections (100) near it, as a model hands
them over, sorted by score: for each ground-truth object up to 4 detections (the ellipse moved,
scaled and turned a little, the right class 85% of the time, score in [0.2, 1)), the rest false
positives anywhere (score in [0, 0.5)); each with its xyxy box, its class and its full-image bool
mask (what detectron2's ``detector_postprocess`` hands its evaluator as ``pred_masks``). Each image's
detections come from an RNG seeded by ``(seed, image index)``: every side gets the same ones.

Each side runs in its own process, both at once (so that they share the machine's load alike);
only these sections are timed (generating the detections,
building detectron2's ``Instances`` and our RLE input are not):

- ``setup``: constructing the evaluator. detectron2: ``COCOEvaluator(name, tasks=("bbox", "segm"),
  distributed=False, output_dir=...)``, which parses the ground-truth JSON into a pycocotools
  ``COCO``. Ours: ``COCOEvaluator(dataset, output_dir=..., backend=...)``, which builds the ``COCO``
  from the dataset's records (the dataset, needed for the images anyway, is built before, untimed).
- ``process``: the sum over images of the evaluator's ``process`` call. detectron2:
  ``process([{"image_id", "height", "width"}], [{"instances": Instances(pred_boxes, scores,
  pred_classes, pred_masks (n, H, W) bool)}])``: boxes to xywh, each mask RLE-encoded. Ours, ``full``:
  ``process([image_id], [{"boxes", "labels", "scores", "masks" (n, 1, H, W) bool}])``, the same
  masks (encoded in one pycocotools call per image); ours, ``rle``: ``masks_rle``, the RLEs our model
  hands over in ``evaluate_model`` (it pastes its R x R masks straight into RLE, inside the model;
  that time is the model's and is not in this row; here they are made, untimed, by the function
the model's paste uses, from each mask's region).
- ``gather``: what a multi-rank gather does to one rank's predictions, pickling and unpickling them
  (``all_gather_object`` for ours, ``comm.gather`` for detectron2); a single process gathers nothing.
- ``evaluate``: ``evaluate()``: the results JSON written to the output directory (detectron2 also
  ``torch.save``s its raw predictions there), COCOeval ``evaluate`` + ``accumulate`` for bbox and
  segm, the metrics. detectron2 runs the official pycocotools COCOeval (its C++ ``COCOeval_opt``
  needs the compiled ``detectron2._C``, which a source tree does not have); ours with
  ``pycocotools`` and with ``faster-coco-eval``.

Each section is timed in wall-clock and in CPU seconds of the process (``time.process_time``,
one thread): on a shared machine the CPU time is the steadier of the two, and the ratios are given
for both. One process of ours times ``process`` for both input forms (``full`` into the pycocotools
evaluator, ``rle`` into the faster-coco-eval one) and then each ``evaluate``; a row's total is
setup + process + gather + evaluate. The metrics of every side are printed (COCOeval's AP, bbox and
segm) as a check that they scored the same detections.

    python benchmarks/bench_eval_scale.py --detectron2 /tmp/d2src --deps /tmp/d2deps \\
        --faster-deps /tmp/fce

``--detectron2``: a detectron2 source tree, run uncompiled; ``--deps``: its pure-Python dependencies
(fvcore, iopath, ...; appended after site-packages, so the environment's numpy wins);
``--faster-deps``: a directory holding ``faster_coco_eval`` if the environment lacks it.
Writes ``<out>.json`` and ``<out>.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = 80
_POLYGON_VERTICES = 24
_DETECTIONS_PER_OBJECT = 4
_RIGHT_CLASS = 0.85


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5000, help="images (default 5000, as COCO val2017)")
    p.add_argument("--dets", type=int, default=100, help="detections per image (default 100)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--detectron2", type=Path, help="detectron2 source tree (its side is skipped without it)")
    p.add_argument("--deps", type=Path, help="directory with detectron2's pure-Python dependencies")
    p.add_argument("--faster-deps", type=Path, help="directory holding faster_coco_eval, if not installed")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/eval_scale", help="output prefix for .json and .png")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one side, JSON args
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- ground truth and detections
def ground_truth(n_images: int, *, seed: int, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(objects, offsets)``: ``objects (N, 7)`` float64, one row per object ``[cx, cy, a, b,
    angle, image row, category id]`` (a rotated ellipse: centre, semi-axes in pixels, angle in
    radians; image rows in ``[0, n_images)``, ascending), and ``offsets (n_images + 1,)``: image
    ``i``'s objects are rows ``offsets[i]:offsets[i + 1]``."""
    rng = np.random.default_rng([seed, 0])
    counts = rng.poisson(7.3, n_images)
    n = int(counts.sum())
    axes = np.exp(rng.uniform(np.log(6), np.log(120), (n, 2)))
    objects = np.column_stack([rng.uniform(0, width, n), rng.uniform(0, height, n), axes,
                               rng.uniform(0, np.pi, n), np.repeat(np.arange(n_images), counts),
                               rng.integers(1, CATEGORIES + 1, n)])
    return objects, np.concatenate([[0], np.cumsum(counts)])


def ellipse_polygon(cx: float, cy: float, a: float, b: float, angle: float, width: int, height: int) -> np.ndarray:
    """``(24, 2)`` vertices of the ellipse, clipped to the image."""
    t = np.linspace(0, 2 * np.pi, _POLYGON_VERTICES, endpoint=False)
    x = cx + a * np.cos(t) * np.cos(angle) - b * np.sin(t) * np.sin(angle)
    y = cy + a * np.cos(t) * np.sin(angle) + b * np.sin(t) * np.cos(angle)
    return np.stack([x.clip(0, width), y.clip(0, height)], 1).round(2)


def write_ground_truth(path: Path, image_dir: Path, n_images: int, *, seed: int, width: int, height: int) -> int:
    """The COCO instance file of :func:`ground_truth` and an empty file per image; returns the
    number of annotations."""
    objects, _ = ground_truth(n_images, seed=seed, width=width, height=height)
    annotations = []
    for k, (cx, cy, a, b, angle, row, category) in enumerate(objects):
        xy = ellipse_polygon(cx, cy, a, b, angle, width, height)
        lo, hi = xy.min(0), xy.max(0)
        area = 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1))))
        annotations.append({"id": k + 1, "image_id": int(row) + 1, "category_id": int(category), "iscrowd": 0,
                            "segmentation": [xy.reshape(-1).tolist()], "area": round(area, 2),
                            "bbox": [float(lo[0]), float(lo[1]), round(float(hi[0] - lo[0]), 2),
                                     round(float(hi[1] - lo[1]), 2)]})
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": width, "height": height}
              for i in range(n_images)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, CATEGORIES + 1)]}))
    image_dir.mkdir(parents=True, exist_ok=True)
    for rec in images:
        (image_dir / rec["file_name"]).touch()
    return len(annotations)


def detections(args: Dict[str, Any], *, rle: bool = False) -> Iterator[Tuple[int, Any, Any, Any, Any, Any]]:
    """Per image ``(image id, boxes (n, 4) float32 xyxy, scores (n,) float32 descending, labels
    (n,) int64 in [0, 80), masks (n, H, W) bool, rles)``, as torch tensors (module doc). With
    ``rle``, ``rles`` are the masks' n COCO RLEs as our model makes them (each from its region,
    :func:`blendmask.models.mask_ops.encode_region_rle`), else None."""
    import torch

    if rle:
        from blendmask.models.mask_ops import encode_region_rle

    width, height, n_dets = args["width"], args["height"], args["dets"]
    objects, offsets = ground_truth(args["images"], seed=args["seed"], width=width, height=height)
    for row in range(args["images"]):
        rng = np.random.default_rng([args["seed"], 1, row])
        own = objects[offsets[row]:offsets[row + 1]]
        near = min(n_dets, _DETECTIONS_PER_OBJECT * len(own))
        source = own[np.arange(near) % max(1, len(own))]
        scale = np.minimum(source[:, 2], source[:, 3])[:, None]
        near_ellipses = np.column_stack([source[:, :2] + rng.normal(0, 0.15, (near, 2)) * scale,
                                         source[:, 2:4] * np.exp(rng.normal(0, 0.15, (near, 2))),
                                         source[:, 4] + rng.normal(0, 0.2, near)])
        near_labels = np.where(rng.uniform(size=near) < _RIGHT_CLASS, source[:, 6] - 1,
                               rng.integers(0, CATEGORIES, near))
        far = n_dets - near
        far_ellipses = np.column_stack([rng.uniform(0, width, far), rng.uniform(0, height, far),
                                        np.exp(rng.uniform(np.log(6), np.log(120), (far, 2))),
                                        rng.uniform(0, np.pi, far)])
        ellipses = np.concatenate([near_ellipses, far_ellipses])
        labels = np.concatenate([near_labels, rng.integers(0, CATEGORIES, far)]).astype(np.int64)
        scores = np.concatenate([rng.uniform(0.2, 1.0, near), rng.uniform(0.0, 0.5, far)]).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        masks = torch.zeros((n_dets, height, width), dtype=torch.bool)
        boxes = np.zeros((n_dets, 4), dtype=np.float32)
        rles = [] if rle else None
        for j, (cx, cy, a, b, angle) in enumerate(ellipses[order]):
            cx, cy = float(np.clip(cx, 0, width - 1)), float(np.clip(cy, 0, height - 1))
            r = max(a, b)
            x0, x1 = int(max(0, cx - r)), int(min(width, cx + r + 1))
            y0, y1 = int(max(0, cy - r)), int(min(height, cy + r + 1))
            dx = np.arange(x0, x1) + 0.5 - cx
            dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
            inside = u * u + v * v <= 1.0
            masks[j, y0:y1, x0:x1] = torch.from_numpy(inside)
            if rle:
                rles.append(encode_region_rle(inside, y0, x0, height, width))
            ys, xs = np.nonzero(inside)
            if ys.size:
                boxes[j] = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
        yield (row + 1, torch.from_numpy(boxes), torch.from_numpy(scores[order]), torch.from_numpy(labels[order]),
               masks, rles)


# ----------------------------------------------------------------------------- the two sides (children)
class Clock:
    """Wall-clock and CPU seconds summed per named section: ``with clock("process"): ...``."""

    def __init__(self) -> None:
        self.wall: Dict[str, float] = {}
        self.cpu: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def times(self) -> Dict[str, Dict[str, float]]:
        return {"wall": self.wall, "cpu": self.cpu}


def _gather(payload: Any) -> None:
    pickle.loads(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def ours(args: Dict[str, Any]) -> Dict[str, Any]:
    """Our COCOEvaluator: ``full`` masks into a pycocotools evaluator, ``rle`` into a
    faster-coco-eval one (module doc)."""
    from blendmask.data import CocoInstanceDataset
    from blendmask.evaluation.coco_eval import COCOEvaluator

    dataset = CocoInstanceDataset(args["gt"], args["image_dir"])
    clock = Clock()
    out: Dict[str, Any] = {}
    evaluators = {}
    for form, backend in (("full", "pycocotools"), ("rle", "faster-coco-eval")):
        with clock(f"setup_{backend}"):
            evaluators[form] = COCOEvaluator(dataset, output_dir=Path(args["work"]) / f"ours_{form}", backend=backend)
    for image_id, boxes, scores, labels, masks, rles in detections(args, rle=True):
        full = {"boxes": boxes, "labels": labels, "scores": scores, "masks": masks[:, None]}
        rle = {"boxes": boxes, "labels": labels, "scores": scores, "masks_rle": rles}
        for form, output in (("full", full), ("rle", rle)):
            with clock(f"process_{form}"):
                evaluators[form].process([image_id], [output])
    for form, backend in (("full", "pycocotools"), ("rle", "faster-coco-eval")):
        evaluator = evaluators.pop(form)
        out["detections"] = len(evaluator._results)
        with clock(f"gather_{form}"):
            _gather((evaluator._results, evaluator._image_ids))
        with clock(f"evaluate_{backend}"):
            metrics = evaluator.evaluate()
        out[f"metrics_{backend}"] = {t: {k: metrics[t][k] for k in ("AP", "AP50", "AP75")} for t in ("bbox", "segm")}
        del evaluator
    return {**out, **clock.times()}


def detectron2_side(args: Dict[str, Any]) -> Dict[str, Any]:
    """detectron2's COCOEvaluator over the same detections (module doc)."""
    sys.path.insert(0, args["detectron2"])
    if args.get("deps"):
        sys.path.append(args["deps"])  # after site-packages: the environment's numpy, PIL, ... win
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    MetadataCatalog.get("bench_val").set(json_file=args["gt"], evaluator_type="coco",
                                         thing_classes=[f"class{c}" for c in range(1, CATEGORIES + 1)],
                                         thing_dataset_id_to_contiguous_id={c: c - 1 for c in range(1, CATEGORIES + 1)})
    clock = Clock()
    with clock("setup"):
        evaluator = COCOEvaluator("bench_val", tasks=("bbox", "segm"), distributed=False,
                                  output_dir=str(Path(args["work"]) / "detectron2"))
        evaluator.reset()
    size = (args["height"], args["width"])
    for image_id, boxes, scores, labels, masks, _ in detections(args):
        instances = Instances(size, pred_boxes=Boxes(boxes), scores=scores, pred_classes=labels, pred_masks=masks)
        with clock("process"):
            evaluator.process([{"image_id": image_id, "height": size[0], "width": size[1]}], [{"instances": instances}])
    detections_seen = sum(len(p["instances"]) for p in evaluator._predictions)
    with clock("gather"):
        _gather(evaluator._predictions)
    with clock("evaluate"):
        metrics = evaluator.evaluate()
    return {"fast_impl": evaluator._use_fast_impl, "detections": detections_seen, **clock.times(),
            "metrics": {t: {k: metrics[t][k] / 100 for k in ("AP", "AP50", "AP75")} for t in ("bbox", "segm")}}


def child(args: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    measured = ours(args) if args["side"] == "ours" else detectron2_side(args)
    return {**measured, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def start_child(spec: Dict[str, Any], *, python_path: List[str]) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(python_path), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-W", "ignore", str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(proc: subprocess.Popen, side: str) -> Dict[str, Any]:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def rows_of(results: Dict[str, Any], clock: str) -> Dict[str, Dict[str, float]]:
    """The table's rows in ``clock`` (``"wall"`` or ``"cpu"``) seconds: ``{label: {setup, process,
    gather, evaluate, total, over_detectron2}}``."""
    o = results["ours"][clock]
    rows = {}
    if "detectron2" in results:
        d = results["detectron2"][clock]
        rows["detectron2 COCOEvaluator (full masks, pycocotools COCOeval)"] = {
            "setup": d["setup"], "process": d["process"], "gather": d["gather"], "evaluate": d["evaluate"]}
    for form, what in (("full", "full masks"), ("rle", "RLE as our model hands it")):
        for backend in ("pycocotools", "faster-coco-eval"):
            rows[f"ours ({what}, {backend})"] = {"setup": o[f"setup_{backend}"], "process": o[f"process_{form}"],
                                                 "gather": o[f"gather_{form}"], "evaluate": o[f"evaluate_{backend}"]}
    for row in rows.values():
        row["total"] = row["setup"] + row["process"] + row["gather"] + row["evaluate"]
    reference = next((r["total"] for label, r in rows.items() if label.startswith("detectron2")), None)
    for row in rows.values():
        if reference:
            row["over_detectron2"] = row["total"] / reference
    return rows


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_eval_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "images": args.images, "dets": args.dets,
        "size": [args.width, args.height], "command": "python benchmarks/bench_eval_scale.py " + " ".join(argv)}
    try:
        gt, image_dir = work / "annotations" / "instances_val.json", work / "val"
        gt.parent.mkdir(parents=True, exist_ok=True)
        results["annotations"] = write_ground_truth(gt, image_dir, args.images, seed=args.seed, width=args.width,
                                                    height=args.height)
        spec = {"gt": str(gt), "image_dir": str(image_dir), "work": str(work), "images": args.images,
                "dets": args.dets, "width": args.width, "height": args.height, "seed": args.seed}
        faster = [str(args.faster_deps)] if args.faster_deps else []
        # The two sides run at once, so that they share the machine's load alike.
        children = {"ours": start_child({**spec, "side": "ours"}, python_path=[str(REPO)] + faster)}
        if args.detectron2:
            children["detectron2"] = start_child({**spec, "side": "detectron2", "detectron2": str(args.detectron2),
                                                  "deps": str(args.deps) if args.deps else None}, python_path=[])
        for side, proc in children.items():
            results[side] = child_result(proc, side)
            print(side, results[side], flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["rows"] = {clock: rows_of(results, clock) for clock in ("cpu", "wall")}
    for clock, rows in results["rows"].items():
        for label, row in rows.items():
            print(f"{clock:4s} {label:60s} " + " ".join(f"{k} {v:8.2f}" for k, v in row.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = (("setup", "#999999"), ("process", "#4477aa"), ("gather", "#ddcc77"), ("evaluate", "#cc6677"))
    labels = list(results["rows"]["cpu"])
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.2 * len(labels) + 2.6), sharex=True)
    for ax, clock in zip(axes, ("cpu", "wall")):
        rows = results["rows"][clock]
        left = np.zeros(len(labels))
        for part, colour in parts:
            values = np.array([rows[label][part] for label in labels])
            ax.barh(labels, values, left=left, color=colour, label=part)
            left += values
        for y, label in enumerate(labels):
            ratio = rows[label].get("over_detectron2")
            ax.text(left[y], y, f"  {left[y]:.0f} s" + (f" ({ratio:.2f}x)" if ratio else ""), va="center", fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, left.max() * 1.3)
        ax.set_title(f"{'CPU' if clock == 'cpu' else 'wall-clock'} seconds, everything outside the model")
    axes[0].legend(loc="lower right")
    fig.suptitle(f"COCO evaluation, {results['images']} images x {results['dets']} detections "
                 f"({results['size'][0]}x{results['size'][1]}); {results['date']}, {results['cpus']} CPUs, 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
