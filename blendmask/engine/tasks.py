"""What differs between the two tasks the package runs: instance and panoptic segmentation.

A :class:`Task` owns its task's data set class, evaluator, predictor, results table, default
preset, synthetic data, ONNX export and demo recipe, so that the run logic
(:mod:`blendmask.engine.defaults`) asks the task instead of testing a flag. The task is always
known, never guessed from results:

- of a config: :func:`task_of_config` (``model.panoptic.enabled``);
- of a weights file: :func:`task_of_weights` (its embedded config);
- of a data set: :func:`task_of_data` (the format of its annotations,
  :func:`blendmask.data.panoptic.detect_format`).

Example::

    from blendmask.engine import load_model_from_weights
    task = task_of_weights("runs/train/model_final.pth")
    model, _ = load_model_from_weights("runs/train/model_final.pth")
    metrics = task.evaluate(model, task.build_dataset("runs/shapes", "val"))
    print(task.format_table(metrics))
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from blendmask.config import BlendMaskConfig
from blendmask.data import CocoInstanceDataset, ImageReading, make_shapes, resolve_split
from blendmask.data.panoptic import CocoPanopticDataset, detect_format, resolve_panoptic_split
from blendmask.data.panoptic_shapes import make_panoptic_shapes
from blendmask.data.transforms import build_train_transforms
from blendmask.evaluation import (DEFAULT_BACKEND, DEFAULT_MAX_DETS, RESULTS_FILE, evaluate_model, evaluate_tiled,
                                  format_results_table)
from blendmask.evaluation.categories import match_categories
from blendmask.evaluation.panoptic_eval import PANOPTIC_RESULTS, evaluate_panoptic, format_pq_table
from blendmask.predict import PredictionFiles, Predictor, predict_files
from blendmask.predict_panoptic import PANOPTIC_PREDICTIONS_JSON, PanopticPredictor, predict_panoptic_files
from blendmask.serialization import load_checkpoint
from blendmask.tiling import DEFAULT_OVERLAP

__all__ = [
    "Task", "InstanceTask", "PanopticTask", "DemoRecipe", "INSTANCE", "PANOPTIC", "TASKS",
    "DEMO_DATA", "DEMO_OVERRIDES", "Tile", "task_of_config", "task_of_data", "task_of_weights",
]

PathLike = Union[str, os.PathLike]
Metrics = Dict[str, Any]
#: A tile size in pixels, or ``"auto"`` (the model's test size): see :func:`blendmask.tiling.sliced_predict`.
Tile = Union[int, str, None]

# The built-in demo: the synthetic set's size and the solver/input overrides of the lite preset
# (the README gives the figures they reach). Both tasks use them.
DEMO_DATA: Dict[str, Any] = {"train": 1000, "val": 100, "size": 256, "seed": 0}
DEMO_OVERRIDES: Dict[str, Any] = {
    "solver.max_iter": 600, "solver.ims_per_batch": 4, "solver.base_lr": 0.01, "solver.warmup_iters": 100,
    "solver.steps": (450, 550), "solver.checkpoint_period": 200, "solver.eval_period": 0,
    "input.min_size_train": (256,), "input.max_size_train": 256,
    "input.min_size_test": 256, "input.max_size_test": 256,
}


@dataclass(frozen=True)
class DemoRecipe:
    """A task's ``blendmask demo``: the synthetic set's generator arguments (``train``, ``val``,
    ``size``, ``seed``), the training schedule (config overrides), the goal its headline states,
    and whether its report lists the predictions JSON."""

    data: Mapping[str, Any]
    overrides: Mapping[str, Any]
    goal: str
    lists_predictions_json: bool


class Task(ABC):
    """One task's parts (see the module docstring); :data:`INSTANCE` and :data:`PANOPTIC` are the two.

    Attributes:
        name: ``"instance"`` or ``"panoptic"``.
        data_format: what :func:`~blendmask.data.panoptic.detect_format` says of its data.
        expected_data: how error messages name the data it expects.
        hint: what an error message suggests when data of this task comes where the other is expected.
        default_config: the preset trained when none is given (the lite model).
        metric: what its evaluation measures, in words.
        results_file: the predictions file its evaluation writes into the output directory.
        synthetic_set: its synthetic data set, in words; synthetic_images: its images, in words.
        shapes_overwrite: whether ``make-shapes`` may replace its own earlier files (``--overwrite``).
        demo: its :class:`DemoRecipe`.
    """

    name: str
    data_format: str
    expected_data: str
    hint: str
    default_config: str
    metric: str
    results_file: str
    synthetic_set: str
    synthetic_images: str
    shapes_overwrite: bool
    demo: DemoRecipe

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ---------------------------------------------------------------- data

    @abstractmethod
    def resolve_split(self, data: PathLike, split: str) -> Tuple[str, ...]:
        """The files of ``split`` (``"train"`` or ``"val"``) of ``data``: annotations first, then
        the image directory (and the panoptic PNG directory). Raises ``FileNotFoundError``
        naming the paths tried when ``data`` has no such split."""

    @abstractmethod
    def build_dataset(self, data: PathLike, split: str, *, input_cfg=None, augment: bool = False,
                      allow_outside: bool = False) -> torch.utils.data.Dataset:
        """The dataset of ``split`` (``"train"`` or ``"val"``) of ``data``, a directory or a JSON
        file of this task's format. Its images are read by the rules of ``input_cfg`` (a config's
        ``input`` section: :meth:`ImageReading.from_config <blendmask.data.ImageReading.from_config>`;
        None: the defaults). With ``augment`` it carries ``input_cfg``'s training augmentation
        (:func:`~blendmask.data.transforms.build_train_transforms`). ``allow_outside``: accept
        records whose file names lead outside the data set (:mod:`blendmask.data.paths`)."""

    @abstractmethod
    def make_shapes(self, out: PathLike, *, train: int, val: int, size: int, seed: int = 0, num_classes: int = 4,
                    overwrite: bool = False, progress: bool = False) -> Path:
        """Write the task's synthetic data set into ``out`` and return its path."""

    def configure(self, cfg: BlendMaskConfig, dataset) -> Dict[str, Any]:
        """Size ``cfg``'s classes to a training ``dataset`` (in place); return what the weights
        file stores of the data set (names and category ids)."""
        cfg.model.num_classes = dataset.num_classes
        return {"class_names": dataset.class_names, "category_ids": dataset.category_ids}

    def describe_classes(self, dataset) -> str:
        """The classes of ``dataset`` in words, e.g. ``"4 classes"``."""
        return f"{dataset.num_classes} classes"

    def check_dataset(self, cfg: BlendMaskConfig, dataset, *, weights: PathLike, data: PathLike,
                      class_map: Optional[Mapping[str, str]] = None, ignore_class_names: bool = False) -> List[int]:
        """The data set category id of each class of the model of ``weights`` (config ``cfg``; its
        classes in :meth:`model_categories`' order), matched by name
        (:func:`~blendmask.evaluation.categories.match_categories`, with ``class_map`` /
        ``ignore_class_names``); ``ValueError`` if it does not predict ``dataset``'s classes."""
        if dataset.num_classes != cfg.model.num_classes:
            raise ValueError(f"{weights} predicts {cfg.model.num_classes} classes but {data} has "
                             f"{dataset.num_classes} categories")
        model_names, model_ids = self.model_categories(load_checkpoint(weights))
        data_names, data_ids = self.data_categories(dataset)
        return match_categories(model_names, model_ids, data_names, data_ids, weights=str(weights), data=str(data),
                                class_map=dict(class_map) if class_map else None,
                                ignore_class_names=ignore_class_names)

    def model_categories(self, stored: Mapping[str, Any]) -> Tuple[Optional[List[str]], Optional[List[int]]]:
        """The names and category ids of a model's classes, in label order, from its weights file
        (what :meth:`configure` stored); ``(None, None)`` for a file without names (a converted
        checkpoint)."""
        return stored.get("class_names"), stored.get("category_ids")

    def data_categories(self, dataset) -> Tuple[List[str], List[int]]:
        """The names and ids of ``dataset``'s categories, in the order of :meth:`model_categories`."""
        return list(dataset.class_names), list(dataset.category_ids)

    # ---------------------------------------------------------------- evaluation

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, dataset, *, output_dir: Optional[PathLike] = None,
                 progress: bool = True, iteration: Optional[int] = None, tile: Tile = None,
                 tile_overlap: float = DEFAULT_OVERLAP, max_dets: int = DEFAULT_MAX_DETS,
                 backend: str = DEFAULT_BACKEND, max_pairs: Optional[int] = None,
                 category_ids: Optional[Sequence[int]] = None) -> Metrics:
        """The task's metrics of ``model`` on ``dataset`` (built without transforms); with
        ``output_dir``, the predictions are written there as :attr:`results_file`, or, for an
        evaluation during training at ``iteration``, apart from every other evaluation's.

        ``tile`` (pixels or ``"auto"``): predict every image in tiles at native resolution,
        ``tile_overlap`` shared between neighbours; ``max_dets``, ``backend``, ``max_pairs``:
        COCOeval's detections per image, implementation and most detection/ground-truth pairs
        (:class:`~blendmask.evaluation.COCOEvaluator`). These are the instance task's; the panoptic
        task refuses them. ``category_ids``: the data
        set category of each model class, in :meth:`data_categories`' order (default: the data
        set's own; :meth:`check_dataset` gives them)."""

    @abstractmethod
    def format_table(self, metrics: Metrics, *, max_dets: int = DEFAULT_MAX_DETS) -> str:
        """The printed table of :meth:`evaluate`'s metrics (``max_dets``: the one evaluated with)."""

    @abstractmethod
    def format_summary(self, metrics: Metrics) -> str:
        """The headline figures of :meth:`evaluate`'s metrics on one line."""

    @abstractmethod
    def demo_headline(self, metrics: Metrics) -> str:
        """The demo's headline figures and their goal (:attr:`DemoRecipe.goal`)."""

    # ---------------------------------------------------------------- prediction and export

    @abstractmethod
    def load_predictor(self, weights: PathLike, *, score_threshold: float = 0.3, compile: bool = False,
                       max_image_pixels: Optional[int] = None, tta_sizes: Optional[Sequence[int]] = None):
        """The task's predictor of a weights file (``score_threshold`` applies to instances); it
        reads images by the weights' ``input`` rules, ``max_image_pixels`` replacing their limit.
        With ``tta_sizes`` not None: test-time augmentation at these sizes, empty: the default
        ones (instances only)."""

    @abstractmethod
    def predict_files(self, predictor, images: Sequence[PathLike], out_dir: PathLike, *, show_bases: bool = False,
                      tile: Tile = None, tile_overlap: float = DEFAULT_OVERLAP, progress: bool = False) -> PredictionFiles:
        """Predict every image file; write the overlays and the results JSON into ``out_dir``
        (with ``show_bases``, the instance task also draws the bases and attentions; with
        ``tile``, it predicts in tiles, :func:`blendmask.tiling.sliced_predict`); ``progress``
        shows a bar."""

    @abstractmethod
    def export_onnx(self, cfg: BlendMaskConfig, out: PathLike, *, weights: Optional[PathLike], opset: int) -> Path:
        """Export the model of ``cfg`` (random weights, or those of ``weights``) to ONNX at ``out``."""


class InstanceTask(Task):
    """Instance segmentation: COCO instance annotations, COCO AP (bbox and segm), instance overlays."""

    name = "instance"
    data_format = "instances"
    expected_data = "COCO instance annotations"
    hint = ""
    default_config = "lite_mobilenet_v2"
    metric = "COCO AP"
    results_file = RESULTS_FILE
    synthetic_set = "synthetic shapes set"
    synthetic_images = "images"
    shapes_overwrite = True
    demo = DemoRecipe(DEMO_DATA, DEMO_OVERRIDES, goal="AP >= 0.50, AP50 >= 0.85", lists_predictions_json=False)

    def resolve_split(self, data, split):
        return resolve_split(data, split)

    def build_dataset(self, data, split, *, input_cfg=None, augment=False, allow_outside=False):
        ann_file, image_dir = self.resolve_split(data, split)
        transforms, reading = _transforms_and_reading(input_cfg, augment)
        if augment and input_cfg.copy_paste.prob > 0:
            return self._copy_paste_dataset(ann_file, image_dir, input_cfg, transforms, reading, allow_outside)
        # A training set's 8-bit images cross the loader's worker boundary as uint8.
        return CocoInstanceDataset(ann_file, image_dir, transforms=transforms, reading=reading,
                                   mask_format=input_cfg.mask_format if augment else "polygon", uint8_images=augment,
                                   allow_outside=allow_outside)

    @staticmethod
    def _copy_paste_dataset(ann_file, image_dir, input_cfg, transforms, reading, allow_outside):
        """The training set with Simple Copy-Paste (``input.copy_paste``): the un-augmented
        dataset, wrapped so that each sample goes through the training ``transforms`` before the paste."""
        from blendmask.data.copy_paste import CopyPasteDataset

        raw = CocoInstanceDataset(ann_file, image_dir, reading=reading, mask_format=input_cfg.mask_format,
                                  uint8_images=True, allow_outside=allow_outside)
        return CopyPasteDataset(raw, transforms=transforms, prob=input_cfg.copy_paste.prob,
                                max_instances=input_cfg.copy_paste.max_instances)

    def make_shapes(self, out, *, train, val, size, seed=0, num_classes=4, overwrite=False, progress=False):
        return make_shapes(out, train=train, val=val, size=size, seed=seed, num_classes=num_classes,
                           overwrite=overwrite, progress=progress)

    def evaluate(self, model, dataset, *, output_dir=None, progress=True, iteration=None, tile=None,
                 tile_overlap=DEFAULT_OVERLAP, max_dets=DEFAULT_MAX_DETS, backend=DEFAULT_BACKEND, max_pairs=None,
                 category_ids=None):
        if tile is not None:
            return evaluate_tiled(model, dataset, tile=tile, overlap=tile_overlap, max_dets=max_dets, backend=backend,
                                  max_pairs=max_pairs, output_dir=output_dir, progress=progress,
                                  category_ids=category_ids)
        results_name = RESULTS_FILE if iteration is None else f"coco_instances_results_iter{iteration:07d}.json"
        return evaluate_model(model, dataset, output_dir=output_dir, progress=progress, results_name=results_name,
                              max_dets=max_dets, backend=backend, max_pairs=max_pairs, category_ids=category_ids)

    def format_table(self, metrics, *, max_dets=DEFAULT_MAX_DETS):
        return format_results_table(metrics, max_dets=max_dets)

    def format_summary(self, metrics):
        return ", ".join(f"{kind} AP={values['AP']:.3f} AP50={values['AP50']:.3f}" for kind, values in metrics.items())

    def demo_headline(self, metrics):
        segm = metrics["segm"]
        return f"mask AP = {segm['AP']:.3f}, AP50 = {segm['AP50']:.3f} (goal: {self.demo.goal})"

    def load_predictor(self, weights, *, score_threshold=0.3, compile=False, max_image_pixels=None, tta_sizes=None):
        return Predictor.from_weights(weights, score_threshold=score_threshold, compile=compile,
                                      max_image_pixels=max_image_pixels, tta_sizes=tta_sizes)

    def predict_files(self, predictor, images, out_dir, *, show_bases=False, tile=None, tile_overlap=DEFAULT_OVERLAP,
                      progress=False):
        return predict_files(predictor, images, out_dir, show_bases=show_bases, tile=tile, tile_overlap=tile_overlap,
                             progress=progress)

    def export_onnx(self, cfg, out, *, weights, opset):
        from blendmask.deploy import export_onnx

        return export_onnx(cfg, out, weights=weights, opset=opset)


class PanopticTask(Task):
    """Panoptic segmentation: COCO panoptic data, PQ (all, things, stuff), panoptic overlays."""

    name = "panoptic"
    data_format = "panoptic"
    expected_data = "COCO panoptic data (a panoptic config)"
    hint = "use a panoptic config (e.g. lite_mobilenet_v2_panoptic) or panoptic weights"
    default_config = "lite_mobilenet_v2_panoptic"
    metric = "PQ"
    results_file = PANOPTIC_RESULTS
    synthetic_set = "synthetic panoptic set"
    synthetic_images = "panoptic images"
    shapes_overwrite = False
    demo = DemoRecipe(DEMO_DATA, DEMO_OVERRIDES, goal="PQ >= 0.60", lists_predictions_json=True)

    def resolve_split(self, data, split):
        return resolve_panoptic_split(data, split)

    def build_dataset(self, data, split, *, input_cfg=None, augment=False, allow_outside=False):
        if augment and input_cfg.copy_paste.prob > 0:
            raise ValueError("input.copy_paste.prob > 0: copy-paste works on COCO instance data, not panoptic data")
        transforms, reading = _transforms_and_reading(input_cfg, augment)
        return CocoPanopticDataset(*self.resolve_split(data, split), transforms=transforms, reading=reading,
                                   allow_outside=allow_outside)

    def make_shapes(self, out, *, train, val, size, seed=0, num_classes=4, overwrite=False, progress=False):
        return make_panoptic_shapes(out, train=train, val=val, size=size, seed=seed, num_classes=num_classes,
                                    overwrite=overwrite, progress=progress)

    def configure(self, cfg, dataset):
        state = super().configure(cfg, dataset)
        cfg.model.panoptic.num_stuff_classes = dataset.num_stuff_classes
        return {**state, "stuff_names": dataset.stuff_names, "stuff_category_ids": dataset.stuff_category_ids}

    def describe_classes(self, dataset):
        return f"{super().describe_classes(dataset)} + {dataset.num_stuff_classes} stuff"

    def check_dataset(self, cfg, dataset, *, weights, data, class_map=None, ignore_class_names=False):
        """As the instance task's, over the things and then the stuff: a thing class is scored as
        a thing category of the data and a stuff class as a stuff category (the data's ``isthing``)."""
        if dataset.num_stuff_classes != cfg.model.panoptic.num_stuff_classes:
            raise ValueError(f"{weights} predicts {cfg.model.panoptic.num_stuff_classes} stuff classes but {data} "
                             f"has {dataset.num_stuff_classes} stuff categories")
        category_ids = super().check_dataset(cfg, dataset, weights=weights, data=data, class_map=class_map,
                                             ignore_class_names=ignore_class_names)
        model_names = self.model_categories(load_checkpoint(weights))[0]
        data_names, data_ids = self.data_categories(dataset)
        name_of = dict(zip(data_ids, data_names))
        for label, category_id in enumerate(category_ids):
            model_thing, data_thing = label < dataset.num_classes, category_id in dataset.category_ids
            if model_thing != data_thing:
                kind = {True: "thing", False: "stuff"}
                model_name = model_names[label] if model_names is not None else f"label {label}"
                raise ValueError(f"{weights}: its {kind[model_thing]} class {model_name!r} cannot be scored as {data}'s "
                                 f"{kind[data_thing]} category {name_of[category_id]!r} (things are scored as things, "
                                 "stuff as stuff)")
        return category_ids

    def model_categories(self, stored):
        """The things (``class_names``, ``category_ids``), then the stuff (``stuff_names``,
        ``stuff_category_ids``); ``(None, None)`` when either is missing."""
        things, thing_ids = super().model_categories(stored)
        stuff, stuff_ids = stored.get("stuff_names"), stored.get("stuff_category_ids")
        if things is None or stuff is None:
            return None, None
        ids = None if thing_ids is None or stuff_ids is None else [*thing_ids, *stuff_ids]
        return [*things, *stuff], ids

    def data_categories(self, dataset):
        return [*dataset.class_names, *dataset.stuff_names], [*dataset.category_ids, *dataset.stuff_category_ids]

    def evaluate(self, model, dataset, *, output_dir=None, progress=True, iteration=None, tile=None,
                 tile_overlap=DEFAULT_OVERLAP, max_dets=DEFAULT_MAX_DETS, backend=DEFAULT_BACKEND, max_pairs=None,
                 category_ids=None):
        _refuse_instance_options(tile=tile, max_dets=max_dets, backend=backend, max_pairs=max_pairs)
        if output_dir is not None and iteration is not None:
            output_dir = Path(output_dir) / f"iter{iteration:07d}"
        return evaluate_panoptic(model, dataset, output_dir=output_dir, progress=progress, category_ids=category_ids)

    def format_table(self, metrics, *, max_dets=DEFAULT_MAX_DETS):
        return format_pq_table(metrics)

    def format_summary(self, metrics):
        return ", ".join(f"{row} PQ={metrics[row]['PQ']:.3f}" for row in ("All", "Things", "Stuff"))

    def demo_headline(self, metrics):
        return (f"PQ = {metrics['All']['PQ']:.3f} (things {metrics['Things']['PQ']:.3f}, "
                f"stuff {metrics['Stuff']['PQ']:.3f}) (goal: {self.demo.goal})")

    def load_predictor(self, weights, *, score_threshold=0.3, compile=False, max_image_pixels=None, tta_sizes=None):
        if tta_sizes is not None:
            raise ValueError(f"--tta works on instance models, not on panoptic weights ({weights})")
        return PanopticPredictor.from_weights(weights, compile=compile, max_image_pixels=max_image_pixels)

    def predict_files(self, predictor, images, out_dir, *, show_bases=False, tile=None, tile_overlap=DEFAULT_OVERLAP,
                      progress=False):
        _refuse_instance_options(tile=tile)
        overlays = predict_panoptic_files(predictor, images, out_dir)
        return PredictionFiles(results_json=Path(out_dir) / PANOPTIC_PREDICTIONS_JSON, overlays=overlays)

    def export_onnx(self, cfg, out, *, weights, opset):
        from blendmask.deploy.onnx_export import resolve_model
        from blendmask.deploy.panoptic import export_panoptic_onnx

        # the graph adds the semantic logits; the panoptic fusion stays in Python
        return export_panoptic_onnx(resolve_model(cfg, weights), out, opset=opset)


def _transforms_and_reading(input_cfg, augment: bool):
    """A dataset's training augmentation (with ``augment``) and image reading rules from a config's
    ``input`` section (None: no augmentation, the default reading)."""
    if augment and input_cfg is None:
        raise ValueError("augment needs the config's input section (input_cfg)")
    transforms = build_train_transforms(input_cfg) if augment else None
    return transforms, ImageReading.from_config(input_cfg) if input_cfg is not None else ImageReading()


def _refuse_instance_options(*, tile: Tile = None, max_dets: int = DEFAULT_MAX_DETS, backend: str = DEFAULT_BACKEND,
                             max_pairs: Optional[int] = None) -> None:
    """Refuse, in one line, the options only instance models have (a panoptic model has no tiled
    prediction, and PQ no maxDets)."""
    if tile is not None:
        raise ValueError("tile (--tile) applies to instance models; these weights are a panoptic model")
    if max_dets != DEFAULT_MAX_DETS:
        raise ValueError("max_dets (--max-dets) applies to instance models (COCO AP); these weights are a "
                         "panoptic model (PQ)")
    if backend != DEFAULT_BACKEND or max_pairs is not None:
        raise ValueError("backend and max_pairs (--eval-backend, --max-eval-pairs) apply to instance models (COCO AP); "
                         "these weights are a panoptic model (PQ)")


INSTANCE: Task = InstanceTask()
PANOPTIC: Task = PanopticTask()
TASKS: Dict[str, Task] = {task.name: task for task in (INSTANCE, PANOPTIC)}
_BY_DATA_FORMAT = {task.data_format: task for task in TASKS.values()}


def task_of_config(cfg: BlendMaskConfig) -> Task:
    """The task of a model config: :data:`PANOPTIC` when ``model.panoptic.enabled``."""
    return PANOPTIC if cfg.model.panoptic.enabled else INSTANCE


def task_of_weights(weights: PathLike) -> Task:
    """The task of a weights file, by its embedded config. A file without a config is taken as
    instance weights: building its model then says what it lacks."""
    config = load_checkpoint(weights).get("config")
    model = config.get("model", {}) if isinstance(config, dict) else {}
    return PANOPTIC if model.get("panoptic", {}).get("enabled") else INSTANCE


def task_of_data(data: PathLike) -> Task:
    """The task of a data set (a directory or a COCO JSON file), by the format of its annotations."""
    return _BY_DATA_FORMAT[detect_format(data)]
