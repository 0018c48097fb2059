"""CPU latency of the inference path's steps, per stage: plain eager eval vs the folded model
(:func:`blendmask.models.optimize_for_inference`) and its options.

One random-weight model per preset (R_50_3x by default, or ``lite_mobilenet_v2``), one random
image of ``--size`` (short side, the long side 4/3 of it), 100 forced detections (score threshold
-1, box bias 2 strides, as ``bench_model.py``). Every repeat runs every variant once, in turn
(interleaved), and times each stage of the eval forward:

- ``preprocess``: ``model.transform`` (validate, resize, normalise, pad);
- ``backbone``: backbone + FPN;
- ``head``: FCOS head (towers, classification, box, centerness);
- ``detect``: basis module, FCOS decoding + NMS, blender;
- ``postprocess``: box rescaling and the mask paste (``mask_format="rle"``, what eval and predict use).

Variants: ``eager`` (the model as trained, ``model.eval()``), ``folded`` (batch norms folded),
``folded+cl`` (and channels_last activations), ``folded+cl+winograd`` (and Winograd 3x3
convolutions: the default inference path), ``compiled`` (``--compile``: the default path + torch.compile
of backbone and head; its first call, the compile, is reported apart as ``compile_s``). Every variant,
eager included, evaluates the top layer at the detections only (it is part of ``detect``). Reports the
median per stage and the median of the per-repeat ratios eager / variant. Writes ``<out>.json``.

    OMP_NUM_THREADS=1 python benchmarks/bench_inference.py --size 800 --threads 1 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from blendmask.config import get_config
from blendmask.models import build_model, optimize_for_inference

STAGES = ("preprocess", "backbone", "head", "detect", "postprocess")


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="R_50_3x")
    p.add_argument("--size", type=int, default=800, help="short side of the image and min_size_test (default 800)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["eager", "folded", "folded+cl", "folded+cl+winograd"])
    p.add_argument("--out", default="benchmarks/results/inference_cpu")
    return p.parse_args(argv)


def build(preset: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_config(preset, {"input.min_size_test": size, "input.max_size_test": 2 * size}))
    with torch.no_grad():
        model.proposal_generator.fcos_head.bbox_pred.bias.fill_(2.0)
    model.proposal_generator.score_thresh = -1.0
    model.mask_format = "rle"
    return model.eval()


def timed_stages(model: torch.nn.Module, image: torch.Tensor) -> Dict[str, float]:
    """Seconds per stage of one eval forward of ``model`` on ``[image]`` (see the module docstring)."""
    times: Dict[str, float] = {}

    def clock(name: str, fn: Callable):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        return out

    with torch.no_grad():
        batch, _ = clock("preprocess", lambda: model.transform([image]))
        features = clock("backbone", lambda: model.backbone(batch.tensors))
        head = clock("head", lambda: model.proposal_generator([features[f] for f in model.fcos_in_features]))
        dets = clock("detect", lambda: model._detect_from_heads(features, head, batch.image_sizes))
        clock("postprocess", lambda: model._postprocess(dets, batch.image_sizes, [tuple(image.shape[-2:])]))
    times["total"] = sum(times[s] for s in STAGES)
    return times


def variants(model: torch.nn.Module, names: List[str]) -> Dict[str, torch.nn.Module]:
    out = {}
    for name in names:
        if name == "eager":
            out[name] = model
        elif name == "folded":
            out[name] = optimize_for_inference(model, channels_last=False, winograd=False)
        elif name == "folded+cl":
            out[name] = optimize_for_inference(model, winograd=False)
        elif name == "folded+cl+winograd":
            out[name] = optimize_for_inference(model)
        elif name == "compiled":
            out[name] = optimize_for_inference(model, compile=True)
        else:
            raise SystemExit(f"unknown variant {name!r}")
    return out


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build(args.preset, args.size)
    image = torch.rand(3, args.size, args.size * 4 // 3, generator=torch.Generator().manual_seed(0))
    runs = variants(model, args.variants)
    compile_s = {}
    for name, m in runs.items():  # warm-up (and for the compiled variant, the compile)
        start = time.perf_counter()
        timed_stages(m, image)
        compile_s[name] = time.perf_counter() - start
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, m in runs.items():
            samples[name].append(timed_stages(m, image))
    keys = STAGES + ("total",)
    median = {name: {k: statistics.median(s[k] for s in runs_) for k in keys} for name, runs_ in samples.items()}
    ratio = {name: {k: statistics.median(a[k] / b[k] for a, b in zip(samples["eager"], runs_)) for k in keys}
             for name, runs_ in samples.items()} if "eager" in samples else {}
    result = {"preset": args.preset, "size": args.size, "threads": args.threads, "repeats": args.repeats,
              "load_average": os.getloadavg(), "torch": torch.__version__, "platform": platform.platform(),
              "first_call_s": compile_s, "median_s": median, "eager_over_variant": ratio}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    print(f"{args.preset} {args.size}, {args.threads} thread(s), {args.repeats} repeats, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<19}" + "".join(f"{k:>13}" for k in keys) + "   first call")
    for name in runs:
        print(f"{name:<19}" + "".join(f"{1000 * median[name][k]:>10.1f} ms" for k in keys)
              + f"   {compile_s[name]:.1f} s")
        if ratio:
            print(f"{'  eager/x':<19}" + "".join(f"{ratio[name][k]:>13.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
