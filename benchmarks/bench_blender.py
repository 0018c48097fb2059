"""Blender benchmark: the fused op against the unfused reference, for growing instance counts D.

For every D it measures, side by side in one process:

- latency of the forward and of forward+backward, with ``torch.utils.benchmark.Timer``
  (``blocked_autorange``: blocks of calls long enough to hide the timer, the device
  synchronised around each block). The four variants are measured in interleaved rounds,
  so that load from other processes on a shared machine hits them alike; the row holds the
  median and the best of all blocks;
- peak extra memory of each, in a separate process (:func:`measure_memory`): on CUDA
  ``torch.cuda.max_memory_allocated`` above the baseline; on the CPU the peak resident set
  size above the baseline (``VmHWM`` after resetting it through ``/proc/self/clear_refs``),
  with glibc's dynamic mmap threshold pinned so every buffer >= 128 KiB is mapped on
  allocation and unmapped on free. This counts every byte the call touches, the op's own
  scratch buffers included. The CPU measurement needs Linux and glibc;
- on the CPU, the fused forward+backward's peak extra memory at D=100 for each of
  ``--memory-threads`` (1, 2 and 4 by default), each in its own process: the growth from 1 to 4
  threads is held against a goal too (the backward's scratch must not grow with the threads).

It writes ``blender_<device>.json`` and a log-log plot ``blender_<device>.png`` to the
output folder (default ``benchmarks/results`` next to this script), logs to
``bench_blender.log`` there, and prints the table and the ratios at D=100 against
:data:`GOALS`. Run it from a source checkout with the package importable::

    python benchmarks/bench_blender.py --threads 2 --min-time 1
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.benchmark import Measurement, Timer
from tqdm import tqdm

from blendmask import _extension
from blendmask.ops import blend, blend_reference

LOG = logging.getLogger("bench_blender")
DEFAULT_COUNTS = (1, 10, 50, 100, 200, 500, 1000)
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
GOALS = {"forward_speedup": 4.0, "forward_backward_speedup": 8.0, "memory_ratio": 0.25,
         "memory_growth_1_to_4_threads": 1.5}
_MIB = 2.0**20


@dataclass
class BenchConfig:
    """What to measure. Defaults are AdelaiDet's R_50 setting: K=4, R=56, M=14, bases 1x4x200x304 (stride 4)."""

    counts: Sequence[int] = DEFAULT_COUNTS
    num_bases: int = 4  # K
    output_size: int = 56  # R
    attn_size: int = 14  # M
    base_height: int = 200
    base_width: int = 304
    spatial_scale: float = 0.25
    sampling_ratio: int = 1
    aligned: bool = True
    top_interp: str = "bilinear"
    min_time: float = 0.5  # seconds of timed work per (D, implementation, mode), split over the rounds
    rounds: int = 3  # interleaved rounds of blocked_autorange per (D, implementation, mode)
    seed: int = 0


# --- inputs ----------------------------------------------------------------------------------------


def make_problem(cfg: BenchConfig, num_rois: int, device: torch.device):
    """Bases ``(1, K, Hb, Wb)``, attentions ``(D, K, M, M)``, rois ``(D, 5)`` and an upstream gradient ``(D, R, R)``."""
    g = torch.Generator().manual_seed(cfg.seed + num_rois)
    k, m, r = cfg.num_bases, cfg.attn_size, cfg.output_size
    bases = torch.randn(1, k, cfg.base_height, cfg.base_width, generator=g)
    attns = 2 * torch.randn(num_rois, k, m, m, generator=g)
    image_h, image_w = cfg.base_height / cfg.spatial_scale, cfg.base_width / cfg.spatial_scale
    size = torch.exp(torch.empty(num_rois, 2).uniform_(math.log(24), math.log(500), generator=g))  # box w, h
    x1 = torch.rand(num_rois, generator=g) * (image_w - size[:, 0])
    y1 = torch.rand(num_rois, generator=g) * (image_h - size[:, 1])
    rois = torch.stack([torch.zeros(num_rois), x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)
    grad = torch.randn(num_rois, r, r, generator=g)
    return [t.to(device) for t in (bases, attns, rois, grad)]


# --- measurement ---------------------------------------------------------------------------------


def _pin_glibc_mmap_threshold() -> bool:
    """Make glibc map every allocation >= 128 KiB with mmap and unmap it on free, so the RSS
    follows large allocations exactly (setting the thresholds disables their dynamic growth)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))


def _rss() -> Dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values


def _cpu_peak_memory_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in _rss()
    except OSError:
        return False


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes allocated by one call of ``fn`` above what was live before it (results included)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _rss()["VmRSS"]
        result = fn()
        peak = _rss()["VmHWM"] - base
    del result
    return float(max(peak, 0))


def _calls(cfg: BenchConfig, bases, attns, rois, grad):
    """The four measured callables: {impl: {mode: fn}}."""
    kw = dict(output_size=cfg.output_size, spatial_scale=cfg.spatial_scale, sampling_ratio=cfg.sampling_ratio,
              aligned=cfg.aligned, top_interp=cfg.top_interp)
    bases_g = bases.clone().requires_grad_(True)
    attns_g = attns.clone().requires_grad_(True)

    def forward(impl):
        return lambda: impl(bases, attns, rois, **kw)

    def forward_backward(impl):
        return lambda: torch.autograd.grad(impl(bases_g, attns_g, rois, **kw), (bases_g, attns_g), grad)

    return {
        "reference": {"forward": forward(blend_reference), "forward_backward": forward_backward(blend_reference)},
        "fused": {"forward": forward(blend), "forward_backward": forward_backward(blend)},
    }


def time_count(cfg: BenchConfig, num_rois: int, device: torch.device) -> dict:
    """Latency (ms per call: median and best block) of both implementations at one D.

    Each round runs ``Timer.blocked_autorange`` once per variant, for ``min_time / rounds``
    seconds; its block-size search is the warm-up. The blocks of all rounds are merged."""
    calls = _calls(cfg, *make_problem(cfg, num_rois, device))
    threads = torch.get_num_threads()
    timers = {(impl, mode): Timer("fn()", globals={"fn": fn}, num_threads=threads, label=f"{impl} {mode}")
              for impl, modes in calls.items() for mode, fn in modes.items()}
    rounds: Dict[tuple, List[Measurement]] = {key: [] for key in timers}
    for _ in range(cfg.rounds):  # interleaved, so shared-machine load hits every variant alike
        for key, timer in timers.items():
            rounds[key].append(timer.blocked_autorange(min_run_time=cfg.min_time / cfg.rounds))
    row = {"D": num_rois}
    for (impl, mode), measurements in rounds.items():
        (merged,) = Measurement.merge(measurements)
        row[f"{impl}_{mode}_ms"] = merged.median * 1e3
        row[f"{impl}_{mode}_min_ms"] = min(merged.times) * 1e3
        row[f"{impl}_{mode}_blocks"] = len(merged.times)
    return row


def memory_count(cfg: BenchConfig, num_rois: int, device: torch.device) -> dict:
    """Peak extra memory (bytes) of one call of each implementation and mode at one D."""
    calls = _calls(cfg, *make_problem(cfg, num_rois, device))
    return {
        f"{impl}_{mode}_peak_bytes": peak_extra_memory(fn, device)
        for impl, modes in calls.items()
        for mode, fn in modes.items()
    }


def _memory_rows(cfg: BenchConfig, device_name: str, threads: int) -> List[dict]:
    """:func:`memory_count` for every D, run in a fresh process (see :func:`measure_memory`)."""
    device = torch.device(device_name)
    if device.type == "cpu" and not _pin_glibc_mmap_threshold():
        raise RuntimeError("CPU peak-memory measurement needs glibc (mallopt)")
    torch.set_num_threads(threads)
    return [memory_count(cfg, d, device) for d in cfg.counts]


def measure_memory(cfg: BenchConfig, device: torch.device) -> List[dict]:
    """Peak memory per D, measured in a spawned process whose glibc mmap threshold is pinned
    before its first allocation. The timing process keeps the allocator as users have it:
    pinned, every large buffer becomes a fresh mmap with page faults, which slows the
    reference's big intermediates far more than the fused op; and memory freed by earlier
    calls would hide later peaks from the RSS."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_memory_rows, (cfg, str(device), torch.get_num_threads()))


def measure_memory_vs_threads(cfg: BenchConfig, device: torch.device, thread_counts: Sequence[int],
                              at: int = 100) -> dict:
    """Peak extra memory (bytes) of the fused forward+backward at D=``at`` for each thread count,
    each in its own spawned process (as :func:`measure_memory`); with 1 and 4 among the counts,
    also its growth from 1 to 4 threads."""
    one = replace(cfg, counts=(at,))
    peaks = {}
    for threads in thread_counts:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            peaks[int(threads)] = pool.apply(_memory_rows, (one, str(device), int(threads)))[0][
                "fused_forward_backward_peak_bytes"]
    growth = peaks[4] / max(peaks[1], 1.0) if 1 in peaks and 4 in peaks else None
    return {"D": at, "fused_forward_backward_peak_bytes": peaks, "growth_1_to_4": growth}


def summarise(rows: List[dict], at: int = 100) -> Optional[dict]:
    """Ratios at D=``at``: speed-ups of the fused op and its memory as a fraction of the reference."""
    match = [r for r in rows if r["D"] == at]
    if not match:
        return None
    r = match[0]
    summary = {
        "D": at,
        "forward_speedup": r["reference_forward_ms"] / r["fused_forward_ms"],
        "forward_backward_speedup": r["reference_forward_backward_ms"] / r["fused_forward_backward_ms"],
        "memory_ratio": r["fused_forward_backward_peak_bytes"] / max(r["reference_forward_backward_peak_bytes"], 1.0),
        "forward_memory_ratio": r["fused_forward_peak_bytes"] / max(r["reference_forward_peak_bytes"], 1.0),
    }
    # best-of-N ratios too: on a shared machine the median absorbs other processes' load
    summary["forward_speedup_best"] = r["reference_forward_min_ms"] / r["fused_forward_min_ms"]
    summary["forward_backward_speedup_best"] = r["reference_forward_backward_min_ms"] / r["fused_forward_backward_min_ms"]
    summary["goals"] = GOALS
    summary["goals_met"] = {
        "forward_speedup": summary["forward_speedup"] >= GOALS["forward_speedup"],
        "forward_backward_speedup": summary["forward_backward_speedup"] >= GOALS["forward_backward_speedup"],
        "memory_ratio": summary["memory_ratio"] <= GOALS["memory_ratio"],
    }
    return summary


def scaling_exponent(rows: List[dict], key: str, lo: int = 100) -> Optional[float]:
    """Least-squares slope of log(latency) against log(D) for D >= ``lo`` (1.0 = linear)."""
    pts = [(math.log(r["D"]), math.log(r[key])) for r in rows if r["D"] >= lo and r[key] > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


# --- reporting -----------------------------------------------------------------------------------


def format_table(rows: List[dict]) -> str:
    header = ("D", "ref fwd ms", "fused fwd ms", "x", "ref f+b ms", "fused f+b ms", "x", "ref f+b MiB", "fused f+b MiB", "mem")
    lines = [" | ".join(f"{h:>13}" for h in header)]
    for r in rows:
        fwd_x = r["reference_forward_ms"] / r["fused_forward_ms"]
        fb_x = r["reference_forward_backward_ms"] / r["fused_forward_backward_ms"]
        mem = r["fused_forward_backward_peak_bytes"] / max(r["reference_forward_backward_peak_bytes"], 1.0)
        values = (r["D"], f"{r['reference_forward_ms']:.3f}", f"{r['fused_forward_ms']:.3f}", f"{fwd_x:.1f}",
                  f"{r['reference_forward_backward_ms']:.3f}", f"{r['fused_forward_backward_ms']:.3f}", f"{fb_x:.1f}",
                  f"{r['reference_forward_backward_peak_bytes'] / _MIB:.2f}",
                  f"{r['fused_forward_backward_peak_bytes'] / _MIB:.2f}", f"{mem:.3f}")
        lines.append(" | ".join(f"{v:>13}" for v in values))
    return "\n".join(lines)


def plot(rows: List[dict], device: str, path: str) -> None:
    """Latency and peak memory against D, log-log, both implementations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["D"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"reference": "--", "fused": "-"}
    for impl in ("reference", "fused"):
        for mode, marker in (("forward", "o"), ("forward_backward", "s")):
            label = f"{impl} {mode.replace('_', '+')}"
            ax_t.plot(counts, [r[f"{impl}_{mode}_ms"] for r in rows], styles[impl], marker=marker, label=label)
            ax_m.plot(counts, [max(r[f"{impl}_{mode}_peak_bytes"], 1.0) / _MIB for r in rows], styles[impl], marker=marker, label=label)
    for ax, ylabel in ((ax_t, "latency (ms)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("instances D")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"blender, {device}: fused vs reference (K=4, R=56, M=14, bases 1x4x200x304)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_benchmark(cfg: BenchConfig, device: torch.device, out_dir: str,
                  memory_threads: Sequence[int] = (1, 2, 4)) -> dict:
    """Measures every D on ``device``; writes JSON + PNG into ``out_dir``; returns the results."""
    if device.type == "cpu" and not _cpu_peak_memory_supported():
        raise RuntimeError("CPU peak-memory measurement needs a writable /proc/self/clear_refs (Linux)")
    if not _extension.has_kernel(device.type):
        raise RuntimeError(f"the fused op has no kernel for {device.type} ({_extension.load_error()}): build the extension first")
    rows = [time_count(cfg, d, device) for d in tqdm(list(cfg.counts), desc=f"latency ({device.type})", unit="D")]
    LOG.info("measuring peak memory in a separate process")
    for row, memory in zip(rows, measure_memory(cfg, device)):
        row.update(memory)
        LOG.info("D=%d %s", row["D"], json.dumps(row))
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "memory_method": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) with pinned glibc mmap threshold",
        "rows": rows,
        "summary_at_100": summarise(rows),
        "scaling_exponent_fused": {
            mode: scaling_exponent(rows, f"fused_{mode}_min_ms") for mode in ("forward", "forward_backward")
        },
    }
    if device.type == "cpu" and memory_threads:
        LOG.info("measuring the fused forward+backward's peak memory at %s threads", list(memory_threads))
        result["memory_vs_threads"] = measure_memory_vs_threads(cfg, device, memory_threads)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"blender_{device.type}.json")
    png_path = os.path.join(out_dir, f"blender_{device.type}.png")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, device.type, png_path)
    result["files"] = {"json": json_path, "png": png_path}
    return result


def _report(result: dict) -> None:
    print(f"\nblender benchmark on {result['device']} ({result['device_name']}, {result['threads']} threads, torch {result['torch']})")
    print(format_table(result["rows"]))
    s = result["summary_at_100"]
    if s:
        met = s["goals_met"]
        print(
            f"\nat D=100: forward {s['forward_speedup']:.1f}x (goal >= {GOALS['forward_speedup']:.0f}x: {'met' if met['forward_speedup'] else 'NOT met'}), "
            f"forward+backward {s['forward_backward_speedup']:.1f}x (goal >= {GOALS['forward_backward_speedup']:.0f}x: "
            f"{'met' if met['forward_backward_speedup'] else 'NOT met'}), peak memory fused/reference "
            f"{s['memory_ratio']:.3f} (goal <= {GOALS['memory_ratio']}: {'met' if met['memory_ratio'] else 'NOT met'})"
        )
        print(
            f"at D=100, best blocks of {result['config']['rounds']} interleaved rounds: forward "
            f"{s['forward_speedup_best']:.1f}x, forward+backward {s['forward_backward_speedup_best']:.1f}x"
        )
    by_threads = result.get("memory_vs_threads")
    if by_threads:
        peaks = ", ".join(f"{t} threads {b / _MIB:.2f} MiB" for t, b in by_threads["fused_forward_backward_peak_bytes"].items())
        line = f"fused forward+backward peak extra memory at D={by_threads['D']}: {peaks}"
        growth, goal = by_threads["growth_1_to_4"], GOALS["memory_growth_1_to_4_threads"]
        if growth is not None:
            line += f"; 4 vs 1 threads {growth:.2f}x (goal <= {goal}x: {'met' if growth <= goal else 'NOT met'})"
        print(line)
    exps = result["scaling_exponent_fused"]
    if exps["forward"] is not None:
        print(f"fused best latency ~ D^{exps['forward']:.2f} (forward), D^{exps['forward_backward']:.2f} (forward+backward) for D >= 100")
    print(f"wrote {result['files']['json']} and {result['files']['png']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_blender.py", description="Fused blender vs reference: latency and peak memory against D.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "all"), default="auto",
                   help="auto: CPU, plus CUDA when available (default); all: the same; cpu/cuda: only that one")
    p.add_argument("--counts", type=int, nargs="+", default=list(DEFAULT_COUNTS), help="instance counts D")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR),
                   help="where the JSON, PNG and log go (default: results/ next to this script)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--min-time", type=float, default=BenchConfig.min_time,
                   help="seconds of timed work per (D, implementation, mode), split over the rounds")
    p.add_argument("--rounds", type=int, default=BenchConfig.rounds,
                   help="interleaved rounds of Timer.blocked_autorange per measurement")
    p.add_argument("--top-interp", choices=("bilinear", "nearest"), default="bilinear")
    p.add_argument("--memory-threads", type=int, nargs="*", default=[1, 2, 4],
                   help="CPU: thread counts of the fused forward+backward memory measurement at D=100 "
                        "(none to skip it)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(d < 1 for d in args.counts):
        parser.error(f"--counts must be >= 1, got {args.counts}")
    if any(t < 1 for t in args.memory_threads):
        parser.error(f"--memory-threads must be >= 1, got {args.memory_threads}")
    if args.rounds < 1 or args.min_time < 0:
        parser.error(f"--rounds must be >= 1 and --min-time >= 0, got {args.rounds} and {args.min_time}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    log_file = logging.FileHandler(os.path.join(args.out_dir, "bench_blender.log"))
    log_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    LOG.addHandler(log_file)
    LOG.setLevel(logging.INFO)
    devices = [torch.device("cpu")] if args.device != "cuda" else []
    if args.device in ("auto", "all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            parser.error("--device cuda but no GPU is visible")
    cfg = BenchConfig(counts=tuple(args.counts), min_time=args.min_time, rounds=args.rounds, top_interp=args.top_interp)
    try:
        for device in devices:
            _report(run_benchmark(cfg, device, args.out_dir, args.memory_threads))
    finally:
        LOG.removeHandler(log_file)
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
