"""ONNX export of BlendMask's whole inference graph.

The exported graph maps the normalised, padded image to the final detections:

- inputs: ``images (1, 3, Hp, Wp)`` float32 (``Hp``, ``Wp`` dynamic multiples of the model's
  size divisibility) and ``image_size (2,)`` int64 ``[h, w]`` of the resized image before padding;
- outputs: ``boxes (n, 4)`` float32 xyxy in the resized image (unclipped: the boxes the masks
  were blended with), ``scores (n,)``, ``labels (n,)``
  int64 and ``masks (n, R, R)`` mask probabilities inside the boxes (see :class:`InferenceGraph`).

It holds the backbone and FCOS, the decoding with ``TopK`` and ``NonMaxSuppression``
(class-aware through per-class box offsets), the basis module, and the blender in standard ops
(``RoiAlign`` with ``coordinate_transformation_mode="half_pixel"`` for ``aligned=True``,
``Resize``, ``Softmax``, ``Mul``, ``ReduceSum``) from :func:`blendmask.ops.blend_reference`.
Resizing the input image and pasting the masks into it stay in Python
(:class:`blendmask.deploy.OnnxPredictor`, :func:`blendmask.models.blendmask.postprocess_detections`).

Exporter: ``torch.onnx.export(..., dynamo=True)``. Both exporters of torch 2.14 produce a
correct graph for this model; the ``torch.export``-based one is used because it traces with
symbolic shapes (a size that would be baked into the graph fails the export instead of
silently specialising it), it is the same trace as the ``torch.export`` deployment path, and
the TorchScript exporter is deprecated (it warns on every call). It is slower to export
(about 10x, tens of seconds for the lite model), which only matters once per model.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from blendmask.config import BlendMaskConfig, get_config
from blendmask.data.images import ImageReading
from blendmask.models import BlendMask, build_model, load_weights

from .graph import export_program

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ROIALIGN_HALF_PIXEL_OPSET",
    "check_opset",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "TRANSFORM_METADATA_KEY",
    "READING_METADATA_KEY",
    "export_onnx",
    "resolve_model",
]

DEFAULT_OPSET = 18
#: ``RoiAlign`` gained ``coordinate_transformation_mode`` (``half_pixel`` = ``aligned=True``) in opset 16.
ROIALIGN_HALF_PIXEL_OPSET = 16
#: The exporter translates to opset-18 ops; its down-conversion to 16/17 writes invalid models
#: (e.g. ``ReduceMax`` keeps the opset-18 attribute ``noop_with_empty_axes``).
MIN_OPSET = 18
INPUT_NAMES = ("images", "image_size")
OUTPUT_NAMES = ("boxes", "scores", "labels", "masks")
#: ONNX metadata entry holding the keyword arguments of the model's ``ImageTransform`` (JSON).
TRANSFORM_METADATA_KEY = "blendmask.image_transform"
#: ONNX metadata entry holding how image files are read for the model (``ImageReading.to_dict``, JSON).
READING_METADATA_KEY = "blendmask.image_reading"

PathLike = Union[str, os.PathLike]


def check_opset(opset: int) -> int:
    """Return ``opset`` if the exported graph can be expressed in it, else raise ``ValueError``."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < ROIALIGN_HALF_PIXEL_OPSET:
        raise ValueError(
            f"opset {opset} is too old: the blender needs RoiAlign with coordinate_transformation_mode="
            f"'half_pixel' (aligned=True), which ONNX added in opset {ROIALIGN_HALF_PIXEL_OPSET}; "
            f"use opset {MIN_OPSET} or newer (default {DEFAULT_OPSET})"
        )
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old for this exporter: torch.onnx (dynamo) emits opset-18 ops and its "
            f"conversion down to opset {opset} produces an invalid model; use opset {MIN_OPSET} or newer"
        )
    return opset


def resolve_model(model_or_cfg: Union[BlendMask, BlendMaskConfig, str], weights: Optional[PathLike] = None) -> BlendMask:
    """The eval-mode model to export.

    Args:
        model_or_cfg: a :class:`BlendMask`, a :class:`BlendMaskConfig`, or a preset name of
            :func:`blendmask.config.get_config` (e.g. ``"lite_mobilenet_v2"``).
        weights: optional blendmask weights file (``{"model": state_dict, "config": ...}``),
            loaded strictly; without it a config or name gives randomly initialised weights.
    """
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    if isinstance(model_or_cfg, BlendMask):
        model = model_or_cfg
        if weights is not None:
            load_weights(model, weights)
    else:
        if isinstance(model_or_cfg, str):
            cfg = get_config(model_or_cfg)  # ValueError naming the unknown preset and the known ones
        elif isinstance(model_or_cfg, BlendMaskConfig):
            cfg = model_or_cfg
        else:
            raise TypeError(
                f"model_or_cfg must be a BlendMask, a BlendMaskConfig or a config name, got {type(model_or_cfg).__name__}"
            )
        model = build_model(cfg)
        if weights is not None:
            load_weights(model, weights, cfg)
        else:
            warnings.warn(f"exporting config {cfg.name!r} with randomly initialised weights (no weights file given)",
                          stacklevel=3)
    return model.eval()


def _transform_metadata(model: BlendMask) -> str:
    """JSON of the ``ImageTransform`` keyword arguments the predictor needs to rebuild it for eval."""
    t = model.transform
    return json.dumps({
        "min_size_test": t.min_size_test,
        "max_size_test": t.max_size_test,
        "size_divisibility": t.size_divisibility,
        "pixel_mean": t.pixel_mean.flatten().tolist(),
        "pixel_std": t.pixel_std.flatten().tolist(),
        "input_format": t.input_format,
    })


def export_onnx(
    model_or_cfg: Union[BlendMask, BlendMaskConfig, str],
    out_path: PathLike,
    *,
    weights: Optional[PathLike] = None,
    opset: int = DEFAULT_OPSET,
    max_side: int = 4096,
    reading: Optional[ImageReading] = None,
) -> Path:
    """Export the whole inference graph to ONNX (see the module docstring for its inputs/outputs).

    Args:
        model_or_cfg: a :class:`BlendMask`, a :class:`BlendMaskConfig` or a preset name.
        out_path: the ``.onnx`` file to write (parent directories are created).
        weights: optional weights file to load first (see :func:`resolve_model`).
        opset: ONNX opset, at least :data:`MIN_OPSET`.
        max_side: the largest padded image side the graph accepts (a bound of the dynamic shapes).
        reading: how image files are to be read for the model, written to the metadata
            (:data:`READING_METADATA_KEY`); default: the config's ``input`` rules (a model
            given without its config: the defaults).
    Returns:
        the path written.
    Raises:
        ValueError: an opset below :data:`MIN_OPSET`, or a model with ``bottom_interp="nearest"``
            (ONNX ``RoiAlign`` has no nearest sampling; the export refuses it rather than
            emitting a gather-based crop). ``normalize="sigmoid"`` exports as ``Sigmoid`` ops.
    """
    check_opset(opset)
    model = resolve_model(model_or_cfg, weights)
    if model.blender.bottom_interp != "bilinear":
        raise ValueError(
            f"ONNX export of model.blender.bottom_interp={model.blender.bottom_interp!r} is not supported: ONNX RoiAlign "
            "samples bilinearly only (mode 'avg'/'max' pool bilinear samples); export a model with "
            "model.blender.bottom_interp='bilinear'"
        )
    exported = export_program(model, reference_blender=True, max_side=max_side)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        exported,
        dynamo=True,
        opset_version=opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        verbose=False,
    )
    program.model.metadata_props[TRANSFORM_METADATA_KEY] = _transform_metadata(model)
    if reading is None:
        reading = (ImageReading() if isinstance(model_or_cfg, BlendMask) else
                   ImageReading.from_config((get_config(model_or_cfg) if isinstance(model_or_cfg, str)
                                             else model_or_cfg).input))
    program.model.metadata_props[READING_METADATA_KEY] = json.dumps(reading.to_dict())
    program.save(str(out_path))
    return out_path
