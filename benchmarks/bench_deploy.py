"""CPU latency of the ONNX export run by onnxruntime against PyTorch eager, side by side in one run.

Two levels, each timed interleaved (eager, inference path, onnxruntime, eager, ...) on the same
input with the same thread count:

- ``graph``: the exported graph alone (normalised padded image -> boxes, scores, labels,
  R x R masks): ``InferenceGraph`` in PyTorch (fused blender when the extension is built)
  against ``onnxruntime.InferenceSession.run``;
- ``end_to_end``: ``model([image])`` against ``OnnxPredictor([image])``, both including the
  resize/normalise/pad and the mask pasting they share.

PyTorch runs twice: ``pytorch_eager``, the plain ``model.eval()``, and ``pytorch_inference_path``,
the model of :func:`blendmask.models.optimize_for_inference` (batch norms folded, channels_last),
what ``Predictor`` and ``blendmask eval``/``predict`` run. The ONNX file is exported from the plain model.

The score threshold defaults to 0, so every run carries the full ``post_nms_topk`` detections
(the worst case for the mask branch and the pasting). Writes ``<out>.json`` and ``<out>.png``.

    python benchmarks/bench_deploy.py --threads 2 --repeats 30
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from tqdm import tqdm

from blendmask import _extension
from blendmask.config import get_config
from blendmask.deploy import InferenceGraph, OnnxPredictor, export_onnx
from blendmask.models import build_model, load_weights, optimize_for_inference


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="lite_mobilenet_v2", help="config preset (default lite_mobilenet_v2)")
    p.add_argument("--weights", default=None, help="weights file (default: random weights)")
    p.add_argument("--height", type=int, default=352, help="input image height (default 352)")
    p.add_argument("--width", type=int, default=480, help="input image width (default 480)")
    p.add_argument("--score-thresh", type=float, default=0.0,
                   help="model.fcos.inference_th (default 0: always post_nms_topk detections)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for both runtimes")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per variant (default 3)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per variant (default 20)")
    p.add_argument("--out", default="benchmarks/results/deploy_cpu", help="output prefix for .json and .png")
    return p.parse_args(argv)


def summarize(samples: List[float]) -> Dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": q[1] * 1e3, "p25_ms": q[0] * 1e3, "p75_ms": q[2] * 1e3, "samples_ms": [s * 1e3 for s in samples]}


def time_interleaved(variants: Dict[str, Callable[[], object]], warmup: int, repeats: int, desc: str) -> Dict[str, List[float]]:
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in tqdm(range(repeats), desc=desc):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def _in_inference_mode(fn: Callable[..., object], *args) -> Callable[[], None]:
    """A callable that runs ``fn(*args)`` under ``torch.inference_mode``."""

    def run() -> None:
        with torch.inference_mode():
            fn(*args)

    return run


def plot(results: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(results["levels"])
    fig, ax = plt.subplots(figsize=(7, 4))
    runtimes = ("pytorch_eager", "pytorch_inference_path", "onnxruntime")
    width = 0.8 / len(runtimes)
    for j, runtime in enumerate(runtimes):
        med = [results["levels"][lv][runtime]["median_ms"] for lv in levels]
        low = [m - results["levels"][lv][runtime]["p25_ms"] for lv, m in zip(levels, med)]
        high = [results["levels"][lv][runtime]["p75_ms"] - m for lv, m in zip(levels, med)]
        xs = [i + (j - (len(runtimes) - 1) / 2) * width for i in range(len(levels))]
        ax.bar(xs, med, width, yerr=[low, high], capsize=4, label=runtime)
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels([f"{lv}\n(eager/ORT {results['levels'][lv]['ratio_eager_over_ort']:.2f}x, "
                        f"path/ORT {results['levels'][lv]['ratio_inference_path_over_ort']:.2f}x)" for lv in levels])
    ax.set_ylabel("latency per image (ms, median, IQR)")
    ax.set_title(f"{results['config']} {results['input_size'][0]}x{results['input_size'][1]}, "
                 f"{results['detections']} detections, {results['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = get_config(args.config, {"model.fcos.inference_th": args.score_thresh})
    torch.manual_seed(0)
    model = build_model(cfg)
    if args.weights:
        load_weights(model, args.weights)
    model.eval()
    image = torch.rand(3, args.height, args.width, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        print("exporting to ONNX ...", flush=True)
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        predictor = OnnxPredictor(onnx_path, num_threads=args.threads)

        graph = InferenceGraph(model, reference_blender=False)
        fast = optimize_for_inference(model)
        fast_graph = InferenceGraph(fast, reference_blender=False)
        batch, _ = model.transform([image])
        tensors, size = batch.tensors, torch.tensor(batch.image_sizes[0])
        with torch.inference_mode():
            detections = int(graph(tensors, size)[0].shape[0])
            eager_e2e = model([image])[0]
        ort_e2e = predictor([image])[0]
        if ort_e2e["boxes"].shape != eager_e2e["boxes"].shape:
            raise RuntimeError(f"eager and onnxruntime disagree: {eager_e2e['boxes'].shape[0]} vs "
                               f"{ort_e2e['boxes'].shape[0]} detections")

        eager_graph = _in_inference_mode(graph, tensors, size)
        eager_model = _in_inference_mode(model, [image])
        fast_graph_run = _in_inference_mode(fast_graph, tensors, size)
        fast_model = _in_inference_mode(fast, [image])

        levels = {
            "graph": time_interleaved({"pytorch_eager": eager_graph, "pytorch_inference_path": fast_graph_run,
                                       "onnxruntime": lambda: predictor.run_raw(tensors, size)},
                                      args.warmup, args.repeats, "graph"),
            "end_to_end": time_interleaved({"pytorch_eager": eager_model, "pytorch_inference_path": fast_model,
                                            "onnxruntime": lambda: predictor([image])},
                                           args.warmup, args.repeats, "end to end"),
        }

    import onnxruntime

    results = {
        "config": args.config,
        "weights": args.weights,
        "input_size": [args.height, args.width],
        "padded_size": list(tensors.shape[-2:]),
        "detections": detections,
        "threads": args.threads,
        "fused_blender_in_eager": _extension.extension_loaded(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.processor() or platform.machine(),
        "levels": {},
    }
    for level, samples in levels.items():
        entry = {name: summarize(s) for name, s in samples.items()}
        entry["ratio_eager_over_ort"] = entry["pytorch_eager"]["median_ms"] / entry["onnxruntime"]["median_ms"]
        entry["ratio_inference_path_over_ort"] = (entry["pytorch_inference_path"]["median_ms"]
                                                  / entry["onnxruntime"]["median_ms"])
        results["levels"][level] = entry

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))

    print(f"\n{args.config}, input {args.height}x{args.width} (padded {tuple(tensors.shape[-2:])}), "
          f"{detections} detections, {args.threads} threads, fused blender in eager: {results['fused_blender_in_eager']}")
    print(f"{'level':<12} {'eager ms':>10} {'path ms':>10} {'ORT ms':>10} {'eager/ORT':>10} {'path/ORT':>10}")
    for level, entry in results["levels"].items():
        print(f"{level:<12} {entry['pytorch_eager']['median_ms']:>10.1f} "
              f"{entry['pytorch_inference_path']['median_ms']:>10.1f} {entry['onnxruntime']['median_ms']:>10.1f} "
              f"{entry['ratio_eager_over_ort']:>9.2f}x {entry['ratio_inference_path_over_ort']:>9.2f}x")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
