"""Peak memory (RSS) of ``blendmask eval`` on one large image with a forced number of detections.

Builds, in a scratch directory, a one-image COCO data set (``--size`` x ``--size``, one polygon
annotation) and a weights file of the lite model with random weights whose embedded config forces
detections: ``model.fcos.inference_th = 0`` (every candidate passes) and
``model.fcos.post_nms_topk = D``, with the box regression bias set so that the random boxes are
not empty. For every ``D`` of ``--detections`` it runs ``python -m blendmask eval`` in its own
subprocess and reads that child's peak RSS (``ru_maxrss`` from ``os.wait4``), and checks from the
results JSON that ``D`` detections were evaluated. Writes ``<out>.json`` and ``<out>.png``.

    python benchmarks/bench_eval_memory.py --size 6000 --detections 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from blendmask.config import get_config
from blendmask.models import build_model


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=6000, help="image side in pixels (default 6000)")
    p.add_argument("--detections", type=int, nargs="+", default=[100], help="forced detection counts (default 100)")
    p.add_argument("--config", default="lite_mobilenet_v2", help="model config (default lite_mobilenet_v2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the eval subprocess (default 1)")
    p.add_argument("--limit-gb", type=float, default=2.0, help="the peak RSS goal drawn on the plot (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/eval_memory", help="output prefix for .json and .png")
    return p.parse_args(argv)


def write_dataset(root: Path, size: int) -> Path:
    """``root/annotations/instances_val.json`` + ``root/val/big.png``: a smooth image (compresses
    well) and one square polygon instance in its middle."""
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.broadcast_to(ramp[None, :], (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
                       np.full((size, size), 128, np.float32)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(root / "val" / "big.png", compress_level=1)
    a, b = size * 0.25, size * 0.75
    coco = {
        "images": [{"id": 1, "file_name": "big.png", "height": size, "width": size}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": (b - a) ** 2,
                         "bbox": [a, a, b - a, b - a], "segmentation": [[a, a, b, a, b, b, a, b]]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    return root


def write_weights(path: Path, config: str, detections: int, seed: int) -> Path:
    """A weights file of ``config`` with random weights that detects exactly ``detections`` boxes."""
    torch.manual_seed(seed)
    cfg = get_config(config, {"model.num_classes": 1, "model.fcos.inference_th": 0.0,
                              "model.fcos.post_nms_topk": detections, "model.fcos.nms_th": 1.0})
    model = build_model(cfg, weights_backbone=None)
    with torch.no_grad():
        model.proposal_generator.fcos_head.bbox_pred.bias.fill_(2.0)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


def run_eval(weights: Path, data: Path, output: Path, threads: int) -> Dict[str, float]:
    """Run ``blendmask eval`` in a subprocess; its peak RSS, wall time and detection count."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "blendmask", "eval", "--weights", str(weights), "--data", str(data),
                             "--output", str(output)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"blendmask eval failed ({proc.returncode}):\n{stdout.decode(errors='replace')[-3000:]}")
    results = json.loads((output / "coco_instances_results.json").read_text())
    return {"peak_rss_mb": usage.ru_maxrss / 1024.0, "seconds": seconds, "evaluated_detections": len(results)}


def plot(rows: List[Dict[str, float]], size: int, limit_gb: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["detections"] for r in rows], [r["peak_rss_mb"] / 1024 for r in rows], "o-", label="blendmask eval")
    ax.axhline(limit_gb, color="red", linestyle="--", label=f"goal {limit_gb:g} GB")
    ax.set_xlabel("detections")
    ax.set_ylabel("peak RSS (GB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"eval peak memory, one {size}x{size} image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_memory_") as tmp:
        data = write_dataset(Path(tmp) / "data", args.size)
        for d in args.detections:
            weights = write_weights(Path(tmp) / f"weights_{d}.pth", args.config, d, args.seed)
            row = {"detections": d, **run_eval(weights, data, Path(tmp) / f"eval_{d}", args.threads)}
            if row["evaluated_detections"] != d:
                raise RuntimeError(f"asked for {d} detections, the model produced {row['evaluated_detections']}")
            print(f"D={d:4d}  peak RSS {row['peak_rss_mb']:8.1f} MB  ({row['seconds']:.1f} s)", flush=True)
            rows.append(row)
    report = {"size": args.size, "config": args.config, "threads": args.threads, "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.machine(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(rows, args.size, args.limit_gb, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
