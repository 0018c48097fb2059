"""COCO evaluation time of images with thousands of instances, outside the model.

For every instance count N of ``--instances``, builds one ``--size`` x ``--size`` image holding N
small squares (6-14 px, ground truth as COCO RLE) and one detection of each (shifted by up to a
pixel, random score, as RLE, as a BlendMask in ``mask_format="rle"`` gives them), then runs
:class:`blendmask.evaluation.COCOEvaluator` (``process``, ``evaluate``: results file, pair count,
COCOeval for bbox and segm) per backend and ``max_dets``, timing its parts:

- ours: ``process`` (the results records), the results JSON file, :func:`matching_pairs`;
- COCOeval: ``loadRes``, ``computeIoU``, the matching (pycocotools' ``evaluateImg``, a Python
  loop over IoU thresholds x detections x ground truths, four area ranges; faster-coco-eval's
  C++ evaluate), ``accumulate``.

A run of more pairs than ``--budget-pairs`` allows for its backend is not run; its time is
extrapolated from the cost per pair of the backend's largest run (marked "est."). The table says
whether the backend's default limit (:data:`~blendmask.evaluation.coco_eval.DEFAULT_MAX_PAIRS`)
lets each run go or refuses it. Also times the
faster-coco-eval ground-truth setup as it was (``copy.deepcopy`` of the data set) and as it is
(a copy of each record). Writes ``<out>.json`` and ``<out>.png``.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/bench_eval_crowded.py
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask.evaluation import coco_eval
from blendmask.evaluation.coco_eval import DEFAULT_MAX_PAIRS, COCOEvaluator, matching_pairs

DEFAULT_BUDGET = {"pycocotools": 2_500_000, "faster-coco-eval": 30_000_000}


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, nargs="+", default=[1000, 5000, 20000], help="instances per image")
    p.add_argument("--size", type=int, default=1500, help="image side in pixels (default 1500)")
    p.add_argument("--max-dets", default="100,N", help="COCOeval maxDets to run, 'N' = the instance count "
                                                        "(default '100,N')")
    p.add_argument("--backends", nargs="+", default=list(coco_eval.BACKENDS))
    p.add_argument("--budget-pairs", nargs="+", default=[f"{k}={v}" for k, v in DEFAULT_BUDGET.items()],
                   help="BACKEND=PAIRS: runs over this many pairs are extrapolated, not run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/eval_crowded", help="output prefix for .json and .png")
    return p.parse_args(argv)


def crowded_scene(n: int, size: int, rng: np.random.Generator) -> Tuple[COCO, Dict[str, Any]]:
    """A one-image COCO ground truth of ``n`` squares and the model output detecting each of them."""
    side = rng.integers(6, 15, size=n).astype(np.float64)
    xy = rng.integers(0, size - 16, size=(n, 2)).astype(np.float64)
    gt_boxes = np.concatenate([xy, side[:, None], side[:, None]], axis=1)  # (n, 4) xywh
    det_boxes = gt_boxes + np.concatenate([rng.integers(-1, 2, size=(n, 2)), np.zeros((n, 2))], axis=1)
    det_boxes[:, :2] = np.clip(det_boxes[:, :2], 0, None)

    def rles(boxes: np.ndarray) -> List[Dict[str, Any]]:
        return [{"size": [size, size], "counts": r["counts"].decode("ascii")}
                for r in mask_utils.frPyObjects(boxes, size, size)]

    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(b[2] * b[3]),
                    "bbox": [float(v) for v in b], "segmentation": r} for i, (b, r) in enumerate(zip(gt_boxes, rles(gt_boxes)))]
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "file_name": "crowded.png", "height": size, "width": size}],
                  "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    xyxy = np.concatenate([det_boxes[:, :2], det_boxes[:, :2] + det_boxes[:, 2:]], axis=1)
    output = {"boxes": torch.tensor(xyxy, dtype=torch.float32), "labels": torch.zeros(n, dtype=torch.long),
              "scores": torch.tensor(rng.random(n), dtype=torch.float32), "masks_rle": rles(det_boxes)}
    return gt, output


@contextlib.contextmanager
def timed(targets: Dict[str, Tuple[Any, str]]) -> Iterator[Dict[str, float]]:
    """Accumulate the seconds spent in each ``owner.name`` (patched for the block) under its label."""
    seconds: Dict[str, float] = defaultdict(float)
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets.values()]
    for label, (owner, name) in targets.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_label] += time.perf_counter() - start

        setattr(owner, name, wrapper)
    try:
        yield seconds
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def phase_targets(backend: str) -> Dict[str, Tuple[Any, str]]:
    """What to time: our parts, and the backend's COCOeval stages."""
    ours = {"results file": (json, "dump"), "pair count": (coco_eval, "matching_pairs")}
    if backend == "pycocotools":
        return {**ours, "loadRes": (COCO, "loadRes"), "computeIoU": (COCOeval, "computeIoU"),
                "matching": (COCOeval, "evaluateImg"), "accumulate": (COCOeval, "accumulate")}
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval.core.cocoeval import COCOeval as FasterBase
    from faster_coco_eval.core.faster_eval_api import COCOeval_faster

    return {**ours, "loadRes": (FasterCOCO, "loadRes"), "computeIoU": (FasterBase, "computeIoU"),
            "evaluate": (COCOeval_faster, "evaluate"), "accumulate": (COCOeval_faster, "accumulate")}


def run_one(gt: COCO, output: Dict[str, Any], backend: str, max_dets: int, out_dir: str) -> Dict[str, Any]:
    evaluator = COCOEvaluator(gt, [1], backend=backend, max_dets=max_dets, max_pairs=10**15, output_dir=out_dir)
    gc.collect()  # every timed part starts without the garbage of the one before
    start = time.perf_counter()
    evaluator.process([1], [output])
    process = time.perf_counter() - start
    gc.collect()
    with timed(phase_targets(backend)) as seconds:
        start = time.perf_counter()
        metrics = evaluator.evaluate()
        total = time.perf_counter() - start
    phases = dict(seconds)
    if backend != "pycocotools":  # faster-coco-eval's evaluate holds its computeIoU and the C++ matching
        phases["matching"] = phases.pop("evaluate") - phases["computeIoU"]
    return {"process_s": process, "evaluate_s": total, "phases_s": phases, "total_s": process + total,
            "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"]}


def faster_gt_setup(gt: COCO) -> Dict[str, float]:
    """Seconds to build faster-coco-eval's ground truth: as before (deepcopy) and as now."""
    from faster_coco_eval import COCO as FasterCOCO

    tiny = COCO()
    tiny.dataset = {"images": gt.dataset["images"], "annotations": gt.dataset["annotations"][:1],
                    "categories": gt.dataset["categories"]}
    tiny.createIndex()
    COCOEvaluator(tiny, [1], backend="faster-coco-eval")._cocoeval([], "bbox")  # first-call costs, off the clock
    gc.collect()
    start = time.perf_counter()
    FasterCOCO(copy.deepcopy(gt.dataset))
    before = time.perf_counter() - start
    gc.collect()
    start = time.perf_counter()
    COCOEvaluator(gt, [1], backend="faster-coco-eval")._cocoeval([], "bbox")
    return {"deepcopy_s (before)": before, "record copies_s (now)": time.perf_counter() - start}


def plot(rows: List[Dict[str, Any]], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = sorted({(r["backend"], r["max_dets_label"]) for r in rows})
    for backend, label in series:
        points = [r for r in rows if (r["backend"], r["max_dets_label"]) == (backend, label)]
        xs = [r["instances"] for r in points]
        ys = [r["total_s"] if not r["skipped"] else r["estimated_s"] for r in points]
        line, = ax.plot(xs, ys, "-", label=f"{backend}, maxDets {label}")
        for r, y in zip(points, ys):
            ax.plot(r["instances"], y, "o", color=line.get_color(), fillstyle="none" if r["skipped"] else "full")
    ax.axhline(600, color="black", linestyle="--", label="10 minutes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"instances in one {size}x{size} image (one detection each)")
    ax.set_ylabel("evaluation time, s (hollow: extrapolated)")
    ax.set_title("COCOEvaluator (bbox + segm), 1 thread, shared machine")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    budget = dict(DEFAULT_BUDGET)
    budget.update({k: int(float(v)) for k, v in (item.split("=", 1) for item in args.budget_pairs)})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows, setups = [], {}
    per_pair: Dict[str, Tuple[int, float]] = {}  # backend -> (pairs, seconds per pair) of its largest run
    with tempfile.TemporaryDirectory(prefix="bench_eval_crowded_") as tmp:
        for n in args.instances:
            gt, output = crowded_scene(n, args.size, rng)
            if "faster-coco-eval" in args.backends:
                with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' index messages
                    setups[n] = faster_gt_setup(gt)
            for backend in args.backends:
                for label in args.max_dets.split(","):
                    max_dets = n if label == "N" else int(label)
                    pairs = matching_pairs(gt, [{"image_id": 1, "category_id": 1}] * n, [1], max_dets)[0]
                    row = {"instances": n, "backend": backend, "max_dets": max_dets, "max_dets_label": label,
                           "pairs": pairs, "skipped": pairs > budget[backend]}
                    if not row["skipped"]:
                        row.update(run_one(gt, output, backend, max_dets, os.path.join(tmp, f"{backend}_{n}_{label}")))
                        if pairs > per_pair.get(backend, (0, 0.0))[0]:
                            per_pair[backend] = (pairs, row["total_s"] / pairs)
                    rows.append(row)
                    print(format_row(row), flush=True)
    for row in rows:
        if row["skipped"] and row["backend"] in per_pair:
            row["estimated_s"] = row["pairs"] * per_pair[row["backend"]][1]
    print()
    print(table(rows))
    for n, setup in setups.items():
        print(f"faster-coco-eval ground truth of {n} instances: " +
              ", ".join(f"{k} {v:.2f}" for k, v in setup.items()))
    report = {"size": args.size, "threads": torch.get_num_threads(), "budget_pairs": budget, "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.machine(), "load_avg": os.getloadavg(),
              "us_per_pair": {k: v[1] * 1e6 for k, v in per_pair.items()},
              "default_max_pairs": DEFAULT_MAX_PAIRS, "faster_gt_setup": setups, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(rows, out.with_suffix(".png"), args.size)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def format_row(row: Dict[str, Any]) -> str:
    head = f"N={row['instances']:6d} {row['backend']:17s} maxDets {row['max_dets']:6d} pairs {row['pairs']:>12,}"
    if row["skipped"]:
        return head + "  (over the budget: not run)"
    phases = ", ".join(f"{k} {v:.2f}" for k, v in row["phases_s"].items())
    return head + f"  total {row['total_s']:8.2f} s (process {row['process_s']:.2f}, {phases}) segm AP {row['segm_AP']:.3f}"


def table(rows: List[Dict[str, Any]]) -> str:
    """The Markdown table of the docs."""
    lines = ["| instances | backend | maxDets | pairs | process + results file + pair count (ours), s | "
             "loadRes + IoU, s | matching, s | accumulate, s | total, s | segm AP | default limit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['instances']:,} | {r['backend']} | {r['max_dets']:,} | {r['pairs']:,} |"
        verdict = "runs" if r["pairs"] <= DEFAULT_MAX_PAIRS[r["backend"]] else "refused"
        if r["skipped"]:
            estimate = f"~{r['estimated_s']:,.0f} (est.)" if "estimated_s" in r else "not run"
            lines.append(head + f" | | | | {estimate} | | {verdict} |")
            continue
        p = r["phases_s"]
        ours = r["process_s"] + p.get("results file", 0) + p.get("pair count", 0)
        lines.append(head + f" {ours:.2f} | {p.get('loadRes', 0) + p.get('computeIoU', 0):.2f} | {p['matching']:.2f} | "
                     f"{p.get('accumulate', 0):.2f} | {r['total_s']:.1f} | {r['segm_AP']:.3f} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
