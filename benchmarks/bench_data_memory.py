"""Peak memory of building the training targets of one COCO-sized image, polygons against bitmasks.

Writes, in a scratch directory, a one-image COCO data set: a ``--width`` x ``--height`` image
(640 x 480 by default) with ``--instances`` polygon annotations (50 by default; star-shaped, 8 to
24 vertices, COCO-like sizes). For each mask format it runs, in its own subprocess, what training
does to that image before the network: ``CocoInstanceDataset[0]`` with the training flip, the
model's resize to the training size (short side ``--min-size``, 800: 480 x 640 -> 800 x 1067), the
``R x R`` mask targets (``crop_and_resize_masks``, R = 56) and the basis module's semantic target
(stride 8 on the padded batch). After a warm-up pass on a tiny image, the child reports the rise of its peak RSS (``ru_maxrss``) over
what it held before loading the sample, and the wall time. A first row without masks (the image and
its boxes alone, through the same resize) gives what every row spends besides the masks;
``masks_peak_mb`` is a row's rise minus that one.

- ``bitmask``: ``mask_format="bitmask"``, the path every mask took before polygons stayed polygons
  (main at e12c083): decode n x H x W, resize n x H' x W' bilinearly, RoIAlign the crops;
- ``polygon``: polygons kept as vertices, rasterised in their boxes at R x R and at the stride.

``--baseline-tree DIR`` adds a row run against another source tree (e.g. ``git archive e12c083``
with the compiled extension copied in), with that tree's default mask handling.
Writes ``<out>.json`` and ``<out>.png``.

    python benchmarks/bench_data_memory.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--instances", type=int, default=50)
    p.add_argument("--min-size", type=int, default=800, help="training short side (default 800)")
    p.add_argument("--max-size", type=int, default=1333, help="training long side limit (default 1333)")
    p.add_argument("--resolution", type=int, default=56, help="R of the mask targets (default 56)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-tree", type=Path, help="also measure this source tree (its default mask format)")
    p.add_argument("--baseline-label", default="baseline tree", help="its row's name (e.g. 'main e12c083')")
    p.add_argument("--out", default="benchmarks/results/data_memory", help="output prefix for .json and .png")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one measurement as JSON args
    return p.parse_args(argv)


def write_dataset(root: Path, width: int, height: int, instances: int, seed: int) -> Path:
    """``root/ann.json`` + ``root/images/im.png``: a random image and ``instances`` polygons (image 1),
    and a tiny image with one polygon for the warm-up pass (image 2)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / "im.png")
    anns = []
    while len(anns) < instances:
        k = int(rng.integers(8, 25))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = np.exp(rng.uniform(np.log(8), np.log(min(width, height) / 3))) * rng.uniform(0.5, 1.0, k)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        xy = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).clip([0, 0], [width, height])
        x0, y0, x1, y1 = xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1 + len(anns) % 3, "iscrowd": 0,
                     "segmentation": [xy.reshape(-1).round(2).tolist()],
                     "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
    # image 2: a tiny one, for a warm-up pass (first-use costs: code pages, thread pools, lazy imports)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / "warm.png")
    anns.append({"id": len(anns) + 1, "image_id": 2, "category_id": 1, "iscrowd": 0,
                 "segmentation": [[8.0, 8.0, 40.0, 10.0, 30.0, 40.0]], "bbox": [8.0, 8.0, 32.0, 32.0]})
    coco = {"images": [{"id": 1, "file_name": "im.png", "height": height, "width": width},
                       {"id": 2, "file_name": "warm.png", "height": 48, "width": 64}], "annotations": anns,
            "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(spec: Dict) -> Dict:
    """Build the training targets once; the rise of peak RSS over the state before loading the sample."""
    import torch

    torch.set_num_threads(1)
    from blendmask.data import CocoInstanceDataset, RandomHorizontalFlip
    from blendmask.models.bottom import semantic_targets_from_instances
    from blendmask.models.mask_ops import crop_and_resize_masks
    from blendmask.models.transform import ImageTransform

    root = Path(spec["data"])
    fmt = spec["mask_format"]
    kwargs = {} if fmt in ("default", "none") else {"mask_format": fmt}
    dataset = CocoInstanceDataset(root / "ann.json", root / "images", transforms=RandomHorizontalFlip(1.0), **kwargs)
    transform = ImageTransform(min_size_train=(spec["min_size"],), max_size_train=spec["max_size"], min_size_test=0,
                               max_size_test=0, size_divisibility=32, pixel_mean=[103.53, 116.28, 123.675],
                               pixel_std=[1.0, 1.0, 1.0], input_format="BGR").train()
    def build(index: int):
        image, target = dataset[index] if fmt != "none" else (dataset.load_image(index), dataset.load_target(index))
        if fmt == "none":  # the image and boxes alone: what every row spends besides the masks
            image, target = image.flip(-1), {k: v for k, v in target.items() if k != "masks"}
        batch, (resized,) = transform([image], [target])
        mask_targets = semantic = None
        if "masks" in resized:
            mask_targets = crop_and_resize_masks(resized["masks"], resized["boxes"], spec["resolution"])
            padded = batch.tensors.shape[-2:]
            semantic = semantic_targets_from_instances([resized["masks"]], [resized["labels"]],
                                                       (padded[0] // 8, padded[1] // 8), 8)
        return batch, resized, mask_targets, semantic

    build(1)  # warm-up on the tiny image
    before = _peak_mb()
    start = time.perf_counter()
    batch, resized, mask_targets, semantic = build(0)
    seconds = time.perf_counter() - start
    return {"mask_format": fmt, "masks_type": type(resized["masks"]).__name__ if "masks" in resized else "none",
            "instances": len(resized["labels"]), "image_size": list(batch.image_sizes[0]),
            "mask_targets": None if mask_targets is None else list(mask_targets.shape),
            "semantic": None if semantic is None else list(semantic.shape),
            "rss_before_mb": before, "peak_rss_mb": _peak_mb(), "target_peak_mb": _peak_mb() - before,
            "seconds": seconds}


def run_child(spec: Dict, pythonpath: Path) -> Dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"measurement {spec['mask_format']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: List[Dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [r["label"].replace(" (", "\n(") for r in rows]
    values = [r["target_peak_mb"] for r in rows]
    colors = {"Tensor": "tab:red", "PolygonMasks": "tab:green", "none": "tab:gray"}
    bars = ax.bar(labels, values, color=[colors[r["masks_type"]] for r in rows])
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.1f} MB", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylabel("peak RSS rise while building the targets (MB)")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_memory_") as tmp:
        data = write_dataset(Path(tmp) / "data", args.width, args.height, args.instances, args.seed)
        runs: List[tuple] = [("no masks (image + boxes)", "none", REPO), ("bitmask", "bitmask", REPO),
                             ("polygon", "polygon", REPO)]
        if args.baseline_tree is not None:
            runs.insert(1, (f"{args.baseline_label} (its default)", "default", args.baseline_tree.resolve()))
        for label, fmt, tree in runs:
            spec = {"data": str(data), "mask_format": fmt, "min_size": args.min_size, "max_size": args.max_size,
                    "resolution": args.resolution}
            row = {"label": label, **run_child(spec, tree)}
            print(f"{label:28s} {row['masks_type']:12s} n={row['instances']} {row['image_size']}: peak RSS rise "
                  f"{row['target_peak_mb']:7.1f} MB, {row['seconds'] * 1000:7.1f} ms", flush=True)
            rows.append(row)
    image_only = rows[0]["target_peak_mb"]
    for row in rows:
        row["masks_peak_mb"] = row["target_peak_mb"] - image_only
    report = {"image": [args.height, args.width], "instances": args.instances, "min_size": args.min_size,
              "max_size": args.max_size, "resolution": args.resolution, "python": platform.python_version(),
              "machine": platform.machine(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    title = (f"training targets of one {args.width}x{args.height} image, {args.instances} polygons, "
             f"resized to {rows[-1]['image_size'][0]}x{rows[-1]['image_size'][1]}")
    plot(rows, title, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
