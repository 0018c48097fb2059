"""How close the model's resize is to detectron2's: :func:`blendmask.models.transform.resize_image_uint8`
against PIL's ``BILINEAR`` resize of the same uint8 image, which is what detectron2's
``ResizeTransform.apply_image`` runs on uint8 images (``Image.fromarray(img).resize((new_w, new_h),
Image.BILINEAR)``).

For every input size of ``--sizes`` (HxW), the output size is detectron2's ``ResizeShortestEdge``
at ``--short``/``--max-size`` (``int(x + 0.5)`` rounding), both orientations of the image are tried,
on random uint8 noise (``--seed``) and on a smooth textured image. Reports, per case, the share of
pixels (all channels) equal to PIL's and the largest difference in grey levels; writes
``<out>.json`` and ``<out>.png``.

    python benchmarks/bench_resize_parity.py --sizes 1000x2000 2000x1000 480x640 1200x1600
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import PIL
import torch
from PIL import Image

from blendmask.models.transform import resize_image_uint8


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1000x2000", "2000x1000", "480x640", "640x480", "1200x1600",
                                                  "1600x1200", "3000x4000", "4000x3000"], help="input sizes HxW")
    p.add_argument("--short", type=int, default=800, help="shortest edge (detectron2's MIN_SIZE_TEST)")
    p.add_argument("--max-size", type=int, default=1333, help="longest edge bound (MAX_SIZE_TEST)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/resize_parity", help="output prefix for .json and .png")
    return p.parse_args(argv)


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> Tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def test_image(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` uint8: uniform noise, or a smooth pattern with mild noise (photo-like)."""
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0) + 40 * np.sin((x + y) / 11.0)
    return np.clip(base[..., None] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def compare(image: np.ndarray, size: Tuple[int, int]) -> Dict[str, float]:
    new_h, new_w = size
    reference = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)).astype(np.int16)
    ours = resize_image_uint8(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, size)
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(np.int16) - reference)
    return {"exact": float((diff == 0).mean()), "max_diff": int(diff.max())}


def main(argv: List[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    rows = []
    for text in args.sizes:
        h, w = (int(v) for v in text.split("x"))
        size = shortest_edge_size(h, w, args.short, args.max_size)
        for kind in ("noise", "smooth"):
            row = {"input_hw": [h, w], "output_hw": list(size), "image": kind,
                   **compare(test_image(kind, h, w, rng), size)}
            rows.append(row)
            print(f"{h}x{w} -> {size[0]}x{size[1]} (HxW) {kind:6s}: {100 * row['exact']:6.2f}% exact, "
                  f"max {row['max_diff']} grey level(s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "pillow": PIL.__version__, "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "short": args.short, "max_size": args.max_size}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['input_hw'][0]}x{r['input_hw'][1]}\n{r['image']}" for r in rows]
    ax.bar(range(len(rows)), [100 * r["exact"] for r in rows], color=["C0" if r["image"] == "noise" else "C1" for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_ylabel("% of pixels equal to PIL's")
    ax.set_title(f"resize vs PIL BILINEAR (ResizeShortestEdge {args.short}/{args.max_size}; input HxW)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
