"""CPU time of the eval preprocessing (``ImageTransform``: validate, resize, normalise, pad) of one
image at the R_50 test size (short side 800, long side <= 1333, MSRA/BGR statistics, padded to 32).

Cases: a 480 x 640 image resized to 800 x 1067 (antialiased uint8 bilinear, detectron2's), and an
800 x 1067 image that needs no resize. Reports the median and the fastest of ``--repeats`` runs
and writes ``<out>.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_preprocess.py --threads 1 --repeats 30
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch

from blendmask.models.transform import ImageTransform

CASES = {"resize 480x640 -> 800x1067": (480, 640), "no resize 800x1067": (800, 1067)}


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/preprocess_cpu")
    return p.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transform = ImageTransform(min_size_train=(800,), max_size_train=1333, min_size_test=800, max_size_test=1333,
                               size_divisibility=32, pixel_mean=[103.53, 116.28, 123.675], pixel_std=[1.0, 1.0, 1.0],
                               input_format="BGR").eval()
    result = {"threads": args.threads, "repeats": args.repeats, "load_average": os.getloadavg(), "cases": {}}
    for name, (h, w) in CASES.items():
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
        transform([image])  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            transform([image])
            times.append(time.perf_counter() - start)
        result["cases"][name] = {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}
        print(f"{name:<28} median {result['cases'][name]['median_ms']:.2f} ms, fastest {result['cases'][name]['min_ms']:.2f} ms")
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} thread(s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
