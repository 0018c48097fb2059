"""BlendMask against AdelaiDet's own code on the CPU: same weights, same input, interleaved runs.

AdelaiDet's and detectron2's public sources are run uncompiled from the paths given (as the parity
fixtures are recorded: ``tests/fixtures/adelaidet/README.md``; ``adet._C`` is an empty module, cv2 and
skimage inert stand-ins, none of which BlendMask calls). The weights are the deterministic ones of
``tests/fixtures/adelaidet/synthetic.py`` under AdelaiDet's key names, loaded into AdelaiDet's model and,
through the converter (:func:`blendmask.convert.convert_state_dict` and ``match_state_dict``, a strict
load), into ours. With them every image gets 100 detections on both sides. Not run in CI.

Sides, run in turn within each pair (the order alternating from pair to pair):

- ``adelaidet``: AdelaiDet's ``BlendMask`` (detectron2 meta-architecture), eval on a BGR uint8 CHW
  image as its ``DatasetMapper`` gives it (``height``/``width`` the image size, so no rescale);
- ``ours``: our inference path, :func:`blendmask.models.optimize_for_inference` (batch norms folded,
  channels_last), on the same image as float RGB in [0, 1];
- ``ours_eager``: our plain ``model.eval()``, the model as trained (what the inference path buys).

Stages are timed with wrappers around the same units on every side: preprocess (normalise + pad,
everything before the backbone), backbone + FPN, FCOS head + top layer, basis module, FCOS decoding
+ NMS, blender, postprocess + paste (AdelaiDet's ``detector_postprocess`` returns binary masks; ours
runs with ``mask_format="binary"``, the same output; the default float probabilities cost more, see
``bench_postprocess.py``), and the whole model. The images are generated at the test
size (512 x 683, 800 x 1067), so neither side resizes. The training step is forward + backward of
two 512 x 512 images with the fixtures' synthetic targets (AdelaiDet's ``basis_sem`` painted from the
same masks), both sides in train mode, ours prepared as the trainer prepares it (``solver.channels_last``).

Reported: per side the median time of each stage, and per stage the median over pairs of the per-pair
ratio ``adelaidet / ours`` (and ``adelaidet / ours_eager``). Writes ``<out>.json`` and ``<out>.png``.

    OMP_NUM_THREADS=1 python benchmarks/bench_vs_adelaidet.py --adelaidet /tmp/adet_src/AdelaiDet \\
        --detectron2 /tmp/adet_src/detectron2 --deps /tmp/d2deps --threads 1 --pairs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "adelaidet"

STAGES = ("preprocess", "backbone", "head", "basis", "decode_nms", "blender", "postprocess", "total")
STAGE_TITLES = {
    "preprocess": "preprocess", "backbone": "backbone + FPN", "head": "FCOS head + top layer",
    "basis": "basis module", "decode_nms": "FCOS decode + NMS", "blender": "blender",
    "postprocess": "postprocess + paste", "total": "whole model",
}
INFERENCE_SIZES = {512: (512, 683), 800: (800, 1067)}
TRAIN_SIZES = ((512, 512), (512, 512))


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adelaidet", type=Path, required=True, help="AdelaiDet source tree")
    p.add_argument("--detectron2", type=Path, required=True, help="detectron2 source tree")
    p.add_argument("--deps", type=Path, help="directory with detectron2's pure-Python dependencies (fvcore, ...); "
                                              "appended after the environment's own packages")
    p.add_argument("--config", default="R_50_3x", help="AdelaiDet config under configs/BlendMask (default R_50_3x)")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 800], choices=sorted(INFERENCE_SIZES))
    p.add_argument("--pairs", type=int, default=3, help="interleaved runs per side (default 3)")
    p.add_argument("--train-pairs", type=int, default=None, help="pairs of training steps (default --pairs; 0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/vs_adelaidet")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- timing

class StageClock:
    """Accumulates seconds per stage name while a run is recorded (``record()``)."""

    def __init__(self) -> None:
        self.current: Dict[str, float] | None = None

    @contextmanager
    def record(self):
        self.current = {}
        try:
            yield self.current
        finally:
            self.current = None

    def timed(self, name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.current is not None:
                    self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        setattr(owner, attr, self.timed(name, getattr(owner, attr)))


def run_timed(clock: StageClock, fn: Callable[[], Any]) -> Dict[str, float]:
    with clock.record() as times, torch.no_grad():
        start = time.perf_counter()
        fn()
        times["total"] = time.perf_counter() - start
    return times


def derive(times: Dict[str, float]) -> Dict[str, float]:
    """AdelaiDet's proposal generator runs head, decoding and NMS: decoding + NMS is the rest."""
    if "proposal_generator" in times:
        times["decode_nms"] = times.pop("proposal_generator") - times["head"]
    if "until_backbone" in times:  # AdelaiDet: everything from the forward's start to the backbone
        times["preprocess"] = times.pop("until_backbone")
    return times


# ----------------------------------------------------------------------------- AdelaiDet

def import_adelaidet(args: argparse.Namespace):
    sys.path[:0] = [str(args.adelaidet), str(args.detectron2), str(FIXTURES)]
    if args.deps:
        sys.path.append(str(args.deps))  # after site-packages: the environment's numpy, PIL, ... win
    import record  # tests/fixtures/adelaidet/record.py: stubs, deform conv stand-in, model builder

    record._install_stubs()
    import adet.modeling  # noqa: F401  registers AdelaiDet's meta-architectures
    record._patch_deform_conv()
    return record


def build_adelaidet(record, args, clock: StageClock):
    import adet.modeling.blendmask.blendmask as adet_blendmask

    cfg, model, shapes = record._build(args.adelaidet, args.config)
    model.eval()
    started: Dict[str, float] = {}

    def forward_start(module, inputs):
        started["t"] = time.perf_counter()

    def backbone_start(module, inputs):
        if clock.current is not None and "t" in started:
            clock.current["until_backbone"] = time.perf_counter() - started.pop("t")

    model.register_forward_pre_hook(forward_start)
    model.backbone.register_forward_pre_hook(backbone_start)
    clock.wrap(model.backbone, "forward", "backbone")
    clock.wrap(model.proposal_generator.fcos_head, "forward", "head")
    clock.wrap(model.proposal_generator, "forward", "proposal_generator")
    clock.wrap(model.basis_module, "forward", "basis")
    clock.wrap(model, "blender", "blender")
    adet_blendmask.detector_postprocess = clock.timed("postprocess", adet_blendmask.detector_postprocess)
    return cfg, model, shapes


# ----------------------------------------------------------------------------- ours

def build_ours(args, weights: Dict[str, torch.Tensor], size: int, clock: StageClock, *, inference_path: bool,
               train: bool = False):
    from blendmask.config import get_config
    from blendmask.convert import convert_state_dict, match_state_dict
    from blendmask.models import build_model, optimize_for_inference
    from blendmask.models.memory_format import use_channels_last

    overrides = {"input.min_size_test": size, "input.max_size_test": 1333, "input.min_size_train": (size,),
                 "input.max_size_train": 1333, "input.min_size_train_sampling": "choice"}
    cfg = get_config(args.config, overrides)
    model = build_model(cfg)
    converted, report = convert_state_dict({"model": weights})
    matched, report = match_state_dict(converted, model.state_dict(), report)
    if not report.ok:
        raise SystemExit(f"weights do not convert: {report.summary()}")
    model.load_state_dict(matched, strict=True)
    if train:  # as the trainer prepares it
        if cfg.solver.channels_last:
            use_channels_last(model)
        return model.train()
    model.eval()
    model.mask_format = "binary"  # AdelaiDet's output: binary masks
    if inference_path:
        model = optimize_for_inference(model)
    clock.wrap(model.transform, "forward", "preprocess")
    clock.wrap(model.backbone, "forward", "backbone")
    clock.wrap(model.proposal_generator, "forward", "head")
    clock.wrap(model, "attentions", "head")  # the top layer, at the detections only
    clock.wrap(model.basis_module, "forward", "basis")
    clock.wrap(model.proposal_generator, "predict", "decode_nms")
    clock.wrap(model, "blend_masks", "blender")
    clock.wrap(model, "_postprocess", "postprocess")
    return model


# ----------------------------------------------------------------------------- runs

def interleave(runs: Dict[str, Callable[[], Dict[str, float]]], pairs: int) -> Dict[str, List[Dict[str, float]]]:
    """``pairs`` rounds; each round runs every side once, the order reversed every other round."""
    names = list(runs)
    samples: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for name in names:  # warm-up, untimed
        runs[name]()
    for p in range(pairs):
        for name in (names if p % 2 == 0 else names[::-1]):
            samples[name].append(runs[name]())
    return samples


def summarise(samples: Dict[str, List[Dict[str, float]]], stages) -> Dict[str, Any]:
    median = {side: {s: statistics.median(r[s] for r in rs) for s in stages if all(s in r for r in rs)}
              for side, rs in samples.items()}
    ratios = {}
    for side in samples:
        if side == "adelaidet":
            continue
        ratios[f"adelaidet/{side}"] = {
            s: statistics.median(a[s] / b[s] for a, b in zip(samples["adelaidet"], samples[side]))
            for s in stages if s in median["adelaidet"] and s in median[side]}
    return {"median_s": median, "ratios": ratios, "samples": samples}


def inference_case(record, args, weights, adelaidet_model, size: int, clock: StageClock) -> Dict[str, Any]:
    from synthetic import generate_images

    (image,) = generate_images([INFERENCE_SIZES[size]], 0)  # (H, W, 3) RGB uint8
    adelaidet_inputs = record._batched_inputs([image])
    ours_image = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    ours = build_ours(args, weights, size, clock, inference_path=True)
    ours_eager = build_ours(args, weights, size, clock, inference_path=False)
    counts = {}

    def side(name, fn):
        def run():
            times = derive(run_timed(clock, lambda: counts.__setitem__(name, fn())))
            return times
        return run

    runs = {
        "adelaidet": side("adelaidet", lambda: len(adelaidet_model(adelaidet_inputs)[0]["instances"])),
        "ours": side("ours", lambda: len(ours([ours_image])[0]["boxes"])),
        "ours_eager": side("ours_eager", lambda: len(ours_eager([ours_image])[0]["boxes"])),
    }
    result = summarise(interleave(runs, args.pairs), STAGES)
    result["image_size"] = list(INFERENCE_SIZES[size])
    result["detections"] = counts
    return result


def training_case(record, args, weights, clock: StageClock) -> Dict[str, Any]:
    from synthetic import generate_images, generate_targets

    cfg, adelaidet_model, _ = record._build(args.adelaidet, args.config)
    adelaidet_model.train()
    images = generate_images(TRAIN_SIZES, 0)
    targets = generate_targets(TRAIN_SIZES, cfg.MODEL.FCOS.NUM_CLASSES, 0)
    adelaidet_inputs = record._batched_inputs(images, targets)
    ours = build_ours(args, weights, TRAIN_SIZES[0][0], clock, inference_path=False, train=True)
    ours_images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
    ours_targets = [{"boxes": torch.from_numpy(t["boxes"]).float(), "labels": torch.from_numpy(t["labels"]).long(),
                     "masks": torch.from_numpy(t["masks"]).to(torch.uint8)} for t in targets]

    def step(model, fn):
        def run():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            losses = fn()
            forward = time.perf_counter() - start
            sum(losses.values()).backward()
            return {"forward": forward, "total": time.perf_counter() - start,
                    "loss": float(sum(float(v) for v in losses.values()))}
        return run

    runs = {"adelaidet": step(adelaidet_model, lambda: adelaidet_model(adelaidet_inputs)),
            "ours": step(ours, lambda: ours(ours_images, ours_targets))}
    pairs = args.pairs if args.train_pairs is None else args.train_pairs
    result = summarise(interleave(runs, pairs), ("forward", "total"))
    result["losses"] = {side: rs[0]["loss"] for side, rs in result["samples"].items()}
    return result


# ----------------------------------------------------------------------------- report

def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for size, case in result["inference"].items():
        for stage in STAGES:
            if stage in case["ratios"]["adelaidet/ours"]:
                rows.append((f"{STAGE_TITLES[stage]} ({size})", case["ratios"]["adelaidet/ours"][stage],
                             case["ratios"]["adelaidet/ours_eager"].get(stage, float("nan"))))
    if result.get("training"):
        r = result["training"]["ratios"]["adelaidet/ours"]
        rows.append(("training step fwd+bwd", r["total"], float("nan")))
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r[1] for r in rows], height=0.4, label="AdelaiDet / ours (inference path)")
    ax.barh(y + 0.2, [r[2] for r in rows], height=0.4, label="AdelaiDet / ours eager")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over AdelaiDet (median of per-pair ratios; > 1: we are faster)")
    ax.set_title(f"{result['config']}, CPU, {result['threads']} thread(s), {result['pairs']} pairs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(result: Dict[str, Any]) -> None:
    print(f"{result['config']}, {result['threads']} thread(s), {result['pairs']} pairs, load before/after "
          f"{result['load_average_before'][0]:.2f}/{result['load_average_after'][0]:.2f}")
    print(f"{'stage':<34}{'AdelaiDet':>12}{'ours':>12}{'ours eager':>12}{'A/ours':>9}{'A/eager':>9}")
    for size, case in result["inference"].items():
        m, r = case["median_s"], case["ratios"]
        for stage in STAGES:
            if stage not in m["adelaidet"]:
                continue
            print(f"{STAGE_TITLES[stage] + f' ({size})':<34}{1000 * m['adelaidet'][stage]:>10.1f}ms"
                  f"{1000 * m['ours'][stage]:>10.1f}ms{1000 * m['ours_eager'][stage]:>10.1f}ms"
                  f"{r['adelaidet/ours'][stage]:>9.2f}{r['adelaidet/ours_eager'][stage]:>9.2f}")
    if result.get("training"):
        t = result["training"]
        for stage in ("forward", "total"):
            print(f"{'training step ' + stage:<34}{1000 * t['median_s']['adelaidet'][stage]:>10.1f}ms"
                  f"{1000 * t['median_s']['ours'][stage]:>10.1f}ms{'':>12}{t['ratios']['adelaidet/ours'][stage]:>9.2f}")
        print(f"training losses (sum): {t['losses']}")


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    record = import_adelaidet(args)
    from synthetic import generate_weights

    clock = StageClock()
    cfg, adelaidet_model, shapes = build_adelaidet(record, args, clock)
    weights = generate_weights(shapes, 0)
    adelaidet_model.load_state_dict(weights, strict=True)
    result: Dict[str, Any] = {"config": args.config, "threads": args.threads, "pairs": args.pairs,
                              "torch": torch.__version__, "platform": platform.platform(),
                              "load_average_before": load_before, "inference": {}}
    for size in args.sizes:
        result["inference"][str(size)] = inference_case(record, args, weights, adelaidet_model, size, clock)
        print(f"{size}: done, detections {result['inference'][str(size)]['detections']}", flush=True)
    if (args.pairs if args.train_pairs is None else args.train_pairs) > 0:
        result["training"] = training_case(record, args, weights, clock)
    result["load_average_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print_table(result)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
