"""The Winograd F(4x4, 3x3) op against oneDNN's direct convolution on the 3x3 convolutions of an
R_50 BlendMask at 800 x 1067 (blendmask.models.winograd): time and rounding error per shape.

Both sides take a channels_last float32 input (the inference path's layout); the direct side is
``F.conv2d`` with channels_last weights. Times are medians of ``torch.utils.benchmark`` blocks
(``--min-time`` seconds per side); the error is the largest absolute difference from the float64
convolution divided by the output's largest magnitude. Writes ``<out>.json`` and ``<out>.png``.

    OMP_NUM_THREADS=1 python benchmarks/bench_winograd.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from blendmask.models.winograd import transform_weight, winograd_conv3x3

# (name, C, O, H, W): the R_50 convolutions at 800 x 1067 (strides 4..32)
SHAPES = [
    ("res2 3x3 (64, s4)", 64, 64, 200, 267),
    ("res3 3x3 (128, s8)", 128, 128, 100, 134),
    ("res4 3x3 (256, s16)", 256, 256, 50, 67),
    ("res5 3x3 (512, s32)", 512, 512, 25, 34),
    ("FPN output / FCOS tower, P3", 256, 256, 100, 134),
    ("FCOS tower, P4", 256, 256, 50, 67),
    ("FCOS tower, P5", 256, 256, 25, 34),
    ("basis refine, P3 (256 -> 128)", 256, 128, 100, 134),
    ("FCOS cls_logits, P3 (80 classes)", 256, 80, 100, 134),
]


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per side and shape")
    p.add_argument("--out", default="benchmarks/results/winograd_cpu")
    return p.parse_args(argv)


def _median_ms(fn, min_time: float, threads: int) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return 1000 * timer.blocked_autorange(min_run_time=min_time).median


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with torch.no_grad():
        for name, c, o, h, w in SHAPES:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
            weight = (torch.randn(o, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5).contiguous(
                memory_format=torch.channels_last)
            bias = torch.randn(o, generator=g)
            u = transform_weight(weight)
            ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
            scale = float(ref.abs().max())
            direct_err = float((F.conv2d(x, weight, bias, padding=1).double() - ref).abs().max()) / scale
            wino_err = float((winograd_conv3x3(x, u, bias).double() - ref).abs().max()) / scale
            direct_ms = _median_ms(lambda: F.conv2d(x, weight, bias, padding=1), args.min_time, args.threads)
            wino_ms = _median_ms(lambda: winograd_conv3x3(x, u, bias), args.min_time, args.threads)
            rows.append({"name": name, "shape": [c, o, h, w], "direct_ms": direct_ms, "winograd_ms": wino_ms,
                         "speedup": direct_ms / wino_ms, "direct_rel_error": direct_err, "winograd_rel_error": wino_err})
            print(f"{name:<34} direct {direct_ms:7.2f} ms  winograd {wino_ms:7.2f} ms  {direct_ms / wino_ms:4.2f}x  "
                  f"error {wino_err:.1e} (direct {direct_err:.1e})")
    result = {"threads": args.threads, "load_average": os.getloadavg(), "rows": rows}
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} thread(s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    _plot(rows, out.with_suffix(".png"), args.threads)
    return 0


def _plot(rows, path: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    names = [r["name"] for r in rows]
    ax.barh(names, [r["speedup"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("oneDNN direct / Winograd F(4x4, 3x3) time")
    ax.set_title(f"3x3 convolutions of R_50 at 800x1067, {threads} CPU thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
