"""The blender: BlendMask's mask-assembly op (docs/design.md §1-2).

For roi ``d`` with batch index ``b`` and output pixel ``(i, j)``::

    r[k]      = RoIAlign(bases[b, k], rois[d])(i, j)      # crop, torchvision roi_align rules
    a[k]      = F.interpolate(attns[d, k], (R, R))(i, j)   # bilinear or nearest
    out[d, i, j] = sum_k softmax_k(a)[k] * r[k]             # normalize="softmax" (a logit)
    out[d, i, j] = sum_k sigmoid(a[k]) * sigmoid(r[k])      # normalize="sigmoid" (a probability)

With ``bottom_interp="nearest"`` the crop takes, at each RoIAlign sample point, the value of the
nearest base cell instead of the bilinear interpolation (RoIPool-style sampling, see
:func:`blend`).

``blend`` runs the fused C++/CUDA op ``torch.ops.blendmask.blend`` (one kernel, custom
backward ``torch.ops.blendmask.blend_backward`` that recomputes instead of storing).
``blend_reference`` is the unfused pure-PyTorch chain (torchvision ``roi_align`` ->
``F.interpolate`` -> softmax over K -> weighted sum): the test oracle, the fallback when
the extension is missing, and the ONNX export path.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from blendmask import _extension
from blendmask.blend_modes import (
    BOTTOM_INTERP_MODES,
    NORMALIZE_MODES,
    TOP_INTERP_MODES,
    BottomInterp,
    Normalize,
    TopInterp,
)

__all__ = ["blend", "blend_reference", "Blender", "TOP_INTERP_MODES", "NORMALIZE_MODES", "BOTTOM_INTERP_MODES",
           "TopInterp", "Normalize", "BottomInterp"]

RoIs = Union[Tensor, List[Tensor]]
#: The largest ``sampling_ratio`` a call accepts (C++ ``math::kMaxSamplingRatio``).
MAX_SAMPLING_RATIO = 128


def _rois_to_tensor(rois: RoIs) -> Tensor:
    """Turn a list of per-image ``(Di, 4)`` boxes into ``(D, 5)`` rois with batch indices."""
    if isinstance(rois, (list, tuple)):
        if len(rois) == 0:
            raise ValueError("blend: rois is an empty list; pass one (Di, 4) tensor per image")
        parts = []
        for i, boxes in enumerate(rois):
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"blend: rois[{i}] must be a (Di, 4) tensor of boxes, got {shape}")
            idx = torch.full((boxes.shape[0], 1), i, dtype=boxes.dtype, device=boxes.device)
            parts.append(torch.cat([idx, boxes], dim=1))
        return torch.cat(parts, dim=0)
    if not isinstance(rois, Tensor):
        raise TypeError(f"blend: rois must be a (D, 5) tensor or a list of (Di, 4) tensors, got {type(rois).__name__}")
    return rois


def coordinate_dtype(feature_dtype: torch.dtype) -> torch.dtype:
    """The dtype rois are read and the blend accumulates in: float64 for float64 features,
    float32 for float32, float16 and bfloat16 (C++ ``coordinate_dtype`` / ``at::opmath_type``)."""
    return torch.float64 if feature_dtype == torch.float64 else torch.float32


def _check_inputs(
    bases: Tensor, attns: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
    top_interp: str, normalize: str, bottom_interp: str,
) -> None:
    """The fused op's contract for the reference: the same C++ checks and messages
    (``blendmask::check_blend_inputs``: shapes, dtypes, devices, scalars, roi values).

    Skipped while tracing or compiling (the ONNX export traces the reference; the fused op's
    Meta kernel runs the same checks there). Without the extension, only the bounds that keep the
    reference from a silent wrong answer or an allocation beyond reason are checked here: the
    ``sampling_ratio`` limit and integer batch indices.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    if not _extension.extension_loaded():
        if not 0 <= sampling_ratio <= MAX_SAMPLING_RATIO:
            raise ValueError(f"blend: sampling_ratio must be in [0, {MAX_SAMPLING_RATIO}] (samples per bin along "
                             f"each axis; 0 = adaptive), got {sampling_ratio}")
        index = rois[:, 0] if rois.dim() == 2 and rois.shape[1:] == (5,) else rois.new_zeros(0)
        bad = ((index != index.floor()) | (index < 0) | (index >= bases.shape[0])).nonzero()
        if len(bad):
            d = int(bad[0])
            raise ValueError(f"blend: rois[{d}] has batch index {float(index[d])}, which is not an integer in "
                             f"[0, {bases.shape[0]}) for {bases.shape[0]} images")
        return
    torch.ops.blendmask.check_blend_inputs(
        bases, attns, rois, output_size, spatial_scale, sampling_ratio, top_interp, normalize, bottom_interp
    )


def _check_mode(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"blend: {name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _nearest_index(coord: Tensor, size: int) -> Tensor:
    """Nearest cell along one axis (C++ ``math::axis_taps_nearest``): clamp into the map, round
    half up: ``min(floor(max(coord, 0) + 0.5), size - 1)``."""
    return torch.floor(coord.clamp(min=0) + 0.5).clamp(max=size - 1).long()


def _roi_geometry(rois: Tensor, spatial_scale: float, aligned: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(start_h, start_w, roi_h, roi_w)``, each ``(D,)``, of rois ``(D, 5)`` in the bases' pixels,
    computed in the rois' dtype (``math::roi_geometry``, torchvision's RoIAlign): shifted by half a
    pixel when ``aligned``, at least 1 pixel wide and tall when not."""
    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * spatial_scale - offset
    start_h = rois[:, 2] * spatial_scale - offset
    roi_w = (rois[:, 3] * spatial_scale - offset) - start_w
    roi_h = (rois[:, 4] * spatial_scale - offset) - start_h
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    return start_h, start_w, roi_h, roi_w


def _roi_pool_nearest(
    bases: Tensor, rois: Tensor, r: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """The nearest-cell crop ``(D, K, R, R)``: RoIAlign's sampling grid (torchvision rules, as
    ``math::roi_geometry`` / ``math::sample_coord``), the value of the nearest cell at each
    sample, samples beyond one pixel outside the map count 0, the bin averages its samples.
    ``bases`` and ``rois`` are in the coordinate dtype. One roi at a time when the grid is
    adaptive (``sampling_ratio == 0``: its size depends on the roi), all rois at once otherwise."""
    start_h, start_w, roi_h, roi_w = _roi_geometry(rois, spatial_scale, aligned)
    bin_h, bin_w = roi_h / r, roi_w / r
    if sampling_ratio > 0 or rois.shape[0] == 0:
        return _nearest_crop(bases, rois[:, 0].long(), start_h, start_w, bin_h, bin_w, r, sampling_ratio, sampling_ratio)
    crops = []
    for i in range(rois.shape[0]):
        gh, gw = int(torch.ceil(roi_h[i] / r)), int(torch.ceil(roi_w[i] / r))
        sl = slice(i, i + 1)
        crops.append(_nearest_crop(bases, rois[sl, 0].long(), start_h[sl], start_w[sl], bin_h[sl], bin_w[sl], r, gh, gw))
    return torch.cat(crops)


def _nearest_crop(bases, image, start_h, start_w, bin_h, bin_w, r: int, grid_h: int, grid_w: int) -> Tensor:
    """``(D, K, R, R)`` nearest crops of rois sharing one ``grid_h x grid_w`` sample grid."""
    n, k, h, w = bases.shape
    count = max(grid_h * grid_w, 1)
    flat = bases.flatten(2)  # (N, K, H * W)
    if grid_h <= 0 or grid_w <= 0:  # no samples: zeros, still connected to bases (zero gradient)
        return (flat[image][:, :, :1] * 0)[..., None].expand(-1, k, r, r)
    dtype = bases.dtype

    def coords(start, bin_size, grid):  # (D, R * grid): start + p * bin + (i + 0.5) * bin / grid
        p = torch.arange(r, dtype=dtype, device=bases.device).repeat_interleave(grid)
        i = torch.arange(grid, dtype=dtype, device=bases.device).repeat(r) + 0.5
        return (start[:, None] + p * bin_size[:, None]) + (i * bin_size[:, None]) / grid

    y = coords(start_h, bin_h, grid_h)
    x = coords(start_w, bin_w, grid_w)
    valid_y = ~((y < -1) | (y > h))
    valid_x = ~((x < -1) | (x > w))
    iy, ix = _nearest_index(y, h), _nearest_index(x, w)
    index = iy[:, :, None] * w + ix[:, None, :]  # (D, R*gh, R*gw)
    values = flat[image].gather(2, index.flatten(1)[:, None, :].expand(-1, k, -1)).view(-1, k, r * grid_h, r * grid_w)
    mask = (valid_y[:, :, None] & valid_x[:, None, :]).to(dtype)[:, None]
    values = (values * mask).view(-1, k, r, grid_h, r, grid_w)
    return values.sum(dim=(3, 5)) / count


def blend_reference(
    bases: Tensor,
    attns: Tensor,
    rois: RoIs,
    output_size: int = 56,
    spatial_scale: float = 0.25,
    sampling_ratio: int = 1,
    aligned: bool = True,
    top_interp: TopInterp = "bilinear",
    normalize: Normalize = "softmax",
    bottom_interp: BottomInterp = "bilinear",
) -> Tensor:
    """Unfused blender: crop, upsample, softmax over K (or sigmoids), weighted sum.

    Same arguments and result as :func:`blend`; materialises four ``(D, K, R, R)`` tensors.
    It refuses what the fused op refuses, with the same messages (see :func:`_check_inputs`).
    The bilinear crop is torchvision's ``roi_align`` (ONNX ``RoiAlign``); the nearest crop is
    gathers over the sampling grid (:func:`_roi_pool_nearest`), which the ONNX export refuses.
    """
    rois = _rois_to_tensor(rois)
    _check_mode("normalize", normalize, NORMALIZE_MODES)
    _check_mode("bottom_interp", bottom_interp, BOTTOM_INTERP_MODES)
    _check_inputs(bases, attns, rois, output_size, spatial_scale, sampling_ratio, top_interp, normalize, bottom_interp)
    r = output_size
    dtype = coordinate_dtype(bases.dtype)  # computed as the fused op does: fp16/bf16 in fp32
    if bottom_interp == "bilinear":
        cropped = roi_align(bases.to(dtype), rois.to(dtype), (r, r), spatial_scale, sampling_ratio, aligned)  # (D, K, R, R)
    else:
        cropped = _roi_pool_nearest(bases.to(dtype), rois.to(dtype), r, spatial_scale, sampling_ratio, aligned)
    if top_interp == "bilinear":
        up = F.interpolate(attns.to(dtype), (r, r), mode="bilinear", align_corners=False)
    else:
        up = F.interpolate(attns.to(dtype), (r, r), mode="nearest")
    if normalize == "sigmoid":
        return (up.sigmoid() * cropped.sigmoid()).sum(dim=1).to(bases.dtype)
    weights = up.softmax(dim=1)  # (D, K, R, R)
    return (weights * cropped).sum(dim=1).to(bases.dtype)


def _fused_device_types() -> frozenset:
    return frozenset(t for t in ("cpu", "cuda", "meta") if _extension.has_kernel(t))


_FUSED_DEVICE_TYPES = _fused_device_types()


def blend(
    bases: Tensor,
    attns: Tensor,
    rois: RoIs,
    output_size: int = 56,
    spatial_scale: float = 0.25,
    sampling_ratio: int = 1,
    aligned: bool = True,
    top_interp: TopInterp = "bilinear",
    normalize: Normalize = "softmax",
    bottom_interp: BottomInterp = "bilinear",
) -> Tensor:
    """Fused blender: RoIAlign crop of the bases, attention upsample, softmax over K, blend.

    Args:
        bases: ``(N, K, Hb, Wb)`` bases of N images at stride ``1 / spatial_scale``.
        attns: ``(D, K, M, M)`` attentions, one per roi (M == 1 gives YOLACT-style
            per-instance coefficients). Same dtype and device as ``bases``; floating point
            (float16, bfloat16, float32 or float64).
        rois: ``(D, 5)`` ``[batch_idx, x1, y1, x2, y2]`` boxes in input-image pixels, or a
            list of N per-image ``(Di, 4)`` ``[x1, y1, x2, y2]`` tensors (as torchvision's
            ``roi_align``). Same device as ``bases``; no gradient flows to them. Any floating
            dtype, whatever the dtype of the features: coordinates are read in
            :func:`coordinate_dtype` of the features (float32, or float64 for float64
            features), so float32 boxes are never rounded to half precision. float16 /
            bfloat16 rois are accepted and widened to float32, but their rounding has already
            happened. Integer rois are refused.
        output_size: R, the side of the output masks (>= 1).
        spatial_scale: scale from image pixels to base pixels (0.25 for stride-4 bases).
        sampling_ratio: samples per bin along each axis; 0 picks ``ceil(roi size / R)``.
        aligned: shift boxes by -0.5 pixel (detectron2's ROIAlignV2) when True.
        top_interp: ``"bilinear"`` (``align_corners=False``) or ``"nearest"`` upsampling of
            the attentions, with ``F.interpolate`` semantics.
        normalize: ``"softmax"``: ``out = sum_k softmax_k(a)[k] * r[k]``, a mask logit; or
            ``"sigmoid"``: ``out = sum_k sigmoid(a[k]) * sigmoid(r[k])``, any K (K = 1 is the
            paper's one-basis blender), a mask probability in ``[0, K]`` (``[0, 1]`` for K = 1).
        bottom_interp: how each RoIAlign sample point reads the bases. ``"bilinear"``:
            torchvision's bilinear interpolation. ``"nearest"`` (RoIPool-style): the value of
            the nearest cell, on the same sampling grid and with the same boundary rule: a
            sample at ``y < -1`` or ``y > Hb`` (``x`` likewise) contributes 0; otherwise the
            coordinate is clamped into ``[0, Hb - 1]`` and rounded half up,
            ``index = min(floor(max(y, 0) + 0.5), Hb - 1)``; the gradient of a sample flows to
            that one cell. The bin averages its samples as in RoIAlign.

    Returns:
        ``(D, R, R)`` mask logits (``"softmax"``) or probabilities (``"sigmoid"``),
        differentiable w.r.t. ``bases`` and ``attns``.

    Raises:
        ValueError: wrong ranks or shapes, K or D mismatch, mixed dtypes or devices, a bad
            scalar argument, an unknown ``top_interp`` / ``normalize`` / ``bottom_interp``
            (the message lists the choices), a size or integer argument beyond 32 bits, NaN/inf box
            coordinates or a batch index outside ``[0, N)``. The checks live in C++
            (``csrc/blender.cpp``), once for every backend and the Meta kernel.
    """
    rois = _rois_to_tensor(rois)
    if isinstance(bases, Tensor) and bases.device.type in _FUSED_DEVICE_TYPES:
        # the op checks its arguments itself (blender.cpp), in its Meta kernel too
        return torch.ops.blendmask.blend.default(
            bases, attns, rois, output_size, spatial_scale, sampling_ratio, aligned, top_interp, normalize, bottom_interp
        )
    _extension.warn_fallback_once(getattr(bases, "device", torch.device("cpu")).type)
    return blend_reference(
        bases, attns, rois, output_size, spatial_scale, sampling_ratio, aligned, top_interp, normalize, bottom_interp
    )


class Blender(nn.Module):
    """Holds the blender's settings and modes, and blends with them.

    Keyword-only arguments are those of :func:`blend`; the modes are checked here, against
    :mod:`blendmask.blend_modes`. No parameters or buffers (nothing in a state dict).
    """

    def __init__(
        self, *, output_size: int = 56, spatial_scale: float = 0.25, sampling_ratio: int = 1, aligned: bool = True,
        top_interp: TopInterp = "bilinear", normalize: Normalize = "softmax", bottom_interp: BottomInterp = "bilinear",
    ):
        super().__init__()
        if top_interp not in TOP_INTERP_MODES:
            raise ValueError(f"Blender: top_interp must be one of {TOP_INTERP_MODES}, got {top_interp!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"Blender: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if bottom_interp not in BOTTOM_INTERP_MODES:
            raise ValueError(f"Blender: bottom_interp must be one of {BOTTOM_INTERP_MODES}, got {bottom_interp!r}")
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.top_interp = top_interp
        self.normalize = normalize
        self.bottom_interp = bottom_interp

    def forward(self, bases: Tensor, attns: Tensor, rois: RoIs, *, function: Callable[..., Tensor] = blend) -> Tensor:
        """``(D, R, R)`` blend of bases ``(N, K, Hb, Wb)``, attentions ``(D, K, M, M)`` and rois
        ``(D, 5)`` or a list of ``(Di, 4)``, by ``function``: :func:`blend` (the fused op) or
        :func:`blend_reference` (standard ops, for the ONNX export)."""
        return function(
            bases, attns, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.top_interp,
            self.normalize, self.bottom_interp,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, top_interp={self.top_interp!r}, normalize={self.normalize!r}, "
            f"bottom_interp={self.bottom_interp!r}"
        )


# --- torch.library registrations: autograd (the shape kernels are C++ Meta kernels) ---------


def _blend_setup_context(ctx, inputs: Sequence, output: Tensor) -> None:
    bases, attns, rois, *config = inputs  # output_size ... bottom_interp (defaults filled in)
    ctx.save_for_backward(bases, attns, rois)
    ctx.config = tuple(config)


def _blend_backward(ctx, grad: Tensor):
    """Gradients for ``bases`` and ``attns`` (None for those ``ctx.needs_input_grad`` omits)."""
    need_bases, need_attns = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    bases, attns, rois = ctx.saved_tensors
    grad_bases, grad_attns = torch.ops.blendmask.blend_backward.default(grad, bases, attns, rois, *ctx.config)
    return (grad_bases if need_bases else None, grad_attns if need_attns else None) + (None,) * (1 + len(ctx.config))


def _no_double_backward(ctx, grad_bases, grad_attns):
    raise RuntimeError(
        "blendmask::blend does not support double backward (its backward op blend_backward is not differentiable); "
        "use blend_reference if you need second-order gradients"
    )


def _no_double_backward_setup(ctx, inputs, output) -> None:
    pass


if _extension.extension_loaded():
    torch.library.register_autograd("blendmask::blend", _blend_backward, setup_context=_blend_setup_context)
    torch.library.register_autograd(
        "blendmask::blend_backward", _no_double_backward, setup_context=_no_double_backward_setup
    )
