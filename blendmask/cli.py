"""The ``blendmask`` command (also ``python -m blendmask``).

Subcommands are registered in :data:`COMMANDS`: one ``(name, help, add_arguments, run)`` entry
each, so adding one is a single function pair plus a table line. ``run(args)`` returns the exit
code. Every runner imports what it needs (torch, the model...) inside itself, so that
``import blendmask.cli`` and every ``--help`` stay instant.

Errors follow :mod:`blendmask.errors`: the ones raised on purpose for bad input (bad paths,
unknown config, bad override, malformed data...) print a one-line ``error: ...`` to stderr and
exit with status 1; anything else prints its traceback, also with status 1; command-line
syntax errors exit with status 2. ``BLENDMASK_TRACEBACK=1`` shows the traceback of user errors too.
Commands check their output location before their long work (:func:`_check_output`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from blendmask.config import parse_overrides
from blendmask.errors import is_user_error

__all__ = ["main", "COMMANDS", "build_parser"]

logger = logging.getLogger("blendmask")


class UsageError(Exception):
    """A command-line syntax error (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message instead of usage + message + ``SystemExit``."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- shared helpers

def _check_output(path: str | os.PathLike, option: str, *, is_dir: bool) -> Path:
    """Refuse, before any long work, an output location that cannot be written.

    ``path`` (a directory if ``is_dir``, else a file) must not exist as the other kind, and the
    directory that will receive the writes must be writable: ``path`` itself for an existing
    output directory, else the nearest existing ancestor (missing directories are created later,
    by the command). ``option`` names the argument in the messages. Raises an ``OSError``
    (``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``, ``FileNotFoundError``)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{option} {path} is a broken symbolic link")
    if path.exists():
        if is_dir and not path.is_dir():
            raise NotADirectoryError(f"{option} {path} exists and is not a directory")
        if not is_dir and path.is_dir():
            raise IsADirectoryError(f"{option} {path} is a directory: give a file name")
        if not is_dir and not os.access(path, os.W_OK):
            raise PermissionError(f"{option} {path} exists and is not writable")
    folder = path if path.is_dir() else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: cannot write into {folder}")
    return path


def _setup_logging() -> None:
    from blendmask.distributed import is_main_process

    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")


def _say(message: str = "") -> None:
    """Print on rank 0 only."""
    from blendmask.distributed import is_main_process

    if is_main_process():
        print(message, flush=True)


def _load_split(data: str, split: str, *, train_input=None, panoptic: Optional[bool] = False):
    """The dataset of ``split``; with ``train_input`` (a config's ``input`` section), with its
    training augmentation (``build_train_transforms``: the instance crop when enabled, the flip).

    ``panoptic``: False expects COCO instances, True COCO panoptic data
    (:class:`~blendmask.data.panoptic.CocoPanopticDataset`), None takes what ``data`` holds; data of the
    other format is a one-line ``PanopticFormatError`` naming the format found."""
    from blendmask.data import CocoInstanceDataset, resolve_split
    from blendmask.data.panoptic import CocoPanopticDataset, PanopticFormatError, detect_format, resolve_panoptic_split
    from blendmask.data.transforms import build_train_transforms

    found = detect_format(data)
    if panoptic is not None and (found == "panoptic") != panoptic:
        expected = "COCO panoptic data (a panoptic config)" if panoptic else "COCO instance annotations"
        raise PanopticFormatError(f"--data {data} holds COCO {found} data, but {expected} are expected here"
                                  + ("; use a panoptic config (e.g. lite_mobilenet_v2_panoptic) or panoptic weights"
                                     if found == "panoptic" else ""))
    transforms = build_train_transforms(train_input) if train_input is not None else None
    if found == "panoptic" and train_input is not None and train_input.copy_paste.prob > 0:
        raise ValueError("input.copy_paste.prob > 0: copy-paste works on COCO instance data, not panoptic data")
    if found == "panoptic":
        return CocoPanopticDataset(*resolve_panoptic_split(data, split), transforms=transforms)
    ann_file, image_dir = resolve_split(data, split)
    mask_format = train_input.mask_format if train_input is not None else "polygon"
    if train_input is not None and train_input.copy_paste.prob > 0:
        from blendmask.data.copy_paste import CopyPasteDataset

        return CopyPasteDataset(CocoInstanceDataset(ann_file, image_dir, mask_format=mask_format), transforms=transforms,
                                prob=train_input.copy_paste.prob, max_instances=train_input.copy_paste.max_instances)
    return CocoInstanceDataset(ann_file, image_dir, transforms=transforms, mask_format=mask_format)


def _val_source(data: str, val_data: Optional[str]) -> Optional[str]:
    """Where the val split comes from: ``--val-data`` if given, else ``data`` when it is a
    directory holding a val split. A single COCO JSON is the training set only, so training on
    it alone evaluates nothing (rather than scoring the training images)."""
    from blendmask.data import resolve_split

    if val_data:
        if not Path(val_data).exists():
            raise FileNotFoundError(f"--val-data {val_data!r} does not exist (give a data directory or a COCO JSON file)")
        return val_data
    if not Path(data).is_dir():
        return None
    try:
        resolve_split(data, "val")
    except FileNotFoundError:
        return None
    return data


def _backbone_weights(choice: str, cfg) -> Optional[str]:
    """``auto`` -> the offline ImageNet weights for MobileNetV2, none for ResNets."""
    if choice == "auto":
        return "imagenet" if cfg.model.backbone.name == "mobilenet_v2" else None
    return None if choice == "none" else choice


def _eval_summary(metrics: Dict[str, Dict[str, float]]) -> str:
    if "Things" in metrics:  # panoptic metrics (blendmask.evaluation.panoptic_eval)
        return ", ".join(f"{row} PQ={metrics[row]['PQ']:.3f}" for row in ("All", "Things", "Stuff"))
    return ", ".join(f"{task} AP={values['AP']:.3f} AP50={values['AP50']:.3f}"
                     for task, values in metrics.items())


# --------------------------------------------------------------------------- make-shapes

def _add_make_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (annotations/instances_{train,val}.json + {train,val}/*.png)")
    p.add_argument("--train", type=int, default=1000, help="number of training images (default 1000)")
    p.add_argument("--val", type=int, default=100, help="number of validation images (default 100)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels, >= 64 (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same arguments give identical files")
    p.add_argument("--num-classes", type=int, default=4, help="shape classes, 1-4 (default 4)")
    p.add_argument("--panoptic", action="store_true",
                   help="COCO panoptic instead: the shapes over sky/ground/water stuff bands, "
                        "annotations/panoptic_{train,val}.json + PNG segment maps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier make-shapes run in OUT (only the files make-shapes "
                        "writes; never through symbolic links). Without it, an existing file is an error")


def _run_make_shapes(args) -> int:
    from blendmask.data import make_shapes

    if args.panoptic:
        from blendmask.data.panoptic_shapes import make_panoptic_shapes

        if args.overwrite:
            print("make-shapes: --overwrite does not apply with --panoptic (it replaces the files of its own "
                  "earlier runs and refuses any other): drop --overwrite", file=sys.stderr)
            return 2

        out = make_panoptic_shapes(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                                   num_classes=args.num_classes, progress=True)
        print(f"wrote {args.train} train + {args.val} val panoptic images to {out}")
        return 0

    out = make_shapes(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                      num_classes=args.num_classes, overwrite=args.overwrite, progress=True)
    print(f"wrote {args.train} train + {args.val} val images to {out}")
    return 0


# --------------------------------------------------------------------------- train

def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="preset name (default lite_mobilenet_v2, or lite_mobilenet_v2_panoptic for panoptic data)")
    p.add_argument("--data", required=True,
                   help="data set: a directory DIR/annotations/instances_{train,val}.json + DIR/{train,val}/, "
                        "or a COCO JSON file")
    p.add_argument("--val-data", default=None,
                   help="val set for evaluation during training (a directory as for --data, or a COCO JSON); "
                        "default: the val split of --data when it is a directory")
    p.add_argument("--output", default="runs/train", help="output directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--weights", help="initialise the model from this weights file (matching tensors only)")
    p.add_argument("--backbone-weights", default="auto",
                   help="'auto' (offline ImageNet weights for MobileNetV2), 'none', or a state-dict path")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set solver.max_iter=300 solver.base_lr=0.02")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default 0)")


def _train(*, config: Optional[str], data: str, output: str, overrides: Dict[str, Any], resume: bool = False,
           weights: Optional[str] = None, backbone_weights: str = "auto", seed: int = 0, num_workers: int = 0,
           evaluate_on_val: bool = True, val_data: Optional[str] = None):
    """Train (single process, or one rank of a torchrun job); returns the ``TrainResult``.

    With ``evaluate_on_val`` and a val set (see :func:`_val_source`), evaluates every
    ``solver.eval_period`` iterations and at the end."""
    import torch

    from blendmask.config import get_config
    from blendmask.engine import Trainer
    from blendmask.distributed import device_for_rank
    from blendmask.evaluation import evaluate_model
    from blendmask.models import build_model

    if config is None:  # the lite preset of the data's format
        from blendmask.data.panoptic import detect_format

        config = "lite_mobilenet_v2_panoptic" if detect_format(data) == "panoptic" else "lite_mobilenet_v2"
    cfg = get_config(config, overrides)
    panoptic = cfg.model.panoptic.enabled
    train_set = _load_split(data, "train", train_input=cfg.input, panoptic=panoptic)
    if "model.num_classes" in overrides and overrides["model.num_classes"] != train_set.num_classes:
        raise ValueError(f"--set model.num_classes={overrides['model.num_classes']} but the data set has "
                         f"{train_set.num_classes} categories")
    cfg.model.num_classes = train_set.num_classes
    extra_state = {"class_names": train_set.class_names, "category_ids": train_set.category_ids}
    if panoptic:
        cfg.model.panoptic.num_stuff_classes = train_set.num_stuff_classes
        extra_state.update(stuff_names=train_set.stuff_names, stuff_category_ids=train_set.stuff_category_ids)
    val_source = _val_source(data, val_data) if evaluate_on_val else None
    val_set = _load_split(val_source, "val", panoptic=panoptic) if val_source else None
    output_dir = Path(output)
    if not resume and (output_dir / "last_checkpoint").exists():
        raise FileExistsError(f"{output_dir} already holds checkpoints: pass --resume to continue, "
                              "or choose another --output")

    def evaluate(model) -> Dict[str, Any]:
        if panoptic:
            from blendmask.evaluation.panoptic_eval import evaluate_panoptic

            return evaluate_panoptic(model, val_set, output_dir=output_dir / "eval", progress=False)
        return evaluate_model(model, val_set, output_dir=output_dir / "eval", progress=False)

    torch.manual_seed(seed)
    device = device_for_rank()
    model = build_model(cfg, weights_backbone=None if weights else _backbone_weights(backbone_weights, cfg))
    trainer = Trainer(model=model, cfg=cfg, train_dataset=train_set, output_dir=output_dir,
                      evaluate=evaluate if val_set is not None else None, device=device, seed=seed,
                      num_workers=num_workers, extra_state=extra_state)
    if resume:
        if not trainer.resume():
            logger.warning("--resume: no checkpoint in %s, starting from scratch", output_dir)
    elif weights:
        trainer.load_matching_weights(weights)
    _say(f"training {cfg.name} on {len(train_set)} images ({train_set.num_classes} classes"
         f"{f' + {train_set.num_stuff_classes} stuff' if panoptic else ''}) for "
         f"{cfg.solver.max_iter} iterations, batch {cfg.solver.ims_per_batch}, output {output_dir}")
    return trainer.train()


def _run_train(args) -> int:
    from blendmask.distributed import destroy_distributed, device_for_rank, init_distributed

    overrides = parse_overrides(args.overrides)
    _check_output(args.output, "--output", is_dir=True)
    init_distributed(device_for_rank())
    _setup_logging()
    try:
        result = _train(config=args.config, data=args.data, output=args.output, overrides=overrides,
                        resume=args.resume, weights=args.weights, backbone_weights=args.backbone_weights,
                        seed=args.seed, num_workers=args.num_workers, val_data=args.val_data)
        _say(f"final weights: {result.final_checkpoint}")
        _say(f"metrics: {result.metrics_path}")
        if result.loss_curve_path:
            _say(f"loss curve: {result.loss_curve_path}")
        if result.eval_results:
            _say(f"val: {_eval_summary(result.eval_results)}")
    finally:
        destroy_distributed()
    return 0


# --------------------------------------------------------------------------- eval

def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="weights file written by 'blendmask train' or 'convert'")
    p.add_argument("--data", required=True, help="data set directory or COCO JSON (as for train)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split of a data directory (default val)")
    p.add_argument("--output", help="where to write the results JSON and metrics (default: next to --weights)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: horizontal flip and several test sizes, merged per instance")
    p.add_argument("--tta-sizes", type=int, nargs="+", metavar="N",
                   help="test sizes (short side) of --tta (default: 0.8x, 1x and 1.2x the model's test size)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile backbone and head (inductor; falls back to eager with a warning where it "
                        "cannot compile); prints the compile time apart from the steady-state time")


def _evaluate(weights: str, data: str, split: str, output: Path, compile: bool = False,
              tta_sizes: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, float]]:
    """COCO (or panoptic) metrics of ``weights`` on ``data``; ``tta_sizes`` (not None): with
    test-time augmentation at these sizes (empty: the default sizes)."""
    from blendmask.engine import load_model_from_weights
    from blendmask.evaluation import evaluate_model
    from blendmask.models.inference import compile_report, optimize_for_inference

    model, cfg = load_model_from_weights(weights)
    model = optimize_for_inference(model, inplace=True, compile=compile)  # the model evaluate_model runs as is
    panoptic = cfg.model.panoptic.enabled
    if tta_sizes is not None:
        if panoptic:
            raise ValueError("--tta works on instance models, not on panoptic weights")
        from blendmask.models.tta import TestTimeAugmentation, default_test_sizes

        runner = TestTimeAugmentation(model, sizes=tta_sizes or default_test_sizes(cfg.input.min_size_test))
    else:
        runner = model
    dataset = _load_split(data, split, panoptic=panoptic)
    if dataset.num_classes != cfg.model.num_classes:
        raise ValueError(f"{weights} predicts {cfg.model.num_classes} classes but {data} has "
                         f"{dataset.num_classes} categories")
    if panoptic:
        from blendmask.evaluation.panoptic_eval import evaluate_panoptic

        if dataset.num_stuff_classes != cfg.model.panoptic.num_stuff_classes:
            raise ValueError(f"{weights} predicts {cfg.model.panoptic.num_stuff_classes} stuff classes but {data} "
                             f"has {dataset.num_stuff_classes} stuff categories")
        metrics = evaluate_panoptic(model, dataset, output_dir=output)
    else:
        metrics = evaluate_model(runner, dataset, output_dir=output)
    if compile:
        print(compile_report(model))
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _run_eval(args) -> int:
    from blendmask.evaluation import RESULTS_FILE, format_results_table

    output = Path(args.output) if args.output else Path(args.weights).resolve().parent / "eval"
    _check_output(output, "--output" if args.output else "--output (default: next to --weights)", is_dir=True)
    if args.tta_sizes and not args.tta:
        raise ValueError("--tta-sizes needs --tta")
    metrics = _evaluate(args.weights, args.data, args.split, output, compile=args.compile,
                        tta_sizes=(args.tta_sizes or ()) if args.tta else None)
    if "Things" in metrics:  # panoptic weights: PQ on panoptic data
        from blendmask.evaluation.panoptic_eval import PANOPTIC_RESULTS, format_pq_table

        print(format_pq_table(metrics))
        print(f"results: {output / PANOPTIC_RESULTS}")
        print(f"metrics: {output / 'metrics.json'}")
        return 0
    print(format_results_table(metrics))
    print(f"results: {output / RESULTS_FILE}")
    print(f"metrics: {output / 'metrics.json'}")
    return 0


# --------------------------------------------------------------------------- predict

def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", required=True, help="weights file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--score-threshold", type=float, default=0.3, help="minimum score (default 0.3)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: horizontal flip and several test sizes, merged per instance")
    p.add_argument("--tta-sizes", type=int, nargs="+", metavar="N",
                   help="test sizes (short side) of --tta (default: 0.8x, 1x and 1.2x the model's test size)")
    p.add_argument("--show-bases", action="store_true",
                   help="also draw the K bases and the attentions of the top instances")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile backbone and head (inductor; falls back to eager with a warning where it "
                        "cannot compile); prints the compile time apart from the steady-state time")


def _check_distinct_stems(images: Sequence[str]) -> None:
    """Outputs are named after the input's file stem (``<stem>_pred.png``): refuse two inputs
    with one stem (``a.png`` and ``sub/a.png``) rather than write one over the other."""
    first: Dict[str, str] = {}
    for image in images:
        stem = Path(image).stem
        if stem in first:
            raise ValueError(f"images {first[stem]!r} and {image!r} would both be written as {stem}_pred.png: "
                             "rename one, or predict them in separate runs with different --out")
        first[stem] = image


def _is_panoptic_weights(weights: str) -> bool:
    """Whether a weights file's embedded config is a panoptic model."""
    from blendmask.engine.checkpoint import load_checkpoint

    config = load_checkpoint(weights).get("config")
    return bool(isinstance(config, dict) and config.get("model", {}).get("panoptic", {}).get("enabled"))


def _run_predict(args) -> int:
    from blendmask.models.inference import compile_report
    from blendmask.predict import Predictor, predict_files

    if args.tta_sizes and not args.tta:
        raise ValueError("--tta-sizes needs --tta")
    if args.tta and args.show_bases:
        raise ValueError("--show-bases draws one pass's bases: not with --tta")
    _check_distinct_stems(args.images)
    _check_output(args.out, "--out", is_dir=True)
    if _is_panoptic_weights(args.weights):
        from blendmask.predict_panoptic import PANOPTIC_PREDICTIONS_JSON, PanopticPredictor, predict_panoptic_files

        panoptic = PanopticPredictor.from_weights(args.weights, compile=args.compile)
        overlays = predict_panoptic_files(panoptic, args.images, args.out)
        for path in overlays:
            print(path)
        print(f"results: {Path(args.out) / PANOPTIC_PREDICTIONS_JSON}")
        if args.compile:
            print(compile_report(panoptic.model))
        return 0
    predictor = Predictor.from_weights(args.weights, score_threshold=args.score_threshold, compile=args.compile,
                                       tta_sizes=(args.tta_sizes or ()) if args.tta else None)
    files = predict_files(predictor, args.images, args.out, show_bases=args.show_bases)
    for path in files.overlays + files.bases_figures:
        print(path)
    print(f"results: {files.results_json}")
    if args.compile:
        print(compile_report(predictor.model.model if args.tta else predictor.model))  # TTA wraps the compiled model
    return 0


# --------------------------------------------------------------------------- convert / export-onnx

def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="AdelaiDet/detectron2 checkpoint (.pth or .pkl)")
    p.add_argument("output", help="blendmask weights file to write")
    p.add_argument("--config", required=True, help="preset the checkpoint was trained with, e.g. R_50_3x")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")


def _run_convert(args) -> int:
    from blendmask.convert import convert_checkpoint

    _check_output(args.output, "output", is_dir=False)
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"output {args.output} exists; choose another path, or pass --overwrite to replace it")
    convert_checkpoint(args.input, args.output, args.config, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0


def _add_export_onnx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config preset name, e.g. lite_mobilenet_v2")
    p.add_argument("--weights", default=None,
                   help="blendmask weights file; its model config must match (default: random weights)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: blendmask.deploy.DEFAULT_OPSET; older than MIN_OPSET is refused)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.num_classes=4 model.fcos.inference_th=0.3")


def _run_export_onnx(args) -> int:
    from blendmask.config import get_config
    from blendmask.deploy import DEFAULT_OPSET, export_onnx

    cfg = get_config(args.config, parse_overrides(args.overrides))
    out = _check_output(args.out, "--out", is_dir=False)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if cfg.model.panoptic.enabled:  # the graph adds the semantic logits; the fusion stays in Python
        from blendmask.deploy.onnx_export import resolve_model
        from blendmask.deploy.panoptic import export_panoptic_onnx

        print(f"wrote {export_panoptic_onnx(resolve_model(cfg, args.weights), out, opset=opset)}")
        return 0
    print(f"wrote {export_onnx(cfg, out, weights=args.weights, opset=opset)}")
    return 0


# --------------------------------------------------------------------------- demo

# Built-in demo: data set size and the solver/input overrides of the lite preset (the README
# gives the figures they reach). "--fast" is a smoke run (a minute on a laptop) that exercises
# every step; its AP is meaningless.
DEMO_DATA = {"train": 1000, "val": 100, "size": 256, "seed": 0}
DEMO_OVERRIDES: Dict[str, Any] = {
    "solver.max_iter": 600, "solver.ims_per_batch": 4, "solver.base_lr": 0.01, "solver.warmup_iters": 100,
    "solver.steps": (450, 550), "solver.checkpoint_period": 200, "solver.eval_period": 0,
    "input.min_size_train": (256,), "input.max_size_train": 256,
    "input.min_size_test": 256, "input.max_size_test": 256,
}
FAST_DATA = {"train": 16, "val": 4, "size": 128, "seed": 0}
FAST_OVERRIDES: Dict[str, Any] = {
    "solver.max_iter": 8, "solver.warmup_iters": 2, "solver.steps": (6,), "solver.ims_per_batch": 2,
    "solver.checkpoint_period": 0, "input.min_size_train": (128,), "input.max_size_train": 128,
    "input.min_size_test": 128, "input.max_size_test": 128,
}
DEMO_PREDICT_IMAGES = 4
# demo --panoptic: the synthetic panoptic set and lite_mobilenet_v2_panoptic (README, "Panoptic BlendMask"),
# on the instance demo's 600-iteration schedule. A panoptic iteration costs ~0.85 s of one core at 256 px,
# batch 4 (P2 and the semantic head make it ~1.7x an instance one): 1000 iterations were ~14 min of CPU.
PANOPTIC_DEMO_DATA = dict(DEMO_DATA)
PANOPTIC_DEMO_OVERRIDES: Dict[str, Any] = dict(DEMO_OVERRIDES)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/demo", help="output directory; a previous demo output there is replaced (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a tiny smoke run of every step (meaningless AP)")
    p.add_argument("--panoptic", action="store_true",
                   help="panoptic BlendMask on the synthetic panoptic set (PQ table, panoptic overlays)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the training run")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default 0)")


DEMO_MARKER = ".blendmask-demo"


def _clear_demo_output(out: Path) -> None:
    """Empty ``out`` for a new demo run, but only if a previous demo made it (it holds
    :data:`DEMO_MARKER`): a directory the user filled with anything else is never deleted."""
    if out.exists():
        if not (out / DEMO_MARKER).is_file() and any(out.iterdir()):
            raise FileExistsError(f"--output {out} exists and was not made by 'blendmask demo': "
                                  "choose a new or empty directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("made by 'blendmask demo'; the next demo run replaces this directory\n")


class _DemoKind(NamedTuple):
    """What differs between the instance demo and ``demo --panoptic`` (see :func:`_run_demo`)."""
    dataset: str              # the data set's name in the progress lines
    generate: Callable        # make_shapes or make_panoptic_shapes
    config: str               # the preset trained
    metric: str               # what step 3 evaluates
    data: Dict[str, Any]      # generator arguments
    overrides: Dict[str, Any]  # the training schedule
    predict: Callable         # (weights, images, output dir) -> (pictures, [(label, path)])
    table: Callable           # metrics -> the printed table
    summary: Callable         # metrics -> the headline figures and their goal
    results_file: str         # the evaluation's JSON under eval/


def _run_demo(args) -> int:
    """``demo``: generate a synthetic set, train the lite model on the CPU, evaluate, predict.

    The instance demo (shapes, COCO AP) and ``--panoptic`` (shapes over stuff bands, PQ) are the
    same four steps; :func:`_instance_demo` and :func:`_panoptic_demo` give what differs."""
    _setup_logging()
    kind = _panoptic_demo() if args.panoptic else _instance_demo()
    data_args, overrides = (FAST_DATA, FAST_OVERRIDES) if args.fast else (kind.data, kind.overrides)
    overrides = {**overrides, **parse_overrides(args.overrides)}
    out = Path(args.output)
    _clear_demo_output(out)
    start = time.perf_counter()
    print(f"[1/4] generating the {kind.dataset} ({data_args['train']} train + {data_args['val']} val, "
          f"{data_args['size']} px) in {out / 'data'}", flush=True)
    data = kind.generate(out / "data", train=data_args["train"], val=data_args["val"], size=data_args["size"],
                            seed=data_args["seed"], progress=True)
    print(f"[2/4] training {kind.config} on the CPU", flush=True)
    result = _train(config=kind.config, data=str(data), output=str(out / "train"), overrides=overrides,
                    num_workers=args.num_workers, evaluate_on_val=False)
    print(f"[3/4] evaluating {kind.metric} on the val split", flush=True)
    metrics = _evaluate(str(result.final_checkpoint), str(data), "val", out / "eval")
    print("[4/4] predicting on a few val images", flush=True)
    val_images = sorted((data / "val").glob("*.png"))[:DEMO_PREDICT_IMAGES]
    pictures, outputs = kind.predict(result.final_checkpoint, val_images, out / "predictions")
    minutes = (time.perf_counter() - start) / 60
    print()
    print(kind.table(metrics))
    print()
    print(f"{kind.summary(metrics)} on {data_args['val']} val images; total time {minutes:.1f} min")
    print(f"weights:      {result.final_checkpoint}")
    print(f"loss curve:   {result.loss_curve_path}")
    print(f"results JSON: {out / 'eval' / kind.results_file}")
    for label, path in outputs:
        print(f"{label + ':':<13} {path}")
    print("pictures:")
    for path in pictures:
        print(f"  {path}")
    return 0


def _instance_demo() -> _DemoKind:
    """The instance demo's parts for :func:`_run_demo` (imports deferred: the CLI starts instantly)."""
    from blendmask.data import make_shapes
    from blendmask.evaluation import RESULTS_FILE, format_results_table
    from blendmask.predict import Predictor, predict_files

    def predict(weights, images, output):
        files = predict_files(Predictor.from_weights(weights, score_threshold=0.3), images, output, show_bases=True)
        return files.overlays + files.bases_figures, []

    def summary(metrics):
        segm = metrics["segm"]
        return f"mask AP = {segm['AP']:.3f}, AP50 = {segm['AP50']:.3f} (goal: AP >= 0.50, AP50 >= 0.85)"

    return _DemoKind(dataset="synthetic shapes set", generate=make_shapes, config="lite_mobilenet_v2", metric="COCO AP",
                     data=DEMO_DATA, overrides=DEMO_OVERRIDES, predict=predict, table=format_results_table,
                     summary=summary, results_file=RESULTS_FILE)


def _panoptic_demo() -> _DemoKind:
    """``demo --panoptic``'s parts for :func:`_run_demo`: the synthetic panoptic set,
    lite_mobilenet_v2_panoptic, PQ, panoptic overlays."""
    from blendmask.data.panoptic_shapes import make_panoptic_shapes
    from blendmask.evaluation.panoptic_eval import PANOPTIC_RESULTS, format_pq_table
    from blendmask.predict_panoptic import PANOPTIC_PREDICTIONS_JSON, PanopticPredictor, predict_panoptic_files

    def predict(weights, images, output):
        overlays = predict_panoptic_files(PanopticPredictor.from_weights(weights), images, output)
        return overlays, [("predictions", output / PANOPTIC_PREDICTIONS_JSON)]

    def summary(metrics):
        return (f"PQ = {metrics['All']['PQ']:.3f} (things {metrics['Things']['PQ']:.3f}, "
                f"stuff {metrics['Stuff']['PQ']:.3f}) (goal: PQ >= 0.60)")

    return _DemoKind(dataset="synthetic panoptic set", generate=make_panoptic_shapes, config="lite_mobilenet_v2_panoptic",
                     metric="PQ", data=PANOPTIC_DEMO_DATA, overrides=PANOPTIC_DEMO_OVERRIDES, predict=predict,
                     table=format_pq_table, summary=summary, results_file=PANOPTIC_RESULTS)


# --------------------------------------------------------------------------- ablate

def _add_ablate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data set directory or COCO JSON (as for train); without a val "
                                                 "split the training images are evaluated")
    p.add_argument("--grid", required=True,
                   help="merge, resolution, bases, bottom-features, top-interp, bottom-interp, bottom-module "
                        "(the paper's Tables 1-7), or a grid JSON file")
    p.add_argument("--iters", type=int, default=300, help="training iterations per configuration (default 300)")
    p.add_argument("--size", type=int, default=256, help="input image side for training and eval (default 256)")
    p.add_argument("--output", help="output directory (default runs/ablate/GRID); rerunning resumes it")
    p.add_argument("--jobs", type=int, default=None,
                   help="configurations trained in parallel (default: one per 4 cores, so 1 on 2 cores)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every configuration")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")


def _run_ablate(args) -> int:
    from blendmask.ablate import Steps, default_jobs, load_grid, run_grid

    grid = load_grid(args.grid)
    overrides = parse_overrides(args.overrides)
    output = Path(args.output) if args.output else Path("runs/ablate") / grid.name
    _check_output(output, "--output", is_dir=True)
    _setup_logging()
    logging.getLogger("blendmask").setLevel(logging.WARNING)  # one bar over configurations, not per-run logs
    run_grid(grid, args.data, output, steps=Steps(_train, _load_split, _val_source), iters=args.iters, size=args.size,
             jobs=args.jobs if args.jobs is not None else default_jobs(), seed=args.seed, extra_overrides=overrides)
    print((output / "table.md").read_text())
    print(f"table: {output / 'table.md'} and {output / 'table.json'}")
    print(f"plot:  {output / 'plot.png'}")
    return 0


# --------------------------------------------------------------------------- analyze

def _add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="COCO results JSON (ours, e.g. eval's, or another tool's)")
    p.add_argument("--data", required=True, help="the ground truth: data set directory or COCO JSON (as for eval)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split of a data directory (default val)")
    p.add_argument("--output", help="output directory (default: analysis/ next to --results)")
    p.add_argument("--gallery", type=int, default=6, help="images drawn per IoU type, those with the most false "
                                                          "positives and misses (default 6; 0: none)")
    p.add_argument("--gallery-score", type=float, default=0.3,
                   help="detections drawn in the gallery score at least this (default 0.3; all are counted)")


def _run_analyze(args) -> int:
    from blendmask.data import resolve_split
    from blendmask.evaluation.analysis_report import ANALYSIS_JSON, ANALYSIS_MARKDOWN, write_analysis

    output = Path(args.output) if args.output else Path(args.results).resolve().parent / "analysis"
    _check_output(output, "--output", is_dir=True)
    ann_file, image_dir = resolve_split(args.data, args.split)
    write_analysis(args.results, ann_file, image_dir, output, gallery_size=args.gallery, gallery_score=args.gallery_score)
    print((output / ANALYSIS_MARKDOWN).read_text())
    print(f"report: {output / ANALYSIS_MARKDOWN} and {output / ANALYSIS_JSON}")
    return 0


# --------------------------------------------------------------------------- registry and main

class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: List[Command] = [
    Command("make-shapes", "generate the built-in synthetic shapes data set (COCO JSON + PNG)",
            _add_make_shapes, _run_make_shapes),
    Command("train", "train a model (single process, or under torchrun for DDP)", _add_train, _run_train),
    Command("eval", "COCO bbox + segm evaluation of a weights file on a data set", _add_eval, _run_eval),
    Command("predict", "predict on images: overlay PNGs + results JSON", _add_predict, _run_predict),
    Command("convert", "convert an AdelaiDet checkpoint to a blendmask weights file", _add_convert, _run_convert),
    Command("export-onnx", "export the whole inference graph (detection, NMS, basis module, blender) to ONNX",
            _add_export_onnx, _run_export_onnx),
    Command("ablate", "rerun one of the paper's ablation tables (a grid of short runs, COCOeval, table + plot)",
            _add_ablate, _run_ablate),
    Command("analyze", "error analysis of a COCO results file: the AP each error type costs (TIDE), per-class AP, "
                       "PR curves, a gallery of the worst images", _add_analyze, _run_analyze),
    Command("demo", "the README's main job: data, CPU training, evaluation and predictions", _add_demo, _run_demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blendmask", description="BlendMask instance segmentation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``blendmask`` console script; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args.run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the policy of blendmask.errors decides how it is shown
        if is_user_error(exc) and not os.environ.get("BLENDMASK_TRACEBACK"):
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"error: {message}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1
