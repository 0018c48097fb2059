"""COCO-scale data: start-up, cache, worker memory and loader throughput on a generated COCO-sized file.

Writes, in a scratch directory, a synthetic COCO instance file of ``--images`` images (118,287 as
COCO train2017 by default; per image a Poisson(7.3) number of polygons of 8-40 vertices, so about
863k polygons at full size) and an empty file per image (the dataset checks that every image file
exists; only the throughput rows decode pixels). Each measure runs in its own subprocess (each
reports its peak RSS, ``peak_rss``; the timed ones their wall-clock ``seconds`` and their CPU
seconds ``cpu_seconds``, one thread, the steadier of the two on a shared machine):

- ``json_load``: a bare ``json.load`` of the file (the reference time), once before and once after
  the two start measures; the faster of the two is the reference (on a shared machine this is the
  conservative choice for the ratios);
- ``cold_start``: ``blendmask.engine.defaults.load_dataset(file, "train")`` with an empty cache: format check,
  image-directory search, validation, flat records, cache write; its time over ``json_load``, and
  the process's RSS after it minus the RSS after the imports;
- ``cached_start``: the same call again in a new process (the validated records read from the cache);
- ``worker_memory``: a ``torch.utils.data.DataLoader`` with 2 forked workers (and the loaders'
  ``worker_init_fn``, ``freeze_inherited_objects``, where the tree has one) reads every training
  target once (one epoch, images not decoded); then each worker's private memory (USS:
  Private_Clean + Private_Dirty) and Pss from ``/proc/<pid>/smaps_rollup``;
- ``throughput``: training samples per second through ``build_train_loader`` (flip, uint8 images)
  at 0, 1 and 2 workers, on ``--jpegs`` COCO-like 640x480 JPEGs with 7 polygons each; per worker =
  rate / max(1, workers).

``--baseline-tree DIR`` also runs ``cold_start`` and ``worker_memory`` against another source tree
(e.g. main before this change, through ``CocoInstanceDataset(ann_file, image_dir)``).
``--detectron2 DIR`` (a detectron2 source tree, run uncompiled; ``--deps DIR``: its pure-Python
dependencies, appended after site-packages) adds ``detectron2_load``: detectron2's
``load_coco_json(file, image_dir)`` (pycocotools ``COCO`` + its list of per-image dicts; no
validation beyond its asserts, no cache), its time over ``json_load`` and RSS above its imports.
``--skip starts`` leaves out ``cold_start`` and ``cached_start`` (e.g. to add the detectron2 row to
an earlier run's file, kept with ``--workdir``).
Writes ``<out>.json`` and ``<out>.png``. ``--merge A.json B.json ...`` measures nothing: it writes
``<out>.json`` and ``<out>.png`` from earlier results, a later file's measures replacing an earlier
one's (e.g. the starts of a second run over the worker rows of a first).

    python benchmarks/bench_data_scale.py --images 118287
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=118287, help="images in the generated file (default: COCO train2017)")
    p.add_argument("--jpegs", type=int, default=64, help="JPEGs for the throughput rows (default 64)")
    p.add_argument("--samples", type=int, default=96, help="samples timed per throughput row (default 96)")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--baseline-tree", type=Path, help="also measure this source tree's dataset")
    p.add_argument("--baseline-label", default="baseline tree")
    p.add_argument("--detectron2", type=Path, help="detectron2 source tree: also time its load_coco_json")
    p.add_argument("--deps", type=Path, help="directory with detectron2's pure-Python dependencies")
    p.add_argument("--skip", nargs="*", default=[], help="measures to leave out (e.g. throughput)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/data_scale", help="output prefix for .json and .png")
    p.add_argument("--merge", nargs="+", type=Path, help="write <out> from these result files, measuring nothing")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one measure, JSON args
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data generation
def write_coco_like(path: Path, n_images: int, *, seed: int, width: int = 640, height: int = 480,
                    per_image: float = 7.3, categories: int = 80) -> int:
    """A COCO-train-like instance file (module doc); returns the number of annotations."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(per_image, n_images)
    n = int(counts.sum())
    vertices = rng.integers(8, 41, n)
    centre = rng.uniform([0, 0], [width, height], (n, 2))
    radius = np.exp(rng.uniform(np.log(4), np.log(160), n))
    ends = np.cumsum(vertices)
    owner = np.repeat(np.arange(n), vertices)
    angle = np.sort(rng.uniform(0, 2 * np.pi, ends[-1]) + 2 * np.pi * owner) - 2 * np.pi * owner
    r = radius[owner] * rng.uniform(0.5, 1.0, ends[-1])
    xy = np.stack([centre[owner, 0] + r * np.cos(angle), centre[owner, 1] + r * np.sin(angle)], 1)
    xy = xy.clip([0, 0], [width, height]).round(2)
    starts = ends - vertices
    lo = np.minimum.reduceat(xy, starts)
    hi = np.maximum.reduceat(xy, starts)
    image_of = np.repeat(np.arange(1, n_images + 1), counts)
    category = rng.integers(1, categories + 1, n)
    polygons = np.split(xy.reshape(-1), 2 * ends[:-1])
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic, COCO train2017-sized"}, "images": ')
        json.dump([{"id": i, "file_name": f"{i:012d}.jpg", "width": width, "height": height}
                   for i in range(1, n_images + 1)], f)
        f.write(', "annotations": [')
        for k0 in range(0, n, 100000):
            chunk = [{"segmentation": [polygons[k].tolist()], "area": round(float(np.prod(hi[k] - lo[k])) * 0.6, 2),
                      "iscrowd": 0, "image_id": int(image_of[k]),
                      "bbox": [float(lo[k, 0]), float(lo[k, 1]), round(float(hi[k, 0] - lo[k, 0]), 2),
                               round(float(hi[k, 1] - lo[k, 1]), 2)],
                      "category_id": int(category[k]), "id": k + 1} for k in range(k0, min(n, k0 + 100000))]
            f.write(("," if k0 else "") + json.dumps(chunk)[1:-1])
        f.write('], "categories": ')
        json.dump([{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, categories + 1)], f)
        f.write("}")
    return n


def write_jpeg_set(root: Path, n_images: int, *, seed: int) -> Path:
    """``n_images`` COCO-like 640x480 JPEGs (smooth colour fields and shapes, quality 90) with 7
    polygon annotations each; returns the annotation file."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    images, anns = [], []
    for i in range(1, n_images + 1):
        base = rng.uniform(40, 200, 3)
        pixels = base + 40 * np.sin(xx[..., None] / rng.uniform(20, 80) + yy[..., None] / rng.uniform(20, 80))
        pixels += rng.normal(0, 6, pixels.shape)
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(7):
            k = int(rng.integers(8, 25))
            c, rad = rng.uniform([60, 60], [580, 420]), rng.uniform(15, 60)
            a = np.sort(rng.uniform(0, 2 * np.pi, k))
            xy = np.stack([c[0] + rad * np.cos(a), c[1] + rad * np.sin(a)], 1).round(2)
            draw.polygon([tuple(p) for p in xy], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            lo, hi = xy.min(0), xy.max(0)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 6)), "iscrowd": 0,
                         "segmentation": [xy.reshape(-1).tolist()], "area": float(np.prod(hi - lo)) * 0.6,
                         "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]})
        img.save(root / "images" / f"{i:06d}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480})
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]}))
    return path


# ----------------------------------------------------------------------------- measures (children)
def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _smaps(pid: int) -> Dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items() if v.strip().endswith("kB")}
    return {"uss": kb["Private_Clean"] + kb["Private_Dirty"], "pss": kb["Pss"], "rss": kb["Rss"]}


def _open_dataset(ann: str, image_dir: str, api: str):
    if api == "load_dataset":
        from blendmask.engine.defaults import load_dataset

        return load_dataset(ann, "train")
    from blendmask.data import CocoInstanceDataset  # a baseline tree: its own constructor

    return CocoInstanceDataset(ann, image_dir)


def detectron2_load(args: Dict[str, Any]) -> Dict[str, Any]:
    """detectron2's ``load_coco_json`` of the file (module doc)."""
    sys.path.insert(0, args["detectron2"])
    if args.get("deps"):
        sys.path.append(args["deps"])  # after site-packages: the environment's numpy, PIL, ... win
    import torch

    from detectron2.data.datasets.coco import load_coco_json

    torch.set_num_threads(1)
    before = _rss()
    start, cpu = time.perf_counter(), time.process_time()
    dicts = load_coco_json(args["ann"], args["image_dir"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_above_imports": _rss() - before, "images": len(dicts)}


def child(args: Dict[str, Any]) -> Dict[str, Any]:
    kind = args["kind"]
    if kind == "json_load":
        start, cpu = time.perf_counter(), time.process_time()
        with open(args["ann"], "r", encoding="utf-8") as f:
            json.load(f)
        return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    if kind == "detectron2_load":
        return detectron2_load(args)
    import torch  # noqa: F401  (imports counted before the baseline RSS)
    import blendmask.data  # noqa: F401
    if args.get("api") == "load_dataset":
        import blendmask.engine.defaults  # noqa: F401

    torch.set_num_threads(1)
    if kind == "start":
        before = _rss()
        start, cpu = time.perf_counter(), time.process_time()
        dataset = _open_dataset(args["ann"], args["image_dir"], args["api"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"seconds": seconds, "cpu_seconds": cpu, "rss_above_imports": _rss() - before, "images": len(dataset)}
    if kind == "worker_memory":
        dataset = _open_dataset(args["ann"], args["image_dir"], args["api"])
        targets = _TargetsOnly(dataset)
        from blendmask.data import loader as loaders  # the loaders' worker_init_fn, where the tree has one

        loader = torch.utils.data.DataLoader(targets, batch_size=64, num_workers=2, persistent_workers=True,
                                             collate_fn=lambda batch: len(batch), multiprocessing_context="fork",
                                             worker_init_fn=getattr(loaders, "freeze_inherited_objects", None))
        iterator = iter(loader)
        first = {w.pid: _smaps(w.pid) for w in iterator._workers}
        seen = sum(iterator)
        after = {w.pid: _smaps(w.pid) for w in iterator._workers}
        return {"samples": seen, "workers": [{"uss_start": first[p]["uss"], **after[p]} for p in after],
                "main_rss": _rss()}
    if kind == "throughput":
        from blendmask.data import CocoInstanceDataset, build_train_loader, resolve_split
        from blendmask.data.transforms import RandomHorizontalFlip

        dataset = CocoInstanceDataset(*resolve_split(args["ann"], "train"), transforms=RandomHorizontalFlip(0.5),
                                      uint8_images=True)
        loader = build_train_loader(dataset, batch_size=2, num_workers=args["workers"], seed=0)
        iterator = iter(loader)
        for _ in range(4):  # warm-up: workers started, first batches in flight
            next(iterator)
        start = time.perf_counter()
        for _ in range(args["samples"] // 2):
            next(iterator)
        rate = args["samples"] / (time.perf_counter() - start)
        return {"samples_per_s": rate, "per_worker": rate / max(1, args["workers"])}
    raise ValueError(kind)


class _TargetsOnly:
    """The training targets of a dataset, without decoding images."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.load_target(index)


def run_child(spec: Dict[str, Any], *, tree: Path | None = REPO, env: Dict[str, str] | None = None) -> Dict[str, Any]:
    environment = dict(os.environ, PYTHONPATH=str(tree or ""), OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          env=environment, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measure {spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    if args.child:
        import resource

        measured = child(json.loads(args.child))
        print(json.dumps({**measured, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "images": args.images,
        "command": "python benchmarks/bench_data_scale.py " + " ".join(argv)}
    try:
        ann = work / "coco" / "annotations" / "instances_train.json"
        image_dir = work / "coco" / "train"
        if not ann.exists():
            ann.parent.mkdir(parents=True, exist_ok=True)
            image_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            results["annotations"] = write_coco_like(ann, args.images, seed=args.seed)
            for i in range(1, args.images + 1):
                (image_dir / f"{i:012d}.jpg").touch()
            results["generate_seconds"] = time.perf_counter() - start
        results["file_mb"] = ann.stat().st_size / 2**20
        print(f"file: {ann} ({results['file_mb']:.0f} MB)", flush=True)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        env = {"BLENDMASK_CACHE": str(cache)}
        spec = {"ann": str(ann), "image_dir": str(image_dir), "api": "load_dataset"}
        rows = results["measures"] = {}
        loads = [run_child({"kind": "json_load", "ann": str(ann)})]
        print("json.load", loads[0], flush=True)
        starts = [] if "starts" in args.skip else ["cold_start", "cached_start"]
        for name in starts:
            rows[name] = run_child({**spec, "kind": "start"}, env=env)
        if args.detectron2:
            starts.append("detectron2_load")
            rows["detectron2_load"] = run_child({**spec, "kind": "detectron2_load", "detectron2": str(args.detectron2),
                                                 "deps": str(args.deps) if args.deps else None}, tree=None)
        loads.append(run_child({"kind": "json_load", "ann": str(ann)}))
        print("json.load again", loads[1], flush=True)
        rows["json_load"] = {"seconds": min(r["seconds"] for r in loads), "runs": [r["seconds"] for r in loads],
                             "cpu_seconds": min(r["cpu_seconds"] for r in loads),
                             "cpu_runs": [r["cpu_seconds"] for r in loads]}
        for name in starts:
            rows[name]["over_json_load"] = rows[name]["seconds"] / rows["json_load"]["seconds"]
            rows[name]["cpu_over_json_load"] = rows[name]["cpu_seconds"] / rows["json_load"]["cpu_seconds"]
            print(name, rows[name], flush=True)
        if "worker_memory" not in args.skip:
            rows["worker_memory"] = run_child({**spec, "kind": "worker_memory"}, env=env)
            print("worker_memory", rows["worker_memory"], flush=True)
        if args.baseline_tree:
            base = {**spec, "api": "constructor"}
            rows["baseline_start"] = run_child({**base, "kind": "start"}, tree=args.baseline_tree)
            rows["baseline_start"]["over_json_load"] = rows["baseline_start"]["seconds"] / rows["json_load"]["seconds"]
            print("baseline_start", rows["baseline_start"], flush=True)
            if "worker_memory" not in args.skip:
                rows["baseline_worker_memory"] = run_child({**base, "kind": "worker_memory"}, tree=args.baseline_tree)
                print("baseline_worker_memory", rows["baseline_worker_memory"], flush=True)
            results["baseline_label"] = args.baseline_label
        if "throughput" not in args.skip:
            jpeg_ann = work / "jpegs" / "ann.json"
            if not jpeg_ann.exists():
                jpeg_ann = write_jpeg_set(work / "jpegs", args.jpegs, seed=args.seed)
            rows["throughput"] = {str(w): run_child({"kind": "throughput", "ann": str(jpeg_ann), "workers": w,
                                                     "samples": args.samples}, env=env) for w in (0, 1, 2)}
            print("throughput", rows["throughput"], flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def merge(files: List[Path], out: Path) -> int:
    """``<out>.json`` and ``.png`` from result ``files``, later files' measures replacing earlier ones'."""
    runs = [json.loads(f.read_text()) for f in files]
    merged = {**runs[-1], "measures": {}, "merged_from": [
        {"file": str(f), "date": r["date"], "command": r["command"], "measures": sorted(r["measures"])}
        for f, r in zip(files, runs)]}
    for r in runs:
        merged["measures"].update(r["measures"])
    merged["date"] = " + ".join(r["date"] for r in runs)
    out.with_suffix(".json").write_text(json.dumps(merged, indent=2))
    plot(merged, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["measures"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = [n for n in ("cold_start", "cached_start", "baseline_start", "detectron2_load") if n in rows]
    labels = {"cold_start": "first start", "cached_start": "with cache",
              "baseline_start": results.get("baseline_label", "baseline"), "detectron2_load": "detectron2\nload_coco_json"}
    x = np.arange(len(names))
    axes[0].bar(x - 0.2, [rows[n]["over_json_load"] for n in names], 0.4, color="#4477aa", label="wall-clock")
    if all("cpu_over_json_load" in rows[n] for n in names):
        axes[0].bar(x + 0.2, [rows[n]["cpu_over_json_load"] for n in names], 0.4, color="#88ccee", label="CPU")
    axes[0].set_xticks(x, [labels[n] for n in names])
    axes[0].legend()
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("time / bare json.load")
    axes[0].set_title(f"dataset start ({results['images']} images)")
    mem = [(n, rows[n]) for n in ("worker_memory", "baseline_worker_memory") if n in rows]
    if mem:
        xs = [f"{'this tree' if n == 'worker_memory' else results.get('baseline_label')} w{i}"
              for n, r in mem for i in range(len(r["workers"]))]
        axes[1].bar(xs, [w["uss"] / 2**20 for _, r in mem for w in r["workers"]], color="#cc6677")
        axes[1].set_ylabel("worker private memory after an epoch (MiB)")
        axes[1].tick_params(axis="x", rotation=20)
    axes[1].set_title("forked loader workers")
    if "throughput" in rows:
        ws = sorted(rows["throughput"], key=int)
        axes[2].bar([f"{w} workers" for w in ws], [rows["throughput"][w]["samples_per_s"] for w in ws], color="#117733")
        axes[2].set_ylabel("training samples / s (640x480 JPEG)")
    axes[2].set_title("loader throughput")
    fig.suptitle(f"{results['date']}, {results['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
