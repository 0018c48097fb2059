"""The blender: BlendMask's mask-assembly op (DESIGN.md section 1).

``blend`` is the public entry point. ``blend_reference`` is the unfused pure-PyTorch
chain (torchvision ``roi_align`` -> ``F.interpolate`` -> softmax over K -> weighted sum)
that serves as the test oracle, the fallback and the ONNX export path.

NOTE: bootstrap version; the fused op (issue 2) replaces the body of ``blend``.
"""
from __future__ import annotations

from typing import List, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

__all__ = ["blend", "blend_reference", "Blender"]

RoIs = Union[Tensor, List[Tensor]]


def _rois_to_tensor(rois: RoIs) -> Tensor:
    """Turn a list of per-image ``(Di, 4)`` boxes into ``(D, 5)`` rois with batch indices."""
    if isinstance(rois, (list, tuple)):
        parts = []
        for i, boxes in enumerate(rois):
            idx = torch.full((boxes.shape[0], 1), i, dtype=boxes.dtype, device=boxes.device)
            parts.append(torch.cat([idx, boxes], dim=1))
        return torch.cat(parts, dim=0)
    return rois


def blend_reference(
    bases: Tensor,
    attns: Tensor,
    rois: RoIs,
    output_size: int = 56,
    spatial_scale: float = 0.25,
    sampling_ratio: int = 1,
    aligned: bool = True,
    top_interp: str = "bilinear",
) -> Tensor:
    """Unfused blender: crop, upsample, softmax over K, weighted sum.

    Args:
        bases: ``(N, K, Hb, Wb)`` bases.
        attns: ``(D, K, M, M)`` attentions, one per roi.
        rois: ``(D, 5)`` ``[batch_idx, x1, y1, x2, y2]`` in image pixels, or a list of
            per-image ``(Di, 4)`` boxes.
    Returns:
        ``(D, R, R)`` mask logits with ``R = output_size``.
    """
    rois = _rois_to_tensor(rois)
    r = output_size
    cropped = roi_align(bases, rois, (r, r), spatial_scale, sampling_ratio, aligned)  # (D, K, R, R)
    if top_interp == "bilinear":
        up = F.interpolate(attns, (r, r), mode="bilinear", align_corners=False)
    else:
        up = F.interpolate(attns, (r, r), mode="nearest")
    weights = up.softmax(dim=1)
    return (weights * cropped).sum(dim=1)


def blend(bases, attns, rois, output_size=56, spatial_scale=0.25, sampling_ratio=1, aligned=True, top_interp="bilinear"):
    """Fused blender (bootstrap: forwards to the reference)."""
    return blend_reference(bases, attns, rois, output_size, spatial_scale, sampling_ratio, aligned, top_interp)


class Blender(nn.Module):
    """Holds the blender configuration and forwards to :func:`blend`."""

    def __init__(self, *, output_size=56, spatial_scale=0.25, sampling_ratio=1, aligned=True, top_interp="bilinear"):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.top_interp = top_interp

    def forward(self, bases: Tensor, attns: Tensor, rois: RoIs) -> Tensor:
        return blend(bases, attns, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.top_interp)
