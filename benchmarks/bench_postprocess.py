"""Time of the postprocess + paste stage: :func:`blendmask.models.blendmask.postprocess_detections`
on ``D`` detections (random ``R x R`` mask probabilities, random boxes of 2 % to 60 % of the image
side), into images of ``--sizes``, for each mask format the code has (``probs``: ``(n, 1, H, W)``
float masks; ``rle``: COCO RLEs, what ``blendmask eval`` and ``predict`` use).

The detections are in an image already of the output size (``image_size == original_size``), so
the box rescale is the identity and the paste dominates, as in the model's eval path. Reports the
fastest and the median of ``--repeats`` runs; writes ``<out>.json`` and ``<out>.png``.

    python benchmarks/bench_postprocess.py --threads 1 --detections 100 --sizes 512x683 800x1067
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from blendmask.models.blendmask import postprocess_detections


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["512x683", "800x1067"], help="image sizes HxW")
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--resolution", type=int, default=56, help="R of the masks (default 56, the R_50 presets')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/postprocess_cpu", help="output prefix for .json and .png")
    return p.parse_args(argv)


def random_detections(n: int, size: Tuple[int, int], resolution: int, seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    side = torch.rand(n, 2, generator=g) * 0.58 + 0.02
    wh = side * torch.tensor([w, h], dtype=torch.float32)
    x0y0 = torch.rand(n, 2, generator=g) * (torch.tensor([w, h], dtype=torch.float32) - wh)
    return {"boxes": torch.cat([x0y0, x0y0 + wh], dim=1), "scores": torch.rand(n, generator=g),
            "labels": torch.randint(0, 80, (n,), generator=g), "masks": torch.rand(n, resolution, resolution, generator=g)}


def mask_formats() -> List[str]:
    return ["probs", "rle"] if "mask_format" in inspect.signature(postprocess_detections).parameters else ["probs"]


def time_once(det: Dict[str, torch.Tensor], size: Tuple[int, int], fmt: str) -> float:
    kwargs = {} if fmt == "probs" and mask_formats() == ["probs"] else {"mask_format": fmt}
    start = time.perf_counter()
    postprocess_detections(det["boxes"], det["scores"], det["labels"], det["masks"], image_size=size,
                           original_size=size, **kwargs)
    return (time.perf_counter() - start) * 1e3


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = sorted({r["size"] for r in rows}, key=lambda s: int(s.split("x")[0]))
    formats = sorted({r["mask_format"] for r in rows})
    width = 0.8 / len(formats)
    for k, fmt in enumerate(formats):
        values = [next(r["median_ms"] for r in rows if r["size"] == s and r["mask_format"] == fmt) for s in labels]
        ax.bar([i + k * width for i in range(len(labels))], values, width, label=fmt)
    ax.set_xticks([i + width * (len(formats) - 1) / 2 for i in range(len(labels))], labels)
    ax.set_ylabel("median ms")
    ax.set_title(f"postprocess + paste, {rows[0]['detections']} detections")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for text in args.sizes:
        size = tuple(int(v) for v in text.lower().split("x"))
        det = random_detections(args.detections, size, args.resolution, args.seed)
        for fmt in mask_formats():
            time_once(det, size, fmt)  # warm-up
            runs = [time_once(det, size, fmt) for _ in range(args.repeats)]
            row = {"size": text, "detections": args.detections, "mask_format": fmt,
                   "fastest_ms": min(runs), "median_ms": statistics.median(runs)}
            print(f"{text:>10} {fmt:>5}: fastest {row['fastest_ms']:7.1f} ms  median {row['median_ms']:7.1f} ms", flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"threads": args.threads, "resolution": args.resolution, "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.machine(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
