"""Builders: a :class:`BlendMask` from a config (:func:`build_model`) or from a weights file
(:func:`load_model_from_weights`, :func:`load_weights`), and torchvision-style constructors.

A weights file is ``{"model": state_dict, "config": BlendMaskConfig.to_dict(), ...}`` (training
checkpoints, :mod:`blendmask.engine.checkpoint`, are weights files with more entries)."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..config import BlendMaskConfig, get_config
from ..serialization import load_checkpoint
from .backbone import build_backbone
from .blendmask import BlendMask
from .bottom import BottomModule, DeepLabV3PlusBottom, ProtoNet
from .fcos import FCOS
from .transform import ImageTransform

__all__ = [
    "build_model",
    "load_weights",
    "load_model_from_weights",
    "blendmask_resnet50_fpn",
    "blendmask_resnet101_fpn",
    "blendmask_mobilenet_v2_fpn",
]


def _level_name(stride: int) -> str:
    level = math.log2(stride)
    if stride < 1 or level != int(level):
        raise ValueError(f"FPN strides must be powers of two, got {stride}")
    return f"p{int(level)}"


def _build_basis_module(m, backbone) -> BottomModule:
    """The bottom module of ``m.basis`` on FPN levels (``p*``) and/or backbone stages (``c3``..``c5``,
    which turns on ``backbone.return_stages``)."""
    strides = {**backbone.strides, **backbone.stage_strides}
    channels = {**{name: backbone.out_channels for name in backbone.strides}, **backbone.stage_channels}
    for name in m.basis.in_features:
        if name not in strides:
            hint = " (set model.backbone.fpn_with_p2=true for P2)" if name == "p2" else ""
            raise ValueError(f"model.basis.in_features: the backbone has no level {name!r}; it provides FPN levels "
                             f"{sorted(backbone.strides)} and backbone stages {sorted(backbone.stage_strides)}{hint}")
    if any(name in backbone.stage_strides for name in m.basis.in_features):
        backbone.return_stages = True
    common = dict(in_features=m.basis.in_features, in_channels={n: channels[n] for n in m.basis.in_features},
                  in_stride=strides[m.basis.in_features[0]], num_bases=m.basis.num_bases, norm=m.basis.norm,
                  num_classes=m.num_classes, loss_on=m.basis.loss_on, loss_weight=m.basis.loss_weight)
    if m.basis.module == "deeplabv3plus":
        return DeepLabV3PlusBottom(width=m.basis.convs_dim, **common)
    return ProtoNet(convs_dim=m.basis.convs_dim, num_convs=m.basis.num_convs, **common)


def build_model(cfg: BlendMaskConfig, *, weights_backbone: Optional[str] = None) -> BlendMask:
    """A randomly initialised :class:`BlendMask` for ``cfg`` (backbone weights from ``weights_backbone``).

    ``weights_backbone`` is forwarded to :func:`blendmask.models.backbone.build_backbone`.
    The basis module uses plain BatchNorm; converting it to SyncBatchNorm for multi-process
    training is the trainer's job (see :mod:`blendmask.models.bottom.base`).
    """
    if not isinstance(cfg, BlendMaskConfig):
        raise TypeError(f"cfg must be a BlendMaskConfig, got {type(cfg).__name__}")
    m = cfg.model
    if m.num_classes < 1:
        raise ValueError(f"model.num_classes must be >= 1, got {m.num_classes}")
    backbone = build_backbone(m.backbone, weights_backbone=weights_backbone)
    fcos_in_features = [_level_name(s) for s in m.fcos.fpn_strides]
    available = set(backbone.strides)
    for name in fcos_in_features:
        if name not in available:
            raise ValueError(f"the backbone has no FPN level {name!r}; it provides {sorted(available)}")
    proposal_generator = FCOS(
        in_channels=backbone.out_channels,
        num_classes=m.num_classes,
        strides=m.fcos.fpn_strides,
        sizes_of_interest=m.fcos.sizes_of_interest,
        num_cls_convs=m.fcos.num_cls_convs,
        num_box_convs=m.fcos.num_box_convs,
        num_share_convs=m.fcos.num_share_convs,
        norm=m.fcos.norm,
        use_scale=m.fcos.use_scale,
        prior_prob=m.fcos.prior_prob,
        center_sample=m.fcos.center_sample,
        pos_radius=m.fcos.pos_radius,
        focal_alpha=m.fcos.focal_alpha,
        focal_gamma=m.fcos.focal_gamma,
        thresh_with_ctr=m.fcos.thresh_with_ctr,
        score_thresh=m.fcos.inference_th,
        pre_nms_topk=m.fcos.pre_nms_topk,
        nms_thresh=m.fcos.nms_th,
        post_nms_topk=m.fcos.post_nms_topk,
    )
    basis_module = _build_basis_module(m, backbone)  # after FCOS: the seeded initialisation order is kept
    transform = ImageTransform(
        min_size_train=cfg.input.min_size_train,
        min_size_train_sampling=cfg.input.min_size_train_sampling,
        max_size_train=cfg.input.max_size_train,
        min_size_test=cfg.input.min_size_test,
        max_size_test=cfg.input.max_size_test,
        size_divisibility=cfg.input.size_divisibility,
        pixel_mean=backbone.pixel_mean,
        pixel_std=backbone.pixel_std,
        input_format=backbone.input_format,
        num_classes=m.num_classes,
    )
    kwargs = dict(
        backbone=backbone,
        transform=transform,
        proposal_generator=proposal_generator,
        basis_module=basis_module,
        fcos_in_features=fcos_in_features,
        in_channels=backbone.out_channels,
        num_classes=m.num_classes,
        num_bases=m.basis.num_bases,
        attn_size=m.blender.attn_size,
        bottom_resolution=m.blender.bottom_resolution,
        top_interp=m.blender.top_interp,
        normalize=m.blender.normalize,
        bottom_interp=m.blender.bottom_interp,
        merge=m.blender.merge,
        sampling_ratio=m.blender.sampling_ratio,
        aligned=m.blender.aligned,
    )
    if m.panoptic.enabled:
        return _build_panoptic(cfg, backbone, kwargs)
    return BlendMask(**kwargs)


def _build_panoptic(cfg: BlendMaskConfig, backbone, blendmask_kwargs: Dict[str, Any]):
    """A :class:`~blendmask.models.panoptic.PanopticBlendMask` (``model.panoptic.enabled``)."""
    from .panoptic import PanopticBlendMask, SemSegFPNHead

    p = cfg.model.panoptic
    missing = [name for name in p.in_features if name not in backbone.strides]
    if missing:
        hint = " (set model.backbone.fpn_with_p2=true for P2)" if "p2" in missing else ""
        raise ValueError(f"model.panoptic.in_features {list(p.in_features)}: the backbone has no FPN level "
                         f"{missing[0]!r}; it provides {sorted(backbone.strides)}{hint}")
    if p.num_stuff_classes < 1:
        raise ValueError(f"model.panoptic.num_stuff_classes must be >= 1, got {p.num_stuff_classes}")
    head = SemSegFPNHead(in_features=p.in_features, in_strides=[backbone.strides[f] for f in p.in_features],
                         in_channels=backbone.out_channels, num_classes=p.num_stuff_classes + 1,
                         conv_dims=p.convs_dim, common_stride=p.common_stride, norm=p.norm,
                         loss_weight=p.loss_weight, ignore_value=p.ignore_value)
    return PanopticBlendMask(sem_seg_head=head, instances_score_thresh=p.instances_score_thresh,
                             overlap_thresh=p.overlap_thresh, stuff_area_limit=p.stuff_area_limit,
                             **blendmask_kwargs)


def load_weights(model: BlendMask, path: Union[str, os.PathLike], cfg: Optional[BlendMaskConfig] = None) -> Dict[str, Any]:
    """Load a blendmask weights file (``{"model": state_dict, "config": ...}``) into ``model``, strictly.

    The file is read by :func:`blendmask.serialization.load_checkpoint` (``weights_only=True``,
    one-line errors for missing, corrupt and malformed files). When both the file and ``cfg``
    carry a config, their ``model`` sections must agree. Returns the loaded file's dict.
    """
    ckpt = load_checkpoint(path, what="weights file")
    if cfg is not None and isinstance(ckpt.get("config"), dict):
        saved = BlendMaskConfig.from_dict(ckpt["config"]).to_dict()["model"]
        ours = cfg.to_dict()["model"]
        diffs = _diff(saved, ours, "model")
        if diffs:
            raise ValueError(f"{path} was saved with a different model config: " + "; ".join(diffs))
    model.load_state_dict(ckpt["model"], strict=True)
    return ckpt


def load_model_from_weights(path: Union[str, os.PathLike], *,
                            device: Union[str, torch.device] = "cpu") -> Tuple[BlendMask, BlendMaskConfig]:
    """Rebuild the model described by a weights file's embedded config and load its weights.

    Returns ``(model, cfg)`` with the model in eval mode on ``device``.
    """
    data = load_checkpoint(path)
    if "config" not in data:
        raise ValueError(f"{path} has no embedded 'config'; convert AdelaiDet checkpoints with `blendmask convert`")
    cfg = BlendMaskConfig.from_dict(data["config"])
    model = build_model(cfg, weights_backbone=None)
    missing, unexpected = model.load_state_dict(data["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config {cfg.name!r}: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    return model.to(device).eval(), cfg


def _diff(a: Any, b: Any, prefix: str) -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}")
        return out
    return [] if a == b else [f"{prefix}: file has {a!r}, requested {b!r}"]


def _build_named(preset: str, num_classes: int, weights, weights_backbone, overrides: Dict[str, Any]) -> BlendMask:
    cfg = get_config(preset, {"model.num_classes": num_classes, **overrides})
    model = build_model(cfg, weights_backbone=None if weights is not None else weights_backbone)
    if weights is not None:
        load_weights(model, weights, cfg)
    return model


def blendmask_resnet50_fpn(
    num_classes: int = 80,
    weights: Optional[Union[str, os.PathLike]] = None,
    weights_backbone: Optional[str] = None,
    **overrides: Any,
) -> BlendMask:
    """BlendMask R-50-FPN (AdelaiDet's ``R_50_3x`` model: R=56, M=14, K=4).

    Args:
        num_classes: foreground classes.
        weights: path of a blendmask weights file to load strictly (its ``model`` config must
            match); when given, ``weights_backbone`` is ignored.
        weights_backbone: backbone ImageNet weights, see
            :func:`blendmask.models.backbone.build_backbone`.
        **overrides: dotted config keys, e.g. ``**{"model.blender.attn_size": 7}``.
    """
    return _build_named("R_50_3x", num_classes, weights, weights_backbone, overrides)


def blendmask_resnet101_fpn(
    num_classes: int = 80,
    weights: Optional[Union[str, os.PathLike]] = None,
    weights_backbone: Optional[str] = None,
    **overrides: Any,
) -> BlendMask:
    """BlendMask R-101-FPN (AdelaiDet's ``R_101_3x``); arguments as :func:`blendmask_resnet50_fpn`."""
    return _build_named("R_101_3x", num_classes, weights, weights_backbone, overrides)


def blendmask_mobilenet_v2_fpn(
    num_classes: int = 80,
    weights: Optional[Union[str, os.PathLike]] = None,
    weights_backbone: Optional[str] = None,
    **overrides: Any,
) -> BlendMask:
    """Lite BlendMask on MobileNetV2-FPN P3-P5 (preset ``lite_mobilenet_v2``) for CPU work;
    arguments as :func:`blendmask_resnet50_fpn`."""
    return _build_named("lite_mobilenet_v2", num_classes, weights, weights_backbone, overrides)
