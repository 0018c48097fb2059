"""The ``blendmask`` command (also ``python -m blendmask``): the arguments and the printing.

The runs themselves are library functions (:mod:`blendmask.engine.defaults`); a subcommand is an
``add_arguments`` function that declares its options, a ``run(args)`` function that makes one
library call and prints what it returns, and a line in :data:`COMMANDS`. ``run`` returns the exit
code. Options several commands share are declared by one helper each (:func:`_add_set`...). Every
runner imports the library inside itself, so that ``import blendmask.cli`` and every ``--help``
stay instant (no torch).

Errors follow :mod:`blendmask.errors`: the ones raised on purpose for bad input (bad paths,
unknown config, bad override, malformed data...) print a one-line ``error: ...`` to stderr and
exit with status 1; anything else prints its traceback, also with status 1; command-line
syntax errors exit with status 2. ``BLENDMASK_TRACEBACK=1`` shows the traceback of user errors too.
Ctrl-C and SIGTERM end a command with one line (and what the run noted, e.g. its last
checkpoint), status 130 and 143. Commands check their output location before their long work
(:mod:`blendmask.outputs`); the library runs hold the output guard (:mod:`blendmask.output_guard`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence

from blendmask.config import parse_overrides
from blendmask.errors import is_user_error
from blendmask.outputs import check_output_location

__all__ = ["main", "COMMANDS", "build_parser"]


class UsageError(Exception):
    """A command-line syntax error (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message instead of usage + message + ``SystemExit``."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------- shared helpers

def _setup_logging() -> None:
    from blendmask.distributed import is_main_process

    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")


def _say(message: str = "") -> None:
    """Print on rank 0 only, above the training's progress bar when one is shown."""
    from tqdm import tqdm

    from blendmask.distributed import is_main_process

    if is_main_process():
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def _add_set(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE ...``: config overrides (:func:`blendmask.config.parse_overrides`)."""
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)


def _add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="torch.compile backbone and head (inductor; falls back to eager with a warning where it "
                        "cannot compile); prints the compile time apart from the steady-state time")


def _add_num_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-workers", type=int, default=None,
                   help="data-loader worker processes per process (default: min(4, CPU cores per local rank) "
                        "when training on a GPU, 0 on the CPU)")


def _add_tta_options(p: argparse.ArgumentParser) -> None:
    """``--tta [--tta-sizes N ...]``; :func:`_tta_sizes` reads them."""
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: horizontal flip and several test sizes, merged per instance "
                        "(instance weights)")
    p.add_argument("--tta-sizes", type=int, nargs="+", metavar="N",
                   help="test sizes (short side) of --tta (default: 0.8x, 1x and 1.2x the model's test size)")


def _tta_sizes(args) -> Optional[List[int]]:
    """The ``tta_sizes`` of :func:`_add_tta_options`' options: None without ``--tta``, [] for the default sizes."""
    if args.tta_sizes and not args.tta:
        raise ValueError("--tta-sizes needs --tta")
    return list(args.tta_sizes or ()) if args.tta else None


def _add_panoptic(p: argparse.ArgumentParser, help: str) -> None:
    """``--panoptic``: ``args.task``, a key of :data:`blendmask.engine.tasks.TASKS`, is ``"panoptic"``
    instead of ``"instance"``."""
    p.add_argument("--panoptic", dest="task", action="store_const", const="panoptic", default="instance", help=help)


def _add_tile_options(p: argparse.ArgumentParser) -> None:
    """``--tile SIZE|auto`` and ``--tile-overlap F``: tiled prediction (:mod:`blendmask.tiling`)."""
    p.add_argument("--tile", type=_tile_size, default=None, metavar="SIZE|auto",
                   help="predict large images in tiles of SIZE pixels at native resolution, merged across the "
                        "seams ('auto': the model's test size); default: the whole image, resized to the test size")
    _add_tile_overlap(p)


def _add_tile_overlap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile-overlap", type=float, default=0.2, metavar="F",
                   help="fraction of a tile shared with its neighbour, in [0, 1) (default 0.2)")


def _tile_size(text: str):
    """``--tile``'s value: a number of pixels or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of pixels or 'auto', got {text!r}") from None


def _add_allow_outside(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-outside-data", dest="allow_outside", action="store_true",
                   help="read images whose annotation file_name leads outside the data set's image directory "
                        "('../x.png', an absolute path); refused by default")


# --------------------------------------------------------------------------- make-shapes

def _add_eval_bounds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-backend", default="pycocotools", choices=["pycocotools", "faster-coco-eval"],
                   help="COCOeval implementation (default pycocotools, the reference; faster-coco-eval gives the "
                        "same metrics, much faster on images with many instances: pip install blendmask[eval])")
    p.add_argument("--max-eval-pairs", type=int, default=None, metavar="N",
                   help="the most detection/ground-truth pairs COCOeval may compare before the evaluation is refused "
                        "(default: the backend's limit, a few minutes of COCOeval on one core)")


def _add_make_shapes(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (annotations/instances_{train,val}.json + {train,val}/*.png)")
    p.add_argument("--train", type=int, default=1000, help="number of training images (default 1000)")
    p.add_argument("--val", type=int, default=100, help="number of validation images (default 100)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels, >= 64 (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same arguments give identical files")
    p.add_argument("--num-classes", type=int, default=4, help="shape classes, 1-4 (default 4)")
    _add_panoptic(p, "COCO panoptic instead: the shapes over sky/ground/water stuff bands, "
                     "annotations/panoptic_{train,val}.json + PNG segment maps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier make-shapes run in OUT (only the files make-shapes "
                        "writes; never through symbolic links). Without it, an existing file is an error")


def _run_make_shapes(args) -> int:
    from blendmask.engine.tasks import TASKS

    task = TASKS[args.task]
    if args.overwrite and not task.shapes_overwrite:
        print("make-shapes: --overwrite does not apply with --panoptic (it replaces the files of its own "
              "earlier runs and refuses any other): drop --overwrite", file=sys.stderr)
        return 2
    out = task.make_shapes(args.out, train=args.train, val=args.val, size=args.size, seed=args.seed,
                           num_classes=args.num_classes, overwrite=args.overwrite, progress=True)
    print(f"wrote {args.train} train + {args.val} val {task.synthetic_images} to {out}")
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
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --output that holds an earlier run: its outputs are deleted first "
                        "(only files blendmask runs made there; any other file is refused)")
    p.add_argument("--weights", help="initialise the model from this weights file (matching tensors only)")
    p.add_argument("--backbone-weights", default="auto",
                   help="'auto' (offline ImageNet weights for MobileNetV2), 'none', or a state-dict path")
    _add_set(p, "config overrides, e.g. --set solver.max_iter=300 solver.base_lr=0.02")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order")
    _add_num_workers(p)
    _add_eval_bounds(p)
    _add_allow_outside(p)


def _run_train(args) -> int:
    from blendmask.distributed import destroy_distributed, device_for_rank, init_distributed
    from blendmask.engine import defaults

    overrides = parse_overrides(args.overrides)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: resume the run, or replace it")
    check_output_location(args.output, "--output", is_dir=True)
    init_distributed(device_for_rank())
    _setup_logging()
    try:
        report = defaults.train(config=args.config, data=args.data, output=args.output, overrides=overrides,
                                resume=args.resume, weights=args.weights, backbone_weights=args.backbone_weights,
                                seed=args.seed, num_workers=args.num_workers, val_data=args.val_data, announce=_say,
                                overwrite=args.overwrite, allow_outside=args.allow_outside,
                                eval_backend=args.eval_backend, max_eval_pairs=args.max_eval_pairs)
        result = report.result
        _say(f"final weights: {result.final_checkpoint}")
        _say(f"metrics: {result.metrics_path}")
        if result.loss_curve_path:
            _say(f"loss curve: {result.loss_curve_path}")
        if result.eval_results:
            _say(f"val: {report.task.format_summary(result.eval_results)}")
    finally:
        destroy_distributed()
    return 0


# --------------------------------------------------------------------------- eval

def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="weights file written by 'blendmask train' or 'convert'")
    p.add_argument("--data", required=True, help="data set directory or COCO JSON (as for train)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split of a data directory (default val)")
    p.add_argument("--output", help="where to write the results JSON and metrics (default: next to --weights)")
    _add_tta_options(p)
    _add_compile(p)
    _add_tile_options(p)
    p.add_argument("--max-dets", type=int, default=100, metavar="N",
                   help="detections per image COCOeval scores (its maxDets; default 100): raise it for large "
                        "images with many instances")
    _add_eval_bounds(p)
    p.add_argument("--class-map", default=None, metavar="MODEL_CLASS=DATA_CLASS,...",
                   help="score the model's classes (panoptic: things and stuff) as these data set categories "
                        "(default: by name; data whose names differ from the weights' class_names is refused)")
    p.add_argument("--ignore-class-names", action="store_true",
                   help="score the model's classes as the data set's categories in order, whatever their names")
    _add_allow_outside(p)


def _run_eval(args) -> int:
    from blendmask.engine import defaults

    tta_sizes = _tta_sizes(args)
    if args.output:
        check_output_location(args.output, "--output", is_dir=True)
    report = defaults.evaluate(args.weights, args.data, split=args.split, output=args.output, compile=args.compile,
                               tile=args.tile, tile_overlap=args.tile_overlap, max_dets=args.max_dets,
                               class_map=args.class_map, ignore_class_names=args.ignore_class_names,
                               allow_outside=args.allow_outside, tta_sizes=tta_sizes, backend=args.eval_backend,
                               max_pairs=args.max_eval_pairs)
    if report.compile_report is not None:
        print(report.compile_report)
    print(report.task.format_table(report.metrics, max_dets=args.max_dets))
    print(f"results: {report.results_path}")
    print(f"metrics: {report.metrics_path}")
    return 0


# --------------------------------------------------------------------------- predict

def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files, or directories of images (their files ending in "
                                             ".png, .jpg, .jpeg, .bmp, .tif, .tiff or .webp)")
    p.add_argument("--weights", required=True, help="weights file")
    p.add_argument("--out", help="output directory (default: 'predictions' next to --weights)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="minimum score (default 0.3)")
    p.add_argument("--show-bases", action="store_true",
                   help="also draw the K bases and the attentions of the top instances")
    _add_tta_options(p)
    _add_tile_options(p)
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="read images of up to N pixels (default: the weights' input.max_image_pixels, "
                        "Pillow's decompression-bomb size)")
    _add_compile(p)


def _run_predict(args) -> int:
    from blendmask.engine import defaults

    tta_sizes = _tta_sizes(args)
    if args.out:
        check_output_location(args.out, "--out", is_dir=True)
    report = defaults.predict(args.weights, args.images, args.out, score_threshold=args.score_threshold,
                              show_bases=args.show_bases, compile=args.compile, tile=args.tile,
                              tile_overlap=args.tile_overlap, max_image_pixels=args.max_image_pixels,
                              tta_sizes=tta_sizes, progress=True)
    _say_skipped(report.skipped)
    for path in report.files.overlays + report.files.crops + report.files.bases_figures:
        print(path)
    print(f"results: {report.files.results_json}")
    if report.compile_report is not None:
        print(report.compile_report)
    return 0


def _say_skipped(skipped: Sequence[Path]) -> None:
    """Name (on stderr) the files of input directories that were not predicted."""
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"predict: skipped {len(skipped)} file(s) that are not images: {shown}", file=sys.stderr)


# --------------------------------------------------------------------------- slice-data

def _add_slice_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="data set directory or COCO JSON (as for train)")
    p.add_argument("out", help="new or empty output directory (annotations/instances_SPLIT.json + SPLIT/)")
    p.add_argument("--split", default="train", choices=["train", "val"], help="split to slice (default train)")
    p.add_argument("--tile", type=int, required=True, help="tile side in pixels")
    _add_tile_overlap(p)
    p.add_argument("--min-area-fraction", type=float, default=0.1, metavar="F",
                   help="drop a cut annotation smaller than F of its whole mask (default 0.1)")
    p.add_argument("--empty-ratio", type=float, default=0.0, metavar="R",
                   help="keep R empty tiles per tile with annotations, chosen at random (default 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of empty tiles")


def _run_slice_data(args) -> int:
    from blendmask.data import resolve_split
    from blendmask.data.slicing import slice_dataset

    ann_file, image_dir = resolve_split(args.data, args.split)
    check_output_location(args.out, "OUT", is_dir=True)
    out = slice_dataset(ann_file, image_dir, args.out, tile=args.tile, overlap=args.tile_overlap, split=args.split,
                        min_area_fraction=args.min_area_fraction, empty_ratio=args.empty_ratio, seed=args.seed,
                        progress=True)
    print(f"wrote {out / 'annotations' / f'instances_{args.split}.json'} and {out / args.split}")
    return 0


# --------------------------------------------------------------------------- convert / export-onnx

def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="AdelaiDet/detectron2 checkpoint (.pth or .pkl)")
    p.add_argument("output", help="blendmask weights file to write")
    p.add_argument("--config", required=True, help="preset the checkpoint was trained with, e.g. R_50_3x")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (default: refuse)")


def _run_convert(args) -> int:
    from blendmask.convert import convert_checkpoint

    check_output_location(args.output, "output", is_dir=False)
    convert_checkpoint(args.input, args.output, args.config, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0


def _add_export_onnx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config preset name, e.g. lite_mobilenet_v2")
    p.add_argument("--weights", default=None,
                   help="blendmask weights file; its model config must match (default: random weights)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: blendmask.deploy.DEFAULT_OPSET; older than MIN_OPSET is refused)")
    _add_set(p, "config overrides, e.g. --set model.num_classes=4 model.fcos.inference_th=0.3")


def _run_export_onnx(args) -> int:
    from blendmask.config import get_config
    from blendmask.engine import defaults

    cfg = get_config(args.config, parse_overrides(args.overrides))
    out = check_output_location(args.out, "--out", is_dir=False)
    print(f"wrote {defaults.export_model(cfg, out, weights=args.weights, opset=args.opset, overwrite=args.overwrite)}")
    return 0


# --------------------------------------------------------------------------- demo

def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/demo", help="output directory; a previous demo output there is replaced (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a tiny smoke run of every step (meaningless AP)")
    _add_panoptic(p, "panoptic BlendMask on the synthetic panoptic set (PQ table, panoptic overlays)")
    _add_set(p, "extra config overrides for the training run")
    _add_num_workers(p)


def _run_demo(args) -> int:
    """``demo``: generate a synthetic set, train the lite model on the CPU, evaluate, predict
    (:func:`blendmask.engine.defaults.demo`); the task's table, headline and files."""
    from blendmask.engine import defaults
    from blendmask.engine.tasks import TASKS

    _setup_logging()
    report = defaults.demo(output=args.output, task=TASKS[args.task], fast=args.fast,
                           overrides=parse_overrides(args.overrides), num_workers=args.num_workers, announce=_say)
    print()
    print(report.task.format_table(report.metrics))
    print()
    print(f"{report.task.demo_headline(report.metrics)} on {report.val_images} val images; "
          f"total time {report.seconds / 60:.1f} min")
    for label, path in report.outputs:
        print(f"{label + ':':<13} {path}")
    print("pictures:")
    for path in report.pictures:
        print(f"  {path}")
    return 0


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
    _add_set(p, "extra config overrides for every configuration")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")


def _run_ablate(args) -> int:
    from blendmask.ablate import default_jobs, load_grid, run_grid

    grid = load_grid(args.grid)
    overrides = parse_overrides(args.overrides)
    output = Path(args.output) if args.output else Path("runs/ablate") / grid.name
    check_output_location(output, "--output", is_dir=True)
    _setup_logging()
    logging.getLogger("blendmask").setLevel(logging.WARNING)  # one bar over configurations, not per-run logs
    run_grid(grid, args.data, output, iters=args.iters, size=args.size,
             jobs=args.jobs if args.jobs is not None else default_jobs(), seed=args.seed, extra_overrides=overrides,
             announce=_say)
    print((output / "table.md").read_text())
    print(f"table: {output / 'table.md'} and {output / 'table.json'}")
    print(f"plot:  {output / 'plot.png'}")
    return 0


# --------------------------------------------------------------------------- analyze

def _add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="COCO results JSON (eval's, or another tool's)")
    p.add_argument("--data", required=True, help="the ground truth: data set directory or COCO JSON (as for eval)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split of a data directory (default val)")
    p.add_argument("--output", help="output directory, new, empty or holding an earlier analysis "
                                    "(default: analysis/ next to --results)")
    p.add_argument("--gallery", type=int, default=6, help="images drawn per IoU type, those with the most false "
                                                          "positives and misses (default 6; 0: none)")
    p.add_argument("--gallery-score", type=float, default=0.3,
                   help="detections drawn in the gallery score at least this (default 0.3; all are counted)")


def _run_analyze(args) -> int:
    from blendmask.engine import defaults

    output = Path(args.output) if args.output else Path(args.results).resolve().parent / "analysis"
    check_output_location(output, "--output" if args.output else "--output (default: next to --results)", is_dir=True)
    report = defaults.analyze(args.results, args.data, output=output, split=args.split, gallery_size=args.gallery,
                              gallery_score=args.gallery_score)
    print(report.markdown_path.read_text())
    print(f"report: {report.markdown_path} and {report.json_path}")
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
    Command("slice-data", "cut a data set of large images into tiles for training at native resolution",
            _add_slice_data, _run_slice_data),
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run unwinds as after Ctrl-C (exit status 143)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _interrupted(exc: KeyboardInterrupt) -> int:
    """The one line an interrupted command prints (with what the run noted, e.g. its last
    checkpoint), and its exit status: 130 for Ctrl-C, 143 for SIGTERM."""
    terminated = isinstance(exc, _Terminated)
    notes = "; ".join(getattr(exc, "__notes__", []))
    print(f"error: {'terminated (SIGTERM)' if terminated else 'interrupted'}{f': {notes}' if notes else ''}",
          file=sys.stderr)
    return 143 if terminated else 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``blendmask`` console script; returns the exit status (see the module
    docstring). In the main thread, SIGTERM is handled as Ctrl-C for the command's duration."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Optional[Sequence[str]]) -> int:
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
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except Exception as exc:  # noqa: BLE001 - the policy of blendmask.errors decides how it is shown
        if is_user_error(exc) and not os.environ.get("BLENDMASK_TRACEBACK"):
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"error: {message}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1
