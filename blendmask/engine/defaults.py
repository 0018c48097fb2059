"""The runs behind the ``blendmask`` commands, as functions of plain arguments.

Each function does one command's work and returns what it produced, for the command line
(:mod:`blendmask.cli`, which prints it), :mod:`blendmask.ablate` and any script:

- :func:`train` -> :class:`TrainReport`: train on a data set (single process, or one rank of a
  ``torchrun`` job), evaluating on its val split;
- :func:`evaluate` -> :class:`EvalReport`: the metrics of a weights file on a data split;
- :func:`predict` -> :class:`PredictReport`: overlays and a results JSON for image files;
- :func:`export_model`: the ONNX graph of a config (and weights);
- :func:`analyze` -> :class:`AnalysisReport`: the error analysis of a COCO results file;
- :func:`demo` -> :class:`DemoReport`: synthetic data, training, evaluation and predictions;
- :func:`load_dataset` and :func:`val_source`: the data sets the runs read.

What differs between instance and panoptic segmentation is the
:class:`~blendmask.engine.tasks.Task`'s, known from the config, the weights file or the data.
Progress messages go to an ``announce`` callback (none by default); nothing here prints.
Every run holds the output guard of what it writes (:mod:`blendmask.output_guard`: a lock, and
no file replaced that no blendmask run made) for its whole work.

Example::

    from blendmask.engine import defaults
    trained = defaults.train(data="runs/shapes", output="runs/train",
                             overrides={"solver.max_iter": 300, "solver.steps": (220, 280)})
    report = defaults.evaluate(trained.result.final_checkpoint, "runs/shapes", output="runs/eval")
    print(report.task.format_table(report.metrics))
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from blendmask.config import BlendMaskConfig, get_config
from blendmask.data.panoptic import PanopticFormatError
from blendmask.distributed import device_for_rank
from blendmask.evaluation import DEFAULT_BACKEND, DEFAULT_MAX_DETS
from blendmask.models import build_model, load_model_from_weights
from blendmask.models.inference_path import compile_report, optimize_for_inference
from blendmask.output_guard import OutputGuard, guard_output_dir, guard_output_file
from blendmask.outputs import check_distinct_stems
from blendmask.predict import PredictionFiles, expand_image_inputs
from blendmask.tiling import DEFAULT_OVERLAP

from .hooks import json_safe
from .train_loop import TrainResult
from .tasks import INSTANCE, Task, Tile, task_of_config, task_of_data, task_of_weights
from .trainer import Trainer

__all__ = [
    "Announce", "TrainReport", "EvalReport", "PredictReport", "DemoReport", "AnalysisReport",
    "load_dataset", "val_source", "train", "evaluate", "predict", "export_model", "analyze", "demo",
    "prepare_demo_output",
    "FAST_DATA", "FAST_OVERRIDES", "DEMO_PREDICT_IMAGES", "DEMO_MARKER",
]

logger = logging.getLogger("blendmask")
PathLike = Union[str, os.PathLike]
#: Receives a run's progress messages (``print``, a logger method...).
Announce = Callable[[str], None]


def _silent(message: str) -> None:
    """What stands for a missing :data:`Announce`: says nothing."""


def _guard_dir(path: PathLike, option: str, command: str, **kwargs):
    """The output guard of a run's output directory (:func:`~blendmask.output_guard.guard_output_dir`);
    in a ``torchrun`` job only rank 0, which writes the files, takes it (the others get None)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return guard_output_dir(path, option=option, command=f"blendmask {command}", **kwargs)


def _holds_output_guard(command: str, *, option: str = "--output", default_output=None):
    """Decorate a run whose ``output`` argument is its output directory: the run holds
    :func:`_guard_dir` on it for its whole work; with ``overwrite`` true, the files earlier runs
    left there are deleted first (``resume`` excludes it). ``default_output(arguments)`` gives
    the directory, next to the ``weights`` argument, when ``output`` is None."""
    def decorate(run):
        signature = inspect.signature(run)

        @functools.wraps(run)
        def guarded(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments, named = bound.arguments, option
            if arguments["output"] is None:
                arguments["output"], named = default_output(arguments), f"{option} (default: next to --weights)"
            if arguments.get("overwrite") and arguments.get("resume"):
                raise ValueError("--resume and --overwrite exclude each other: resume the run, or replace it")
            with _guard_dir(arguments["output"], named, command) as guard:
                if arguments.get("overwrite") and guard is not None:
                    guard.remove_own_outputs()
                return run(*bound.args, **bound.kwargs)
        return guarded
    return decorate


# --------------------------------------------------------------------------- data

def load_dataset(data: PathLike, split: str, *, task: Optional[Task] = None, input_cfg=None, augment: bool = False,
                 allow_outside: bool = False):
    """The dataset of ``split`` of ``data`` (a directory or a COCO JSON file).

    ``task``: the task whose data is expected (its :meth:`~Task.build_dataset` builds it); data
    of the other task's format is a one-line ``PanopticFormatError`` naming the format found.
    None takes the task of the data. ``input_cfg`` (a config's ``input`` section): how its images
    are read (None: the defaults); with ``augment``, also its training augmentation.
    ``allow_outside``: accept records whose file names lead outside the data set
    (:mod:`blendmask.data.paths`)."""
    found = task_of_data(data)
    if task is not None and found is not task:
        raise PanopticFormatError(f"--data {data} holds COCO {found.data_format} data, but {task.expected_data} are "
                                  f"expected here" + (f"; {found.hint}" if found.hint else ""))
    return found.build_dataset(data, split, input_cfg=input_cfg, augment=augment, allow_outside=allow_outside)


def val_source(data: PathLike, val_data: Optional[PathLike]) -> Optional[str]:
    """Where the val split comes from: ``val_data`` (``--val-data``) if given, else ``data`` when it
    is a directory holding a val split of its task's format. A single COCO JSON is the training set
    only, so training on it alone evaluates nothing (rather than scoring the training images)."""
    if val_data:
        if not Path(val_data).exists():
            raise FileNotFoundError(f"--val-data {str(val_data)!r} does not exist (give a data directory or a COCO "
                                    "JSON file)")
        return str(val_data)
    if not Path(data).is_dir():
        return None
    try:
        task_of_data(data).resolve_split(data, "val")
    except FileNotFoundError:
        return None
    return str(data)


# --------------------------------------------------------------------------- train

@dataclass
class TrainReport:
    """What :func:`train` produced: the task, the config trained (classes sized to the data) and
    the trainer's :class:`~blendmask.engine.TrainResult` (weights, metrics, loss curve, last
    evaluation)."""

    task: Task
    cfg: BlendMaskConfig
    result: TrainResult


def _backbone_weights(choice: str, cfg: BlendMaskConfig) -> Optional[str]:
    """``auto`` -> the offline ImageNet weights for MobileNetV2, none for ResNets."""
    if choice == "auto":
        return "imagenet" if cfg.model.backbone.name == "mobilenet_v2" else None
    return None if choice == "none" else choice


@_holds_output_guard("train")
def train(*, data: PathLike, output: PathLike, config: Optional[str] = None,
          overrides: Optional[Mapping[str, Any]] = None, resume: bool = False, weights: Optional[PathLike] = None,
          backbone_weights: str = "auto", seed: int = 0, num_workers: Optional[int] = None, evaluate_on_val: bool = True,
          val_data: Optional[PathLike] = None, announce: Optional[Announce] = None, overwrite: bool = False,
          allow_outside: bool = False, eval_backend: str = DEFAULT_BACKEND,
          max_eval_pairs: Optional[int] = None) -> TrainReport:
    """Train the preset ``config`` (default: the lite preset of the data's task) with ``overrides``
    (dotted config keys) on the train split of ``data``, writing checkpoints, metrics and the loss
    curve into ``output``.

    Args:
        resume: continue from the last checkpoint in ``output``; without it, an ``output`` that
            holds checkpoints is refused.
        overwrite: first delete the outputs earlier runs left in ``output`` (a file no blendmask
            run made there is refused all the same).
        weights: initialise from this weights file (matching tensors only).
        backbone_weights: ``"auto"`` (offline ImageNet weights for MobileNetV2), ``"none"``, or a
            state-dict path.
        seed: seed of the initialisation and the data order.
        evaluate_on_val: evaluate every ``solver.eval_period`` iterations and at the end on the val
            set (:func:`val_source` of ``data`` and ``val_data``), when there is one. Each
            evaluation keeps its predictions in ``output/eval`` (those during training named by
            their iteration, :meth:`Task.evaluate`).
        announce: receives the one-line description of the run before it starts, and the
            headline figures of each evaluation during training (:meth:`Task.format_summary`).
        allow_outside: read images whose file names lead outside the data set.
        eval_backend, max_eval_pairs: the COCOeval backend and its bound on the pairs it matches
            (:class:`~blendmask.evaluation.COCOEvaluator`'s ``backend`` and ``max_pairs``) of the
            evaluations during and after training; instance models only.
    """
    overrides = dict(overrides or {})
    if config is None:
        config = task_of_data(data).default_config
    cfg = get_config(config, overrides)
    task = task_of_config(cfg)
    if task is not INSTANCE and (eval_backend != DEFAULT_BACKEND or max_eval_pairs is not None):
        raise ValueError(f"--eval-backend and --max-eval-pairs apply to instance models (COCO AP); {cfg.name} is a "
                         "panoptic model (PQ)")
    train_set = load_dataset(data, "train", task=task, input_cfg=cfg.input, augment=True, allow_outside=allow_outside)
    if "model.num_classes" in overrides and overrides["model.num_classes"] != train_set.num_classes:
        raise ValueError(f"--set model.num_classes={overrides['model.num_classes']} but the data set has "
                         f"{train_set.num_classes} categories")
    extra_state = task.configure(cfg, train_set)
    val_from = val_source(data, val_data) if evaluate_on_val else None
    val_set = (load_dataset(val_from, "val", task=task, input_cfg=cfg.input, allow_outside=allow_outside)
               if val_from else None)
    if val_set is not None and len(val_set) == 0:
        logger.warning("the val split of %s has no images: training evaluates nothing", val_from)
        val_set = None
    output_dir = Path(output)
    if not resume and (output_dir / "last_checkpoint").exists():
        raise FileExistsError(f"{output_dir} already holds checkpoints: pass --resume to continue, "
                              "--overwrite to replace that run, or choose another --output")

    def evaluate_on(model) -> Dict[str, Any]:
        # the trainer's last evaluation comes after its last iteration; the others during training
        iteration = trainer.iter if trainer.iter < trainer.max_iter else None
        metrics = task.evaluate(model, val_set, output_dir=output_dir / "eval", progress=False, iteration=iteration,
                                backend=eval_backend, max_pairs=max_eval_pairs)
        if iteration is not None:
            (announce or _silent)(f"val at iteration {iteration}: {task.format_summary(metrics)}")
        return metrics

    torch.manual_seed(seed)
    model = build_model(cfg, weights_backbone=None if weights else _backbone_weights(backbone_weights, cfg))
    trainer = Trainer(model=model, cfg=cfg, train_dataset=train_set, output_dir=output_dir,
                      evaluate=evaluate_on if val_set is not None else None, device=device_for_rank(), seed=seed,
                      num_workers=num_workers, extra_state=extra_state)
    if resume:
        if not trainer.resume():
            logger.warning("--resume: no checkpoint in %s, starting from scratch", output_dir)
    elif weights:
        trainer.load_matching_weights(weights)
    (announce or _silent)(f"training {cfg.name} on {len(train_set)} images ({task.describe_classes(train_set)}) for "
             f"{cfg.solver.max_iter} iterations, batch {cfg.solver.ims_per_batch}, output {output_dir}")
    return TrainReport(task=task, cfg=cfg, result=trainer.train())


# --------------------------------------------------------------------------- evaluate

@dataclass
class EvalReport:
    """What :func:`evaluate` produced: the task, its metrics, the files written (the task's
    predictions and ``metrics.json``), and with ``compile`` the compilation's one-line report."""

    task: Task
    metrics: Dict[str, Any]
    results_path: Path
    metrics_path: Path
    compile_report: Optional[str] = None


@_holds_output_guard("eval", default_output=lambda arguments: Path(arguments["weights"]).resolve().parent / "eval")
def evaluate(weights: PathLike, data: PathLike, *, output: Optional[PathLike] = None, split: str = "val",
             compile: bool = False, tile: Tile = None, tile_overlap: float = DEFAULT_OVERLAP,
             max_dets: int = DEFAULT_MAX_DETS, class_map: Union[str, Mapping[str, str], None] = None,
             ignore_class_names: bool = False, allow_outside: bool = False,
             tta_sizes: Optional[Sequence[int]] = None, backend: str = DEFAULT_BACKEND,
             max_pairs: Optional[int] = None) -> EvalReport:
    """Evaluate the model of a weights file on ``split`` of ``data`` (its images read by the
    weights' ``input`` rules) with its task's metrics (COCO AP, or PQ for panoptic weights),
    writing the predictions and ``metrics.json`` (strict JSON: ``null`` for a metric without a
    value) into ``output`` (default: ``eval`` next to ``weights``).

    ``compile``: ``torch.compile`` backbone and head (eager where inductor cannot compile).
    ``tile``, ``tile_overlap``, ``max_dets``, ``backend``, ``max_pairs``: tiled prediction,
    COCOeval's detections per image, its implementation and the most detection/ground-truth pairs
    it may match, for instance models (:meth:`Task.evaluate`). The model's classes are matched to the
    data set's categories by name (:func:`~blendmask.evaluation.categories.match_categories`);
    ``class_map`` (``{model_class: data_class}`` or its ``"a=b,..."`` text) or
    ``ignore_class_names`` (the data set's order) resolve names that differ. ``allow_outside``:
    read images whose file names lead outside the data set. ``tta_sizes`` (not None; instance
    weights only, not with ``tile``): test-time augmentation
    (:class:`~blendmask.models.tta.TestTimeAugmentation`) at these test sizes, empty: the default ones."""
    _check_tta(tta_sizes, tile)
    model, cfg = load_model_from_weights(weights)
    task = task_of_config(cfg)
    if tta_sizes is not None and task is not INSTANCE:
        raise ValueError(f"--tta works on instance models, not on panoptic weights ({weights})")
    model = optimize_for_inference(model, inplace=True, compile=compile)  # the model the task's evaluator runs as is
    dataset = load_dataset(data, split, task=task, input_cfg=cfg.input, allow_outside=allow_outside)
    category_ids = task.check_dataset(cfg, dataset, weights=weights, data=data, class_map=_class_map(class_map),
                                      ignore_class_names=ignore_class_names)
    output = Path(output)
    metrics = task.evaluate(_with_tta(model, cfg, tta_sizes), dataset, output_dir=output, tile=tile,
                            tile_overlap=tile_overlap, max_dets=max_dets, backend=backend, max_pairs=max_pairs,
                            category_ids=category_ids)
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1, allow_nan=False))
    return EvalReport(task=task, metrics=metrics, results_path=output / task.results_file,
                      metrics_path=output / "metrics.json", compile_report=compile_report(model) if compile else None)


def _check_tta(tta_sizes: Optional[Sequence[int]], tile: Tile) -> None:
    """Refuse test-time augmentation with tiled prediction, in one line."""
    if tta_sizes is not None and tile is not None:
        raise ValueError("--tta and --tile do not combine: choose one")


def _with_tta(model: torch.nn.Module, cfg: BlendMaskConfig, tta_sizes: Optional[Sequence[int]]) -> torch.nn.Module:
    """``model``, or with ``tta_sizes`` (not None) ``model`` under test-time augmentation at those
    sizes (empty: :func:`~blendmask.models.tta.default_test_sizes` of the config's test size)."""
    if tta_sizes is None:
        return model
    from blendmask.models.tta import TestTimeAugmentation, default_test_sizes

    return TestTimeAugmentation(model, sizes=tta_sizes or default_test_sizes(cfg.input.min_size_test))


def _class_map(class_map: Union[str, Mapping[str, str], None]) -> Optional[Mapping[str, str]]:
    """A ``--class-map`` as a mapping (:func:`~blendmask.evaluation.categories.parse_class_map` of its text)."""
    from blendmask.evaluation.categories import parse_class_map

    return parse_class_map(class_map) if isinstance(class_map, str) else class_map


# --------------------------------------------------------------------------- predict and export

@dataclass
class PredictReport:
    """What :func:`predict` produced: the task, the files written, with ``compile`` the
    compilation's one-line report, and the files of input directories skipped as not images."""

    task: Task
    files: PredictionFiles
    compile_report: Optional[str] = None
    skipped: List[Path] = field(default_factory=list)


@_holds_output_guard("predict", option="--out",
                     default_output=lambda arguments: Path(arguments["weights"]).resolve().parent / "predictions")
def predict(weights: PathLike, images: Sequence[PathLike], output: Optional[PathLike] = None, *,
            score_threshold: float = 0.3, show_bases: bool = False, compile: bool = False, tile: Tile = None,
            tile_overlap: float = DEFAULT_OVERLAP, max_image_pixels: Optional[int] = None,
            tta_sizes: Optional[Sequence[int]] = None, progress: bool = False) -> PredictReport:
    """Predict image files, and the images of directories (:func:`~blendmask.predict.expand_image_inputs`),
    with the model of a weights file, as its task does, one image at a time: overlays and a
    results JSON in ``output`` (default: ``predictions`` next to ``weights``; instances:
    detections scoring at least ``score_threshold``, and with ``show_bases`` the bases and
    attentions, or with ``tile`` predicted in tiles at native resolution; panoptic: segment
    maps). Images are read by the weights' ``input`` rules, ``max_image_pixels`` replacing their
    limit. ``tta_sizes`` (not None; instances only, not with ``show_bases`` or ``tile``):
    test-time augmentation as for :func:`evaluate`. ``progress`` shows a bar."""
    _check_tta(tta_sizes, tile)
    if tta_sizes is not None and show_bases:
        raise ValueError("--show-bases draws one pass's bases: not with --tta")
    paths, skipped = expand_image_inputs(images)
    if not paths:
        raise FileNotFoundError(f"no images in {' '.join(map(str, images))}")
    check_distinct_stems([str(path) for path in paths])
    task = task_of_weights(weights)
    predictor = task.load_predictor(weights, score_threshold=score_threshold, compile=compile,
                                    max_image_pixels=max_image_pixels, tta_sizes=tta_sizes)
    files = task.predict_files(predictor, paths, output, show_bases=show_bases, tile=tile, tile_overlap=tile_overlap,
                               progress=progress)
    compiled = predictor.model.model if tta_sizes is not None else predictor.model  # TTA wraps the compiled model
    return PredictReport(task=task, files=files, compile_report=compile_report(compiled) if compile else None,
                         skipped=skipped)


def export_model(cfg: BlendMaskConfig, out: PathLike, *, weights: Optional[PathLike] = None,
                 opset: Optional[int] = None, overwrite: bool = False) -> Path:
    """Export the inference graph of ``cfg``'s model (random weights, or those of ``weights``) to
    ONNX at ``out`` (``opset`` default :data:`blendmask.deploy.DEFAULT_OPSET`); returns the path.
    An existing ``out`` is replaced only with ``overwrite``; the export holds its output guard
    (:func:`~blendmask.output_guard.guard_output_file`)."""
    from blendmask.deploy import DEFAULT_OPSET  # deferred: the export's own dependencies load with it

    with guard_output_file(out, option="--out", command="blendmask export-onnx", overwrite=overwrite):
        return task_of_config(cfg).export_onnx(cfg, out, weights=weights,
                                               opset=DEFAULT_OPSET if opset is None else opset)


# --------------------------------------------------------------------------- analyze

@dataclass
class AnalysisReport:
    """What :func:`analyze` produced: the report (as written to ``analysis.json``) and the paths of
    ``analysis.md`` and ``analysis.json``."""

    report: Dict[str, Any]
    markdown_path: Path
    json_path: Path


def analyze(results: PathLike, data: PathLike, *, output: PathLike, split: str = "val", gallery_size: int = 6,
            gallery_score: float = 0.3) -> AnalysisReport:
    """The error analysis of a COCO results file against ``split`` of the instance data ``data``
    (:func:`blendmask.evaluation.analysis_report.write_analysis`): TIDE-style error costs,
    per-class AP, PR curves and a gallery of ``gallery_size`` worst images per IoU type (drawing
    detections scoring at least ``gallery_score``), written into ``output``, which must be new,
    empty or hold an earlier analysis."""
    from blendmask.evaluation.analysis_report import ANALYSIS_JSON, ANALYSIS_MARKDOWN, write_analysis

    ann_file, image_dir = INSTANCE.resolve_split(data, split)
    report = write_analysis(results, ann_file, image_dir, output, gallery_size=gallery_size,
                            gallery_score=gallery_score)
    return AnalysisReport(report=report, markdown_path=Path(output) / ANALYSIS_MARKDOWN,
                          json_path=Path(output) / ANALYSIS_JSON)


# --------------------------------------------------------------------------- demo

# "fast" is a smoke run that exercises every step; its AP is meaningless.
FAST_DATA: Dict[str, Any] = {"train": 16, "val": 4, "size": 128, "seed": 0}
FAST_OVERRIDES: Dict[str, Any] = {
    "solver.max_iter": 8, "solver.warmup_iters": 2, "solver.steps": (6,), "solver.ims_per_batch": 2,
    "solver.checkpoint_period": 0, "input.min_size_train": (128,), "input.max_size_train": 128,
    "input.min_size_test": 128, "input.max_size_test": 128,
}
DEMO_PREDICT_IMAGES = 4
#: Written into a demo's output directory: the next demo run may replace that directory.
DEMO_MARKER = ".blendmask-demo"


def prepare_demo_output(guard: OutputGuard) -> None:
    """Empty the guarded output of a new demo run (:func:`_guard_dir` with ``owned_marker=DEMO_MARKER``):
    the outputs of earlier blendmask runs there are deleted (the guard refuses a directory that
    holds anything else; one holding :data:`DEMO_MARKER` was made by a demo before manifests
    existed, and is all ours)."""
    guard.remove_own_outputs()
    (guard.directory / DEMO_MARKER).write_text("made by 'blendmask demo'; the next demo run replaces this directory\n")


@dataclass
class DemoReport:
    """What :func:`demo` produced: the task, the metrics on the val split and its size, the run
    time, the files to show (``(label, path)``: weights, loss curve, results...) and the pictures."""

    task: Task
    metrics: Dict[str, Any]
    val_images: int
    seconds: float
    outputs: List[Tuple[str, Path]] = field(default_factory=list)
    pictures: List[Path] = field(default_factory=list)


def demo(*, output: PathLike, task: Task = INSTANCE, fast: bool = False,
         overrides: Optional[Mapping[str, Any]] = None, num_workers: Optional[int] = None,
         announce: Optional[Announce] = None) -> DemoReport:
    """The README's main job for ``task``: generate its synthetic set, train its lite preset on its
    demo schedule (with ``fast`` a tiny smoke run of every step; ``overrides`` on top),
    evaluate on the val split and predict a few val images, all under ``output`` (a directory a
    previous demo made is replaced, any other is refused). ``announce`` receives each step."""
    announce = announce or _silent
    data_args, schedule = (FAST_DATA, FAST_OVERRIDES) if fast else (task.demo.data, task.demo.overrides)
    out = Path(output)
    with _guard_dir(out, "--output", "demo", owned_marker=DEMO_MARKER) as guard:
        if guard is not None:
            prepare_demo_output(guard)
        return _demo_steps(task, out, data_args, {**schedule, **(overrides or {})}, num_workers, announce)


def _demo_steps(task: Task, out: Path, data_args: Mapping[str, Any], overrides: Mapping[str, Any],
                num_workers: Optional[int], announce: Announce) -> DemoReport:
    """The demo's four steps into ``out`` (held by its output guard)."""
    start = time.perf_counter()
    announce(f"[1/4] generating the {task.synthetic_set} ({data_args['train']} train + {data_args['val']} val, "
             f"{data_args['size']} px) in {out / 'data'}")
    data = task.make_shapes(out / "data", train=data_args["train"], val=data_args["val"], size=data_args["size"],
                            seed=data_args["seed"], progress=True)
    announce(f"[2/4] training {task.default_config} on the CPU")
    trained = train(config=task.default_config, data=str(data), output=str(out / "train"),
                    overrides=overrides, num_workers=num_workers, evaluate_on_val=False,
                    announce=announce).result
    announce(f"[3/4] evaluating {task.metric} on the val split")
    evaluation = evaluate(str(trained.final_checkpoint), str(data), split="val", output=out / "eval")
    announce("[4/4] predicting on a few val images")
    val_images = sorted((data / "val").glob("*.png"))[:DEMO_PREDICT_IMAGES]
    predictor = task.load_predictor(trained.final_checkpoint, score_threshold=0.3)
    files = task.predict_files(predictor, val_images, out / "predictions", show_bases=True)
    outputs = [("weights", trained.final_checkpoint), ("loss curve", trained.loss_curve_path),
               ("results JSON", evaluation.results_path)]
    if task.demo.lists_predictions_json:
        outputs.append(("predictions", files.results_json))
    return DemoReport(task=task, metrics=evaluation.metrics, val_images=data_args["val"],
                      seconds=time.perf_counter() - start, outputs=outputs,
                      pictures=files.overlays + files.bases_figures)
