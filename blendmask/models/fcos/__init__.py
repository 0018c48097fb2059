"""FCOS, the anchor-free one-stage detector BlendMask builds on (AdelaiDet-compatible)."""
from .fcos import FCOS
from .head import FCOSHead, FCOSHeadOutputs, Scale

__all__ = ["FCOS", "FCOSHead", "FCOSHeadOutputs", "Scale"]
