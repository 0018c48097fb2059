"""Tiled prediction benchmark: accuracy on large images, the merge against SAHI's, memory and time.

Everything is built from the synthetic shapes set (``blendmask make-shapes``) and a trained lite
model whose test size is the shapes' image size (``--weights``):

- **ap**: mosaics of ``g x g`` val images (``--grids``, default 4 and 6: images 4-6x the test
  size), their COCO ground truth composed from the val annotations. Mask and box AP of the model
  on the same val images at native size, on the mosaics whole (shrunk to the test size, as
  ``blendmask eval`` does without ``--tile``) and on the mosaics in tiles (``--tile auto``);
  COCOeval's maxDets is raised to 300 for both mosaic runs.
- **merge**: the merge alone, fed perfect tile predictions: every ground-truth mask of a mosaic cut
  by every tile window. Ours (:func:`blendmask.tiling.merge_pieces`, masks' IoS) against SAHI's
  greedy NMM (``batched_greedy_nmm``, class-aware, IOS 0.5, the boxes of the pieces, as
  ``get_sliced_prediction`` runs it), counted as ground-truth objects recovered whole and wrong
  merges of distinct objects.
- **scaling**: canvases of ``--sizes`` pixels holding one val image per 400-pixel cell (a TIFF),
  each predicted by ``blendmask predict --tile auto`` in a child process: its peak RSS (the
  child's own ``VmHWM``; a ``wait4`` figure would include the parent's memory, which Linux
  carries into a child's maximum across ``fork`` and ``exec``), the prediction time and the
  merge's share of it; the peak RSS is extrapolated linearly in pixels to 20,000 x 20,000.

Writes ``tiled.json`` (parts run earlier and not run now are kept) and ``tiled.png`` to ``--out``
(default ``benchmarks/results``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_tiled.py --weights run/model_final.pth --data shapes
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

CELL = 400  # canvas cell holding one val image (scaling part)
TARGET_SIDE = 20_000


def _rle_bytes(rle):
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]}


def build_mosaics(data: Path, out: Path, grid: int, count: int) -> Dict[str, Any]:
    """``count`` mosaics of ``grid x grid`` consecutive val images, their COCO JSON, and the JSON
    of the same val images alone; returns the paths."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from blendmask.models.mask_ops import encode_region_rle

    val = json.loads((data / "annotations" / "instances_val.json").read_text())
    images = sorted(val["images"], key=lambda r: r["id"])
    per_image: Dict[int, List[Dict[str, Any]]] = {}
    for ann in val["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    side = images[0]["width"]
    need = grid * grid * count
    if len(images) < need:
        raise SystemExit(f"--data has {len(images)} val images, {need} are needed for {count} mosaics of {grid}x{grid}")
    folder = out / f"mosaic{grid}"
    folder.mkdir(parents=True, exist_ok=True)
    mosaic_images, mosaic_anns, used = [], [], []
    for m in range(count):
        canvas = np.zeros((grid * side, grid * side, 3), dtype=np.uint8)
        for k in range(grid * grid):
            record = images[m * grid * grid + k]
            used.append(record)
            y0, x0 = (k // grid) * side, (k % grid) * side
            canvas[y0:y0 + side, x0:x0 + side] = np.asarray(Image.open(data / "val" / record["file_name"]).convert("RGB"))
            for ann in per_image.get(record["id"], []):
                mask = mask_utils.decode(_rle_bytes(ann["segmentation"])).astype(bool)
                rle = encode_region_rle(mask, y0, x0, grid * side, grid * side)
                x, y, w, h = ann["bbox"]
                mosaic_anns.append({"id": len(mosaic_anns) + 1, "image_id": m + 1, "category_id": ann["category_id"],
                                    "segmentation": rle, "area": ann["area"], "bbox": [x + x0, y + y0, w, h],
                                    "iscrowd": 0})
        name = f"mosaic{grid}_{m:02d}.png"
        Image.fromarray(canvas).save(folder / name)
        mosaic_images.append({"id": m + 1, "file_name": name, "width": grid * side, "height": grid * side})
    mosaic_json = out / f"mosaic{grid}.json"
    mosaic_json.write_text(json.dumps({"images": mosaic_images, "annotations": mosaic_anns,
                                       "categories": val["categories"]}))
    ids = {r["id"] for r in used}
    native_json = out / f"native{grid}.json"
    native_json.write_text(json.dumps({"images": used, "categories": val["categories"],
                                       "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}))
    return {"mosaic_json": mosaic_json, "mosaic_dir": folder, "native_json": native_json,
            "native_dir": data / "val", "objects": len(mosaic_anns), "side": grid * side}


def part_ap(weights: str, data: Path, work: Path, grids: List[int], count: int) -> Dict[str, Any]:
    from blendmask.data import CocoInstanceDataset
    from blendmask.engine import load_model_from_weights
    from blendmask.evaluation import evaluate_model, evaluate_tiled

    model, cfg = load_model_from_weights(weights)
    rows = []
    for grid in grids:
        built = build_mosaics(data, work, grid, count)
        native = CocoInstanceDataset(built["native_json"], built["native_dir"])
        mosaic = CocoInstanceDataset(built["mosaic_json"], built["mosaic_dir"])
        start = time.perf_counter()
        m_native = evaluate_model(model, native, progress=False)
        m_whole = evaluate_model(model, mosaic, progress=False, max_dets=300)
        t0 = time.perf_counter()
        m_tiled = evaluate_tiled(model, mosaic, tile="auto", overlap=0.2, max_dets=300, progress=False)
        row = {"grid": grid, "mosaics": count, "side": built["side"], "objects": built["objects"],
               "test_size": cfg.input.min_size_test, "tiled_seconds": time.perf_counter() - t0,
               "seconds": time.perf_counter() - start}
        for name, metrics in (("native", m_native), ("whole", m_whole), ("tiled", m_tiled)):
            row[f"{name}_mask_AP"], row[f"{name}_box_AP"] = metrics["segm"]["AP"], metrics["bbox"]["AP"]
        row["tiled_over_native"] = row["tiled_mask_AP"] / row["native_mask_AP"]
        row["tiled_over_whole"] = row["tiled_mask_AP"] / max(row["whole_mask_AP"], 1e-9)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": rows}


def part_merge(data: Path, work: Path, grid: int, count: int, tile: int, overlap: float) -> Dict[str, Any]:
    """Perfect pieces: every ground-truth mask of each mosaic cut by every window."""
    from pycocotools import mask as mask_utils
    from sahi.postprocess.combine import batched_greedy_nmm

    from blendmask.tiling import Pieces, merge_pieces, tile_windows

    built = build_mosaics(data, work, grid, count)
    coco = json.loads(built["mosaic_json"].read_text())
    totals = {"objects": 0, "pieces": 0, "ours_instances": 0, "ours_whole": 0, "ours_wrong_merges": 0,
              "sahi_instances": 0, "sahi_whole": 0, "sahi_wrong_merges": 0, "merge_seconds_ours": 0.0,
              "merge_seconds_sahi": 0.0}
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        side = image["width"]
        masks = [mask_utils.decode(_rle_bytes(a["segmentation"])).astype(bool) for a in anns]
        pieces, owner = Pieces(), []
        for t, (y0, x0, y1, x1) in enumerate(tile_windows(side, side, tile=tile, overlap=overlap)):
            for k, (a, mask) in enumerate(zip(anns, masks)):
                part = mask[y0:y1, x0:x1]
                rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
                if rows.size == 0:
                    continue
                pieces.crops.append(part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy())
                pieces.origins.append((x0 + int(cols[0]), y0 + int(rows[0])))
                pieces.boxes.append(np.array([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1], float))
                pieces.scores.append(0.9 - 0.001 * k)
                pieces.labels.append(a["category_id"])
                pieces.tiles.append(t)
                owner.append(k)
        owner = np.asarray(owner)
        t0 = time.perf_counter()
        ours = merge_pieces(pieces, threshold=0.3, cell=tile)
        totals["merge_seconds_ours"] += time.perf_counter() - t0
        groups_ours = [sorted(i.pieces) for i in ours]
        table = np.concatenate([np.stack(pieces.boxes), np.asarray(pieces.scores)[:, None],
                                np.asarray(pieces.labels, float)[:, None]], axis=1)
        t0 = time.perf_counter()
        keep = batched_greedy_nmm(table, match_metric="IOS", match_threshold=0.5)
        totals["merge_seconds_sahi"] += time.perf_counter() - t0
        groups_sahi = [sorted([int(k)] + [int(j) for j in merged]) for k, merged in keep.items()]
        for name, groups in (("ours", groups_ours), ("sahi", groups_sahi)):
            totals[f"{name}_instances"] += len(groups)
            totals[f"{name}_wrong_merges"] += sum(len(set(owner[g].tolist())) > 1 for g in groups)
            all_pieces = {k: set(np.flatnonzero(owner == k).tolist()) for k in range(len(anns))}
            totals[f"{name}_whole"] += sum(set(g) == all_pieces[int(owner[g[0]])] for g in groups)
        totals["objects"] += len(anns)
        totals["pieces"] += len(pieces)
    print(json.dumps(totals), flush=True)
    return {"grid": grid, "mosaics": count, "tile": tile, "overlap": overlap, **totals}


def build_canvas(data: Path, path: Path, side: int) -> int:
    """A ``side x side`` TIFF with one val image per CELL-pixel cell; returns the objects placed."""
    import tifffile
    from PIL import Image

    val = json.loads((data / "annotations" / "instances_val.json").read_text())
    images = sorted(val["images"], key=lambda r: r["id"])
    counts: Dict[int, int] = {}
    for ann in val["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    sub = images[0]["width"]
    objects, k = 0, 0
    for y0 in range(0, side - sub + 1, CELL):
        for x0 in range(0, side - sub + 1, CELL):
            record = images[k % len(images)]
            canvas[y0:y0 + sub, x0:x0 + sub] = np.asarray(Image.open(data / "val" / record["file_name"]).convert("RGB"))
            objects += counts.get(record["id"], 0)
            k += 1
    tifffile.imwrite(path, canvas, photometric="rgb")
    return objects


def child_predict(weights: str, image: str, out: str) -> None:
    """``blendmask predict --tile auto`` with the model calls and the merge timed (child process)."""
    import blendmask.tiling.sliced as sliced
    from blendmask.cli import main
    from blendmask.predict import Predictor

    timers = {"merge": 0.0, "model": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - t0
        return wrapper

    sliced.merge_pieces = timed("merge", sliced.merge_pieces)
    Predictor.predict_batch = timed("model", Predictor.predict_batch)
    t0 = time.perf_counter()
    code = main(["predict", image, "--weights", weights, "--out", out, "--tile", "auto",
                 "--max-image-pixels", str(TARGET_SIDE * TARGET_SIDE)])
    total = time.perf_counter() - t0
    record = json.loads((Path(out) / "predictions.json").read_text())["images"][0]
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1])
    print("RESULT " + json.dumps({"code": code, "seconds": total, "peak_rss_mb": peak_kb / 1024, "merge_seconds": timers["merge"],
                                  "model_seconds": timers["model"], "tiles": record["tiles"],
                                  "instances": len(record["instances"])}), flush=True)


def part_scaling(weights: str, data: Path, work: Path, sizes: List[int]) -> Dict[str, Any]:
    rows = []
    for side in sizes:
        image = work / f"canvas{side}.tif"
        objects = build_canvas(data, image, side)
        out = work / f"pred{side}"
        proc = subprocess.run([sys.executable, __file__, "--child-predict", weights, str(image), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
        result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
        row = {"side": side, "pixels": side * side, "objects": objects, **result}
        row["merge_share"] = row["merge_seconds"] / row["seconds"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    pixels = np.array([r["pixels"] for r in rows], float)
    rss = np.array([r["peak_rss_mb"] for r in rows], float)
    slope, intercept = np.polyfit(pixels, rss, 1) if len(rows) > 1 else (0.0, rss[0])
    return {"rows": rows, "rss_fit_mb": {"intercept": float(intercept), "per_megapixel": float(slope * 1e6)},
            "extrapolated_peak_rss_mb_at_20000": float(intercept + slope * TARGET_SIDE ** 2)}


def plot(results: Dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    if "ap" in results:
        rows = results["ap"]["rows"]
        x = np.arange(len(rows))
        for k, name in enumerate(("native", "whole", "tiled")):
            axes[0].bar(x + (k - 1) * 0.27, [r[f"{name}_mask_AP"] for r in rows], 0.27, label=name)
        axes[0].set_xticks(x, [f"{r['side']} px ({r['grid']}x{r['grid']})" for r in rows])
        axes[0].set_ylabel("mask AP")
        axes[0].set_title("mosaics of val images")
        axes[0].legend()
    if "scaling" in results:
        rows = results["scaling"]["rows"]
        tiles = [r["tiles"] for r in rows]
        axes[1].plot(tiles, [r["seconds"] for r in rows], "o-", label="predict --tile (total)")
        axes[1].plot(tiles, [r["merge_seconds"] for r in rows], "s-", label="merge")
        axes[1].set_xlabel("tiles")
        axes[1].set_ylabel("seconds")
        axes[1].legend()
        axes[1].set_title("time against tiles")
        mp = [r["pixels"] / 1e6 for r in rows]
        axes[2].plot(mp, [r["peak_rss_mb"] for r in rows], "o", label="measured")
        fit = results["scaling"]["rss_fit_mb"]
        xs = np.array([0, TARGET_SIDE ** 2 / 1e6])
        axes[2].plot(xs, fit["intercept"] + fit["per_megapixel"] * xs, "--", label="linear fit")
        axes[2].axhline(3072, color="red", lw=0.8, label="goal 3 GB")
        axes[2].set_xlabel("megapixels")
        axes[2].set_ylabel("peak RSS (MB)")
        axes[2].legend()
        axes[2].set_title("peak RSS of predict --tile")
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-predict":
        child_predict(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, type=Path, help="a make-shapes directory")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/tiled_work)")
    parser.add_argument("--parts", default="ap,merge,scaling")
    parser.add_argument("--grids", default="4,6")
    parser.add_argument("--mosaics", type=int, default=2, help="mosaics per grid")
    parser.add_argument("--sizes", default="1200,2000,2800")
    args = parser.parse_args()
    work = args.work or args.out / "tiled_work"
    work.mkdir(parents=True, exist_ok=True)
    import torch

    previous = args.out / "tiled.json"
    results: Dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
    run = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
                      f"torch threads {torch.get_num_threads()}", "weights": str(args.weights),
           "command": " ".join(["python"] + sys.argv)}
    parts = args.parts.split(",")
    results.setdefault("runs", {}).update({part: run for part in parts})
    if "ap" in parts:
        results["ap"] = part_ap(args.weights, args.data, work, [int(g) for g in args.grids.split(",")], args.mosaics)
    if "merge" in parts:
        results["merge"] = part_merge(args.data, work, 6, args.mosaics, 256, 0.2)
    if "scaling" in parts:
        results["scaling"] = part_scaling(args.weights, args.data, work, [int(s) for s in args.sizes.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiled.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "tiled.png")
    print(f"wrote {args.out / 'tiled.json'} and {args.out / 'tiled.png'}")


if __name__ == "__main__":
    main()
