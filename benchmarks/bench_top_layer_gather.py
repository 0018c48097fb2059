"""The top layer's gather of 3x3 neighbourhoods (blendmask.models.top_layer): time and bit-repeatability
of its forward+backward on the CPU for the three ways to write it.

``table[rows]`` (indexing; backward ``index_put_(accumulate=True)``, atomic float adds at > 1
thread), ``index_select`` (backward ``index_add_``) and ``F.embedding`` (backward: each table row
summed by one thread, in the order of ``rows``; what the top layer uses). The table is the lite
preset's box tower of 4 images of 416 x 416 (128 channels, strides 8, 16, 32), the rows those of
``--locations`` random locations (9 each, so rows repeat). For each thread count the three are
timed in interleaved rounds (so load from other processes hits them alike; median and fastest
block of ``torch.utils.benchmark``), then each backward is run ``--repeats`` times and the runs
whose gradient differs from the first are counted. ``--load N`` runs ``N`` busy-loop processes
meanwhile (a busy machine). Prints the table, writes ``<out>.json`` and ``<out>.png``.

    python benchmarks/bench_top_layer_gather.py --threads 1 2 --locations 600
    python benchmarks/bench_top_layer_gather.py --threads 2 --load 2 --out benchmarks/results/top_layer_gather_load2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

GATHERS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "table[rows]": lambda table, rows: table[rows],
    "index_select": lambda table, rows: table.index_select(0, rows),
    "F.embedding": lambda table, rows: F.embedding(rows, table),
}
LEVEL_SIDES = (52, 26, 13)  # 416 px at strides 8, 16, 32


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--locations", type=int, default=600, help="gathered locations (9 rows each; default 600)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--repeats", type=int, default=50, help="backward runs compared bit for bit (default 50)")
    p.add_argument("--load", type=int, default=0, help="busy-loop processes during the measurement (default 0)")
    p.add_argument("--out", default="benchmarks/results/top_layer_gather")
    return p.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        return measure(args)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def measure(args: argparse.Namespace) -> int:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(4 * sum(s * s for s in LEVEL_SIDES), 128, generator=g).requires_grad_()
    rows = torch.randint(0, table.shape[0], (9 * args.locations,), generator=g)
    grad = torch.randn(rows.shape[0], 128, generator=g)
    result = {"locations": args.locations, "table": list(table.shape), "busy_processes": args.load,
              "load_average_start": os.getloadavg(), "runs": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        blocks: Dict[str, List[float]] = {name: [] for name in GATHERS}
        for _ in range(args.rounds):
            for name, gather in GATHERS.items():
                timer = benchmark.Timer("gather(table, rows).backward(grad)", num_threads=threads,
                                        globals={"gather": gather, "table": table, "rows": rows, "grad": grad})
                blocks[name] += timer.blocked_autorange(min_run_time=0.5).times
        for name, gather in GATHERS.items():
            grads = []
            for _ in range(args.repeats):
                table.grad = None
                gather(table, rows).backward(grad)
                grads.append(table.grad)
            differing = sum(not torch.equal(grads[0], other) for other in grads[1:])
            times = sorted(blocks[name])
            run = {"median_ms": 1000 * times[len(times) // 2], "fastest_ms": 1000 * times[0],
                   "differing_runs": differing, "compared_runs": args.repeats - 1}
            result["runs"][f"{threads}:{name}"] = run
            print(f"{threads} thread(s)  {name:<13} median {run['median_ms']:7.2f} ms  fastest {run['fastest_ms']:7.2f} ms  "
                  f"gradient differs from the first in {differing} of {args.repeats - 1} runs", flush=True)
    result["load_average_end"] = os.getloadavg()
    print(f"load average {result['load_average_start'][0]:.2f} at the start, {result['load_average_end'][0]:.2f} at the end")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    _plot(result, args.threads, out.with_suffix(".png"))
    return 0


def _plot(result, thread_counts: List[int], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(GATHERS)
    for i, name in enumerate(GATHERS):
        runs = [result["runs"][f"{t}:{name}"] for t in thread_counts]
        bars = ax.bar([t + (i - 1) * width for t in range(len(thread_counts))], [r["median_ms"] for r in runs], width,
                      label=name)
        for bar, r in zip(bars, runs):
            ax.annotate(f"{r['differing_runs']}/{r['compared_runs']}\ndiffer", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(thread_counts)), [f"{t} thread(s)" for t in thread_counts])
    ax.set_ylabel("forward+backward, median ms")
    ax.set_title(f"top layer gather, {result['locations']} locations, {result['busy_processes']} busy processes "
                 f"(load avg {result['load_average_start'][0]:.1f} -> {result['load_average_end'][0]:.1f})", fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
