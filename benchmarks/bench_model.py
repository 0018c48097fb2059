"""CPU inference latency of BlendMask R-50-FPN against torchvision's Mask R-CNN R-50-FPN.

Both models have random weights, see the same random image at the same input size (both
resize it to ``--size``) and run with the same thread count in one process; every repeat runs
every (detection count, model) pair once, so the variants are interleaved. The number of detections is forced to each of
``--detections`` in both models:

- BlendMask: ``score_thresh = -1`` (every candidate passes), ``post_nms_topk = D``; the box
  regression bias is set to 2 strides so that random boxes are not empty (an empty box would
  skip the mask pasting and flatter BlendMask);
- Mask R-CNN: ``roi_heads.score_thresh = -1``, ``roi_heads.detections_per_img = D``.

NMS thresholds keep their defaults (0.6 and 0.5). The paper's claim (section 4.3) is that
BlendMask's time stays flat as D grows while Mask R-CNN's grows with its per-RoI mask head.
Latencies are reported as the fastest and the median run; ratios and the plot use the fastest
runs, the ones least disturbed by other load on a shared machine. Writes ``<out>.json`` and
``<out>.png`` and prints the latency and ratio table.

    python benchmarks/bench_model.py --size 320 --threads 1 --repeats 10
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from tqdm import tqdm

from blendmask import _extension
from blendmask.models import blendmask_resnet50_fpn


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512, help="input image side, both models resize to it (default 512)")
    p.add_argument("--detections", type=int, nargs="+", default=[1, 10, 50, 100], help="forced detection counts")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both models")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per model and count (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model and count (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/model_cpu", help="output prefix for .json and .png")
    return p.parse_args(argv)


def build_blendmask(size: int) -> torch.nn.Module:
    model = blendmask_resnet50_fpn(num_classes=80, **{"input.min_size_test": size, "input.max_size_test": size})
    with torch.no_grad():
        model.proposal_generator.fcos_head.bbox_pred.bias.fill_(2.0)
    model.proposal_generator.score_thresh = -1.0
    return model.eval()


def build_maskrcnn(size: int) -> torch.nn.Module:
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size)
    model.roi_heads.score_thresh = -1.0
    return model.eval()


def set_detections(blendmask: torch.nn.Module, maskrcnn: torch.nn.Module, count: int) -> None:
    blendmask.proposal_generator.post_nms_topk = count
    maskrcnn.roi_heads.detections_per_img = count


def summarize(samples: List[float]) -> Dict[str, object]:
    return {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3,
            "samples_ms": [s * 1e3 for s in samples]}


def time_interleaved(blendmask, maskrcnn, image, detections: List[int], warmup: int, repeats: int):
    """Median-friendly samples: every repeat runs every (count, model) pair once, so that slow
    phases of a shared machine hit all variants alike. Returns samples and detection counts."""
    models = {"blendmask": blendmask, "maskrcnn": maskrcnn}
    samples = {(d, name): [] for d in detections for name in models}
    counts = {}
    for rep in tqdm(range(warmup + repeats), desc="runs"):
        for d in detections:
            set_detections(blendmask, maskrcnn, d)
            for name, model in models.items():
                start = time.perf_counter()
                out = model([image])
                elapsed = time.perf_counter() - start
                counts[(d, name)] = len(out[0]["boxes"])
                if rep >= warmup:
                    samples[(d, name)].append(elapsed)
    return samples, counts


def plot(results: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("blendmask", "BlendMask R-50-FPN"), ("maskrcnn", "Mask R-CNN R-50-FPN (torchvision)")):
        ds = [r["detections"] for r in results["rows"]]
        ms = [r[name]["min_ms"] for r in results["rows"]]
        ax.plot(ds, ms, marker="o", label=label)
    ax.set_xlabel("detections per image")
    ax.set_ylabel("latency, fastest run (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"CPU inference, {results['size']}x{results['size']}, {results['threads']} threads")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    blendmask, maskrcnn = build_blendmask(args.size), build_maskrcnn(args.size)
    image = torch.rand(3, args.size, args.size)
    with torch.inference_mode():
        samples, counts = time_interleaved(blendmask, maskrcnn, image, args.detections, args.warmup, args.repeats)
    wrong = {key: n for key, n in counts.items() if n != key[0]}
    if wrong:
        raise RuntimeError(f"could not force the detection counts, got (count, model) -> n: {wrong}")
    rows = [{"detections": d, "blendmask": summarize(samples[(d, "blendmask")]),
             "maskrcnn": summarize(samples[(d, "maskrcnn")])} for d in args.detections]
    base = rows[0]
    for row in rows:  # ratios of the fastest runs: the least disturbed by other load on a shared machine
        row["blendmask_growth"] = row["blendmask"]["min_ms"] / base["blendmask"]["min_ms"]
        row["maskrcnn_growth"] = row["maskrcnn"]["min_ms"] / base["maskrcnn"]["min_ms"]
        row["maskrcnn_over_blendmask"] = row["maskrcnn"]["min_ms"] / row["blendmask"]["min_ms"]
    results = {
        "size": args.size, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        "fused_blender": _extension.has_kernel("cpu"), "torch": torch.__version__,
        "platform": platform.platform(), "processor": platform.processor(), "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))

    print(f"CPU, {args.size}x{args.size}, {args.threads} threads, {args.repeats} interleaved runs; "
          f"min (median) ms, ratios of the minima (fused blender: {results['fused_blender']})")
    d0 = base["detections"]
    print(f"{'D':>4} | {'BlendMask ms':>16} | {'Mask R-CNN ms':>16} | {'MRCNN/BM':>8} | {f'BM vs D={d0}':>9} | {f'MRCNN vs D={d0}':>12}")
    for row in rows:
        bm, mr = row["blendmask"], row["maskrcnn"]
        print(f"{row['detections']:>4} | {bm['min_ms']:>7.1f} ({bm['median_ms']:>6.1f}) | {mr['min_ms']:>7.1f} ({mr['median_ms']:>6.1f}) | "
              f"{row['maskrcnn_over_blendmask']:>8.2f} | {row['blendmask_growth']:>9.2f} | {row['maskrcnn_growth']:>12.2f}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
