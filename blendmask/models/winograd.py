"""Winograd F(4x4, 3x3) for the 3x3 convolutions of the CPU inference path.

A 3x3, stride-1 convolution computed by Winograd's minimal filtering (Lavin & Gray, CVPR 2016)
takes 36 multiplies per 4 x 4 output tile and input channel instead of 144. The compiled op
``torch.ops.blendmask.winograd_conv3x3`` (csrc/cpu/winograd_cpu.cpp) transforms 6 x 6 input
windows, runs 36 matrix products per block of tiles through ATen's sgemm and transforms back.
``benchmarks/bench_winograd.py`` measures its time against oneDNN's direct convolution. The
transformed filters ``(36, C, O)`` take four times the memory of the ``(O, C, 3, 3)`` weights they
stand for.

Non-finite inputs spread differently: a NaN or inf anywhere in a tile's 6 x 6 input window makes
the whole 4 x 4 output tile NaN (the transforms add and subtract the window's values), where the
direct convolution spreads it to the 3 x 3 neighbourhood only.

The price is rounding: the transforms' coefficients (up to 8 and 1/24) make the error about
six times that of the direct convolution, ~1e-5 of the output's scale in float32
(tests/models/test_winograd.py measures both against float64). That is float32 tolerance, not bit
equality, which is why it is a step of the inference path that can be turned off
(``optimize_for_inference(model, winograd=False)``) and is never used in training.

:func:`use_winograd` rewires every eligible convolution of a module (:func:`is_eligible`) in place: the
conv keeps its weight and module type, gains a non-persistent ``winograd_weight`` buffer
``(36, C, O)`` (the transformed filter ``G g G^T``, computed once in float64) and an instance
``_conv_forward`` (the hook ``nn.Conv2d.forward`` calls, so subclasses that call
``super().forward``, such as the MSRA ResNet's ``ConvNorm``, are covered) that runs the Winograd op
on float32 CPU inputs without autograd, and the ordinary convolution otherwise (another device
or dtype, or a gradient to compute).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _extension
from .layers import DeformConvNorm
from .top_layer import TopLayer

__all__ = ["use_winograd", "is_eligible", "transform_weight", "winograd_conv3x3", "MIN_CHANNELS"]

#: Convolutions with fewer input or output channels stay direct: below this their matrix
#: products are too thin to gain (``benchmarks/bench_winograd.py`` times the thin ones too).
MIN_CHANNELS = 64

# F(4x4, 3x3)'s filter transform G (6 x 3), Lavin & Gray's choice of points 0, +-1, +-2, infinity
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)


def transform_weight(weight: Tensor) -> Tensor:
    """``(O, C, 3, 3)`` filters -> ``(36, C, O)`` float32 ``U[i*6 + j] = (G g G^T)[i, j]``,
    computed in float64 (what ``winograd_conv3x3`` takes)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected (O, C, 3, 3) filters, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ip,ocpq,jq->ijco", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


def winograd_conv3x3(input: Tensor, weight_transformed: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``conv2d(input, weight, bias, stride=1, padding=1)`` by Winograd F(4x4, 3x3).

    Args:
        input: ``(N, C, H, W)`` float32 on the CPU, any memory format.
        weight_transformed: ``(36, C, O)`` float32, :func:`transform_weight` of the ``(O, C, 3, 3)`` filters.
        bias: optional ``(O,)`` float32.
    Returns:
        ``(N, O, H, W)`` float32, in the input's memory format as ``conv2d`` (the op works in
        channels_last: an NCHW input costs a copy on the way in and on the way out).
    """
    return torch.ops.blendmask.winograd_conv3x3(input, weight_transformed, bias)


def is_eligible(conv: nn.Module) -> bool:
    """Whether :func:`use_winograd` rewires ``conv``: an ``nn.Conv2d`` that is 3x3, stride 1,
    padding 1, dilation 1, one group, zero padding, with at least :data:`MIN_CHANNELS` input and
    output channels; not a deformable conv (its ``forward`` samples its own taps) nor BlendMask's
    top layer (evaluated at the detections only, never as a dense convolution)."""
    return (
        isinstance(conv, nn.Conv2d)
        and not isinstance(conv, (DeformConvNorm, TopLayer))
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


class _WinogradConvForward:
    """The ``_conv_forward`` of a rewired conv (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d):
        self.conv = conv
        self.direct = type(conv)._conv_forward.__get__(conv)

    def __call__(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        transformed = self.conv.winograd_weight
        if (input.device.type == "cpu" and input.dtype == torch.float32 and input.dim() == 4
                and weight is self.conv.weight and transformed.dtype == torch.float32
                and transformed.device.type == "cpu" and not (torch.is_grad_enabled() and (
                    input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)))):
            return winograd_conv3x3(input, transformed, bias)
        return self.direct(input, weight, bias)


def use_winograd(module: nn.Module) -> int:
    """Rewire every eligible convolution of ``module`` whose weight is float32 on the CPU, in place
    (module docstring); returns how many. Call it on an inference copy whose weights are final
    (after batch-norm folding): the transformed filters are computed now. Convolutions on a GPU are
    left alone (cuDNN picks Winograd itself, and the filters would only take GPU memory). Does
    nothing without the compiled extension."""
    if not _extension.extension_loaded():
        return 0
    count = 0
    for conv in module.modules():
        if (is_eligible(conv) and not hasattr(conv, "winograd_weight") and conv.weight.device.type == "cpu"
                and conv.weight.dtype == torch.float32):
            conv.register_buffer("winograd_weight", transform_weight(conv.weight), persistent=False)
            conv._conv_forward = _WinogradConvForward(conv)
            count += 1
    return count
