"""BlendMask models: backbones + FPN, FCOS, basis module, the meta-architecture and builders."""
from .blendmask import BlendMask
from .builders import (
    blendmask_mobilenet_v2_fpn,
    blendmask_resnet50_fpn,
    blendmask_resnet101_fpn,
    build_model,
    load_model_from_weights,
    load_weights,
)
from .inference_path import optimize_for_inference
from .panoptic import PanopticBlendMask

__all__ = [
    "BlendMask",
    "PanopticBlendMask",
    "build_model",
    "load_weights",
    "load_model_from_weights",
    "optimize_for_inference",
    "blendmask_resnet50_fpn",
    "blendmask_resnet101_fpn",
    "blendmask_mobilenet_v2_fpn",
]
