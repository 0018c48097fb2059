"""Configuration: plain dataclasses, with presets named after AdelaiDet's configs.

A config is a tree of dataclasses: ``BlendMaskConfig(model=..., input=..., solver=...)``.
``get_config(name, overrides)`` returns a preset with dotted-key overrides applied, e.g.
``get_config("R_50_3x", {"solver.base_lr": 0.02, "model.blender.attn_size": 7})``.

The AdelaiDet presets reproduce ``configs/BlendMask/<name>.yaml`` on top of
``Base-BlendMask.yaml`` (and ``Base-550.yaml`` / ``Base-RT.yaml`` for the 550/RT/DLA variants),
AdelaiDet's ``adet/config/defaults.py`` and detectron2's defaults. ``RT_R_50_4x`` and
``RT_R_50_4x-BN-head`` are configs AdelaiDet removed in May 2020 (P3-P6, from ``Base-550.yaml``),
kept for the checkpoints trained with them. Deliberate translations:

- AdelaiDet's ``SyncBN`` is spelled ``"BN"`` here (backbone, DLA and FCOS head norms); the
  training engine converts BN layers to SyncBN only when a process group exists (docs/design.md §10).
- detectron2's ``FREEZE_AT: -1`` (nothing frozen) is ``freeze_at = 0`` here.
- ``INPUT.CROP`` is ``input.crop_enabled/crop_type/crop_size`` and ``INPUT.MIN_SIZE_TRAIN_SAMPLING``
  is ``input.min_size_train_sampling``; AdelaiDet's ``CROP.CROP_INSTANCE`` is always True here.

``lite_mobilenet_v2`` is our own preset for CPU training on the built-in synthetic set.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from blendmask.blend_modes import BottomInterp, Merge, Normalize, TopInterp
from blendmask.errors import InputTypeError


@dataclass
class BackboneConfig:
    name: str = "resnet50"  # "resnet50" | "resnet101" | "dla34" | "mobilenet_v2"
    # "msra" (detectron2/AdelaiDet names and input convention; dla34: "msra" only)
    # | "torchvision" (mobilenet_v2: "torchvision" only)
    layout: str = "msra"
    norm: str = "FrozenBN"  # "FrozenBN" | "BN" | "GN"
    freeze_at: int = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ..., 5: everything
    fpn_out_channels: int = 256
    fpn_top_levels: int = 2  # P6/P7 from P5: 2 -> P3-P7, 1 -> P3-P6, 0 -> P3-P5
    # Deformable 3x3 convs in the MSRA ResNet (detectron2's RESNETS.DEFORM_*, AdelaiDet's DEFORM_INTERVAL):
    # one flag per stage res2..res5; in a deformable stage, blocks 0, interval, 2*interval, ... get a DCN.
    deform_on_per_stage: Tuple[bool, ...] = (False, False, False, False)
    deform_modulated: bool = False  # DCNv2 (offsets + sigmoid modulation mask) instead of DCNv1
    deform_interval: int = 1
    # detectron2's FPN.IN_FEATURES with "res2": the FPN also builds P2 (stride 4) from the stride-4
    # bottom-up map (the panoptic configs' semantic branch reads P2-P5).
    fpn_with_p2: bool = False


@dataclass
class FCOSConfig:
    fpn_strides: Tuple[int, ...] = (8, 16, 32, 64, 128)
    sizes_of_interest: Tuple[int, ...] = (64, 128, 256, 512)
    num_cls_convs: int = 4
    num_box_convs: int = 4
    num_share_convs: int = 0
    norm: str = "GN"  # "GN" | "BN" (one BatchNorm per FPN level, AdelaiDet's "BN"/"SyncBN") | "none"
    use_scale: bool = False
    prior_prob: float = 0.01
    center_sample: bool = True
    pos_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    thresh_with_ctr: bool = True
    inference_th: float = 0.05
    pre_nms_topk: int = 1000
    nms_th: float = 0.6
    post_nms_topk: int = 100


@dataclass
class BasisConfig:
    module: str = "protonet"  # "protonet" (ProtoNet-FPN) | "deeplabv3plus" (paper Table 7)
    # FPN levels "p2".."p5" or backbone stages "c3", "c5" (paper Table 4); the first sets the stride
    in_features: Tuple[str, ...] = ("p3", "p4", "p5")
    num_bases: int = 4
    convs_dim: int = 128
    num_convs: int = 3
    norm: str = "BN"  # SyncBN is used automatically when a process group exists
    loss_on: bool = True
    loss_weight: float = 0.3


@dataclass
class BlenderConfig:
    attn_size: int = 14  # M
    bottom_resolution: int = 56  # R
    top_interp: TopInterp = "bilinear"
    normalize: Normalize = "softmax"  # K = 1 needs "sigmoid" (paper Table 3)
    bottom_interp: BottomInterp = "bilinear"  # "nearest" is RoIPool-style (Table 6)
    # "assembler" is paper Table 1's FCIS analogue: fixed one-hot attentions, region (i, j) of
    # the M x M grid takes base i*M + j; needs K = M*M and a nearest top
    merge: Merge = "blender"
    sampling_ratio: int = 1
    aligned: bool = True


@dataclass
class PanopticConfig:
    """Panoptic BlendMask (AdelaiDet's ``configs/BlendMask/Panoptic``): detectron2's ``SemSegFPNHead``
    (``MODEL.SEM_SEG_HEAD``) for the stuff classes plus the fusion of ``MODEL.PANOPTIC_FPN.COMBINE``.

    The semantic head predicts ``num_stuff_classes + 1`` classes: 0 is "things" (every thing
    segment merged), ``1..num_stuff_classes`` the stuff categories in increasing id order
    (detectron2's "panoptic_separated" labels); ``ignore_value`` marks void pixels.
    """

    enabled: bool = False
    num_stuff_classes: int = 53  # COCO panoptic: 53 stuff categories (SEM_SEG_HEAD.NUM_CLASSES 54)
    in_features: Tuple[str, ...] = ("p2", "p3", "p4", "p5")
    convs_dim: int = 128
    common_stride: int = 4
    norm: str = "GN"  # "GN" | "none"
    loss_weight: float = 0.5
    ignore_value: int = 255
    instances_score_thresh: float = 0.2  # COMBINE.INSTANCES_CONFIDENCE_THRESH (AdelaiDet's configs: 0.45)
    overlap_thresh: float = 0.4  # COMBINE.OVERLAP_THRESH
    stuff_area_limit: int = 4096  # COMBINE.STUFF_AREA_LIMIT (pixels of the output image)


@dataclass
class ModelConfig:
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    basis: BasisConfig = field(default_factory=BasisConfig)
    blender: BlenderConfig = field(default_factory=BlenderConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)


@dataclass
class LSJConfig:
    """Large-scale jitter (:class:`blendmask.data.jitter.LargeScaleJitter`), applied after the crop and
    before the flip: resize by ``min(out_h / h, out_w / w) * U[scale_range]``, then a random
    ``output_size`` crop or a bottom/right zero pad. Pair it with ``min_size_train = (0,)`` (the model
    then keeps the jittered size) or with ``min_size_train`` equal to the output's short side."""

    enabled: bool = False
    scale_range: Tuple[float, ...] = (0.1, 2.0)
    output_size: Tuple[int, ...] = (1024, 1024)  # (h, w)


@dataclass
class CopyPasteConfig:
    """Simple Copy-Paste (:class:`blendmask.data.copy_paste.CopyPasteDataset`): with probability ``prob``
    a random subset (1 to ``max_instances``) of another augmented training image's instances is pasted on."""

    prob: float = 0.0
    max_instances: int = 100


@dataclass
class InputConfig:
    min_size_train: Tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    # "choice": one of min_size_train; "range": an int drawn uniformly from [min_size_train[0], min_size_train[1]]
    min_size_train_sampling: str = "choice"
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisibility: int = 32
    hflip_prob: float = 0.5
    # detectron2's INPUT.CROP (AdelaiDet's instance-aware variant), applied before the resize:
    # a crop of (h * u, w * v), u ~ U[crop_size[0], 1], v ~ U[crop_size[1], 1] ("relative_range")
    # or exactly (h * crop_size[0], w * crop_size[1]) ("relative"), or (crop_size[0], crop_size[1]) pixels
    # ("absolute": a native-resolution window of a large image), containing the centre of a random instance.
    crop_enabled: bool = False
    crop_type: str = "relative_range"  # "relative_range" | "relative" | "absolute"
    crop_size: Tuple[float, ...] = (0.9, 0.9)
    # detectron2's INPUT.MASK_FORMAT: "polygon" keeps polygon annotations as polygons through the
    # transforms and rasterises them inside their boxes; "bitmask" decodes every mask to (n, H, W).
    mask_format: str = "polygon"
    # How image files are read (blendmask.data.images, blendmask.data.intensity), the same in
    # training, evaluation, prediction and the exported model's metadata. Images deeper than 8 bits
    # map to [0, 1] by "percentile" (the image's own low/high percentiles), "range" (the container's
    # range, e.g. / 65535) or "window" (fixed low/high values); 8-bit images are always / 255.
    intensity: str = "percentile"
    intensity_percentiles: Tuple[float, ...] = (1.0, 99.8)
    intensity_window: Tuple[float, ...] = (0.0, 65535.0)
    image_page: int = 0  # page of a multi-page TIFF
    image_channels: Tuple[int, ...] = ()  # 1 (gray) or 3 (RGB) channel indices; empty: 1, 3 or RGB of 4
    max_image_pixels: int = 2 * 89_478_485  # larger files are refused (Pillow's decompression-bomb size)
    lsj: LSJConfig = field(default_factory=LSJConfig)
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)


@dataclass
class SolverConfig:
    ims_per_batch: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # detectron2's SOLVER.WEIGHT_DECAY_NORM: normalisation layers' parameters
    weight_decay_bias: float = -1.0  # detectron2's SOLVER.WEIGHT_DECAY_BIAS: every bias; < 0 (its None): weight_decay
    warmup_iters: int = 1000
    warmup_factor: float = 1.0 / 1000
    steps: Tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    max_iter: int = 90000
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0: evaluate only at the end
    clip_grad_norm: float = 0.0  # 0: no clipping
    amp: bool = True  # CUDA: float16 autocast with a GradScaler
    amp_cpu: bool = False  # CPU: bfloat16 autocast (bf16 has float32's range: no scaler)
    channels_last: bool = True  # weights and activations in channels_last (blendmask.models.memory_format)


@dataclass
class DataLoaderConfig:
    # "training": every image once per epoch; "repeat_factor": LVIS's repeat-factor sampling
    # (blendmask.data.repeat_factor) with repeat_threshold (detectron2's REPEAT_THRESHOLD)
    sampler: str = "training"
    repeat_threshold: float = 0.0


@dataclass
class BlendMaskConfig:
    name: str = "R_50_1x"
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    dataloader: DataLoaderConfig = field(default_factory=DataLoaderConfig)

    def to_dict(self) -> Dict[str, Any]:
        """Nested plain dict (tuples become lists, so the result is JSON-friendly)."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BlendMaskConfig":
        """Inverse of :meth:`to_dict`. Missing keys keep their defaults; unknown keys and
        values of the wrong type raise ``ValueError``/:class:`~blendmask.errors.InputTypeError`
        (a ``TypeError``) naming the dotted key."""
        return _from_dict(cls, data, prefix="")


# Allowed values of the enumerated fields, checked by from_dict/get_config (fields typed as a
# ``Literal`` take their values from the type).
_CHOICES: Dict[str, Tuple[Any, ...]] = {
    "model.backbone.name": ("resnet50", "resnet101", "dla34", "mobilenet_v2"),
    "model.backbone.layout": ("msra", "torchvision"),
    "model.backbone.norm": ("FrozenBN", "BN", "GN"),
    "model.backbone.fpn_top_levels": (0, 1, 2),
    "model.fcos.norm": ("GN", "BN", "none"),
    "input.min_size_train_sampling": ("choice", "range"),
    "input.crop_type": ("relative_range", "relative", "absolute"),
    "input.mask_format": ("polygon", "bitmask"),
    "input.intensity": ("range", "percentile", "window"),
    "model.panoptic.norm": ("GN", "none"),
    "model.basis.module": ("protonet", "deeplabv3plus"),
    "dataloader.sampler": ("training", "repeat_factor"),
}


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce_scalar(kind: type, value: Any, key: str) -> Any:
    """Check ``value`` against a scalar field type; ints are accepted for float fields."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - every field of this module has one of the types above
        raise TypeError(f"config key {key!r}: unsupported field type {kind!r}")
    if not ok:
        raise InputTypeError(f"config key {key!r} must be {kind.__name__}, got {type(value).__name__} ({value!r})")
    return value


#: The largest image side (pixels) an input size may ask for: beyond it one image alone takes
#: gigabytes before the model runs.
MAX_INPUT_SIDE = 8192
_UPPER_BOUNDS: Dict[str, int] = {key: MAX_INPUT_SIDE for key in (
    "input.min_size_train", "input.max_size_train", "input.min_size_test", "input.max_size_test")}


def _check_upper_bound(key: str, value: Any) -> None:
    bound = _UPPER_BOUNDS.get(key)
    values = value if isinstance(value, tuple) else (value,)
    if bound is not None and any(v > bound for v in values):
        raise ValueError(f"config key {key!r} must be at most {bound} pixels, got {value!r}")


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if typing.get_origin(hint) in (tuple, Tuple):
        (item_kind, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise InputTypeError(f"config key {key!r} must be a list/tuple of {item_kind.__name__}, "
                            f"got {type(value).__name__} ({value!r})")
        value = tuple(_coerce_scalar(item_kind, v, f"{key}[{i}]") for i, v in enumerate(value))
        _check_upper_bound(key, value)
        return value
    literal_values = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
    value = _coerce_scalar(type(literal_values[0]) if literal_values else hint, value, key)
    _check_upper_bound(key, value)
    choices = literal_values or _CHOICES.get(key)
    if choices is not None and value not in choices:
        raise ValueError(f"config key {key!r} must be one of {list(choices)}, got {value!r}")
    return value


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str):
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(data, Mapping):
        raise InputTypeError(f"config section {where!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys in {where!r}: {unknown}; known keys: {known}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, key + ".")
        else:
            kwargs[name] = _coerce(hint, value, key)
    return cls(**kwargs)


# --------------------------------------------------------------------------- presets

_SCHEDULE_3X = {"solver.steps": (210000, 250000), "solver.max_iter": 270000}

# Base-550.yaml: P3-P6, a shared 3-conv tower instead of separate cls/box towers, 2 basis convs.
_BASE_550 = {
    "model.backbone.fpn_top_levels": 1,
    "model.fcos.fpn_strides": (8, 16, 32, 64),
    "model.fcos.sizes_of_interest": (64, 128, 256),
    "model.fcos.num_share_convs": 3,
    "model.fcos.num_cls_convs": 0,
    "model.fcos.num_box_convs": 0,
    "model.basis.num_convs": 2,
    "input.min_size_train": (440, 462, 484, 506, 528, 550),
    "input.max_size_train": 916,
    "input.min_size_test": 550,
    "input.max_size_test": 916,
}

# Base-RT.yaml: P3-P5 on Base-BlendMask.yaml, smaller images, the 4x schedule.
_BASE_RT = {
    "model.backbone.fpn_top_levels": 0,
    "model.fcos.fpn_strides": (8, 16, 32),
    "model.fcos.sizes_of_interest": (64, 128),
    "input.min_size_train": (256, 288, 320, 352, 384, 416, 448, 480, 512, 544, 576, 608),
    "input.max_size_train": 900,
    "input.min_size_test": 512,
    "input.max_size_test": 736,
    "solver.steps": (300000, 340000),
    "solver.max_iter": 360000,
}

# RESNETS.NORM "SyncBN" with FREEZE_AT -1: a trainable BN ResNet, nothing frozen.
_SYNCBN_BACKBONE = {"model.backbone.norm": "BN", "model.backbone.freeze_at": 0}

# The shared-tower ("shtw") head of Base-550.yaml and the RT_*_shtw configs.
_SHARED_TOWER = {
    "model.fcos.num_share_convs": 3,
    "model.fcos.num_cls_convs": 0,
    "model.fcos.num_box_convs": 0,
    "model.basis.num_convs": 2,
}

# DEFORM_ON_PER_STAGE [False, True, True, True], DEFORM_MODULATED True, DEFORM_INTERVAL 3.
_DCNI3 = {
    "model.backbone.deform_on_per_stage": (False, True, True, True),
    "model.backbone.deform_modulated": True,
    "model.backbone.deform_interval": 3,
}

# The dcni3_5x recipe: MIN_SIZE_TRAIN_SAMPLING "range" and INPUT.CROP.ENABLED (relative_range 0.9).
_RANGE_AND_CROP = {"input.min_size_train_sampling": "range", "input.crop_enabled": True}

# RT_R_50_4x.yaml (removed from AdelaiDet in May 2020): Base-550.yaml (P3-P6) with the RT images and schedule.
_RT_R_50_4X = {
    **_BASE_550,
    **_SYNCBN_BACKBONE,
    **{k: v for k, v in _BASE_RT.items() if k.startswith(("input.", "solver."))},
}

_PRESETS: Dict[str, Dict[str, Any]] = {
    # Base-BlendMask.yaml + R_50_1x.yaml: the dataclass defaults.
    "R_50_1x": {},
    "R_50_3x": dict(_SCHEDULE_3X),
    "R_101_3x": {"model.backbone.name": "resnet101", **_SCHEDULE_3X},
    "R_101_dcni3_5x": {
        "model.backbone.name": "resnet101",
        **_DCNI3,
        **_RANGE_AND_CROP,
        "input.min_size_train": (640, 864),
        "input.max_size_train": 1440,
        "solver.steps": (280000, 360000),
        "solver.max_iter": 400000,
        "solver.eval_period": 20000,
    },
    "550_R_50_3x": {**_BASE_550, **_SCHEDULE_3X},
    "550_R_50_dcni3_5x": {
        **_BASE_550,
        **_DCNI3,
        **_RANGE_AND_CROP,
        "input.min_size_train": (440, 594),
        "input.max_size_train": 990,
        **_SCHEDULE_3X,
    },
    "Base-RT": dict(_BASE_RT),
    "RT_R_50_4x": dict(_RT_R_50_4X),
    # RT_R_50_4x-BN-head.yaml (removed with RT_R_50_4x.yaml): FCOS.NORM "SyncBN", per-level BN in the head.
    "RT_R_50_4x-BN-head": {**_RT_R_50_4X, "model.fcos.norm": "BN"},
    "RT_R_50_4x_syncbn_shtw": {**_BASE_RT, **_SYNCBN_BACKBONE, **_SHARED_TOWER},
    "RT_R_50_4x_bn-head_syncbn_shtw": {**_BASE_RT, **_SYNCBN_BACKBONE, **_SHARED_TOWER, "model.fcos.norm": "BN"},
    # DLA_34_syncbn_4x.yaml: Base-RT.yaml with DLA-34 (DLA.NORM "SyncBN", FREEZE_AT -1) and its FPN on level3-level5.
    "DLA_34_syncbn_4x": {**_BASE_RT, "model.backbone.name": "dla34", **_SYNCBN_BACKBONE},
    # Ours: MobileNetV2-FPN P3-P5 with light heads, for CPU training on ~300-512 px images.
    "lite_mobilenet_v2": {
        "model.backbone.name": "mobilenet_v2",
        "model.backbone.layout": "torchvision",
        "model.backbone.norm": "FrozenBN",
        "model.backbone.freeze_at": 2,
        "model.backbone.fpn_out_channels": 128,
        "model.backbone.fpn_top_levels": 0,
        "model.fcos.fpn_strides": (8, 16, 32),
        "model.fcos.sizes_of_interest": (64, 128),
        "model.fcos.num_cls_convs": 2,
        "model.fcos.num_box_convs": 2,
        "model.basis.convs_dim": 64,
        "model.basis.num_convs": 2,
        "model.blender.attn_size": 7,
        "input.min_size_train": (288, 320, 352, 384, 416),
        "input.max_size_train": 512,
        "input.min_size_test": 352,
        "input.max_size_test": 512,
        "solver.ims_per_batch": 4,
        "solver.base_lr": 0.01,
        "solver.warmup_iters": 100,
        "solver.steps": (1500, 1800),
        "solver.max_iter": 2000,
        "solver.checkpoint_period": 500,
        "solver.amp": False,
    },
}


# configs/BlendMask/Panoptic/Base-Panoptic.yaml: P2 in the FPN (RESNETS.OUT_FEATURES res2-res5), the
# semantic head with LOSS_WEIGHT 0.5 and COMBINE (INSTANCES_CONFIDENCE_THRESH 0.45, OVERLAP_THRESH 0.4).
_BASE_PANOPTIC = {
    "model.backbone.fpn_with_p2": True,
    "model.panoptic.enabled": True,
    "model.panoptic.loss_weight": 0.5,
    "model.panoptic.instances_score_thresh": 0.45,
    "model.panoptic.overlap_thresh": 0.4,
}
_PRESETS.update({
    "Panoptic_R_50_1x": dict(_BASE_PANOPTIC),
    "Panoptic_R_50_3x": {**_BASE_PANOPTIC, **_SCHEDULE_3X},
    "Panoptic_R_101_3x": {**_BASE_PANOPTIC, "model.backbone.name": "resnet101", **_SCHEDULE_3X},
    "Panoptic_R_50_dcni3_5x": {
        **_BASE_PANOPTIC, **_DCNI3, **_RANGE_AND_CROP,
        "input.min_size_train": (640, 864), "input.max_size_train": 1440,
        "solver.steps": (280000, 360000), "solver.max_iter": 400000,
    },
    "Panoptic_R_101_dcni3_5x": {
        **_BASE_PANOPTIC, "model.backbone.name": "resnet101", **_DCNI3, **_RANGE_AND_CROP,
        "input.min_size_train": (640, 864), "input.max_size_train": 1333,
        "solver.steps": (280000, 360000), "solver.max_iter": 400000,
    },
    # Ours: the lite preset with P2 and a light semantic head; the fusion at the dataclass defaults
    # (score 0.2, overlap 0.4) with the stuff area limit scaled to ~256 px images.
    "lite_mobilenet_v2_panoptic": {
        **_PRESETS["lite_mobilenet_v2"],
        "model.backbone.fpn_with_p2": True,
        "model.panoptic.enabled": True,
        "model.panoptic.num_stuff_classes": 3,
        "model.panoptic.convs_dim": 64,
        "model.panoptic.stuff_area_limit": 256,
    },
})


def list_configs() -> List[str]:
    """Names of the presets accepted by :func:`get_config`."""
    return list(_PRESETS)


def apply_overrides(data: Dict[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Set dotted keys (``"solver.base_lr"``) in a nested dict from :meth:`BlendMaskConfig.to_dict`.

    Raises ``ValueError`` naming the key if a path does not exist; values are type-checked
    later by :meth:`BlendMaskConfig.from_dict`.
    """
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping of dotted keys to values, got {type(overrides).__name__}")
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"override keys must be non-empty dotted strings, got {key!r}")
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "<root>"
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise ValueError(f"unknown config key {key!r}: {where!r} has no field {part!r}; known: {known}")
            if depth == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ValueError(f"config key {key!r} is a section; override its fields instead")
                node[part] = value
            else:
                node = node[part]
    return data


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """Command-line overrides, ``["solver.max_iter=300", "input.min_size_train=(256,288)"]``,
    as ``{dotted key: value}`` for :func:`get_config`.

    Values are read as JSON (``300``, ``0.01``, ``true``, ``[256, 288]``, ``"text"``), then as a
    Python literal (``(256, 288)``, ``True``), else kept as a plain string (``mobilenet_v2``);
    lists become tuples. Raises ``ValueError`` for an item that is not ``KEY=VALUE``.
    """
    overrides: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"bad override {item!r}: expected KEY=VALUE, e.g. solver.max_iter=300")
        overrides[key] = _parse_value(text.strip())
    return overrides


def _parse_value(text: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # not this syntax, or too deep
            continue
        return tuple(value) if isinstance(value, list) else value
    return text


def get_config(name: str, overrides: Optional[Mapping[str, Any]] = None) -> BlendMaskConfig:
    """The preset ``name`` (see :func:`list_configs`) with dotted-key ``overrides`` applied."""
    if name not in _PRESETS:
        raise ValueError(f"unknown config name {name!r}; available: {list_configs()}")
    data = apply_overrides(BlendMaskConfig(name=name).to_dict(), _PRESETS[name])
    if overrides:
        data = apply_overrides(data, overrides)
    return BlendMaskConfig.from_dict(data)
