"""Configuration: plain dataclasses, with presets named after AdelaiDet's configs.

A config is a tree of dataclasses: ``BlendMaskConfig(model=..., input=..., solver=...)``.
``get_config(name, overrides)`` returns a preset with dotted-key overrides applied, e.g.
``get_config("R_50_3x", {"solver.base_lr": 0.02, "model.blender.attn_size": 7})``.

NOTE: skeleton; field defaults follow AdelaiDet's Base-BlendMask.yaml and are to be
completed by the model work (issue 3).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple


@dataclass
class BackboneConfig:
    name: str = "resnet50"  # "resnet50" | "resnet101" | "mobilenet_v2"
    layout: str = "msra"  # "msra" (detectron2/AdelaiDet) | "torchvision"
    norm: str = "FrozenBN"  # "FrozenBN" | "BN" | "GN"
    freeze_at: int = 2
    fpn_out_channels: int = 256
    fpn_top_levels: int = 2  # P6/P7 from P5: 2 -> P3-P7, 1 -> P3-P6, 0 -> P3-P5


@dataclass
class FCOSConfig:
    fpn_strides: Tuple[int, ...] = (8, 16, 32, 64, 128)
    sizes_of_interest: Tuple[int, ...] = (64, 128, 256, 512)
    num_cls_convs: int = 4
    num_box_convs: int = 4
    num_share_convs: int = 0
    norm: str = "GN"
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
    top_interp: str = "bilinear"  # "bilinear" | "nearest"
    sampling_ratio: int = 1
    aligned: bool = True


@dataclass
class ModelConfig:
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    basis: BasisConfig = field(default_factory=BasisConfig)
    blender: BlenderConfig = field(default_factory=BlenderConfig)


@dataclass
class InputConfig:
    min_size_train: Tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisibility: int = 32
    hflip_prob: float = 0.5


@dataclass
class SolverConfig:
    ims_per_batch: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 1.0 / 1000
    steps: Tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    max_iter: int = 90000
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0: evaluate only at the end
    clip_grad_norm: float = 0.0  # 0: no clipping
    amp: bool = True  # used only on CUDA


@dataclass
class BlendMaskConfig:
    name: str = "R_50_1x"
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BlendMaskConfig":
        return _from_dict(cls, data, prefix="")


def _from_dict(cls, data: Mapping[str, Any], prefix: str):
    if not isinstance(data, Mapping):
        raise ValueError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys in {prefix or '<root>'!r}: {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if not dataclasses.is_dataclass(known[name].type) else None
        sub = getattr(cls(), name)
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _from_dict(type(sub), value, prefix + name + ".")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
