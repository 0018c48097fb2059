"""channels_last for a whole model: weights and activations in the memory format that oneDNN's
(CPU) and cuDNN's (GPU) convolutions prefer, without layout conversions around every call.

Used by the inference path (:func:`blendmask.models.optimize_for_inference`) and by the trainer
(``solver.channels_last``). The model computes the same function; only float rounding differs.
Its speed is measured by ``benchmarks/bench_inference.py`` (the benchmarks page of the docs).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["use_channels_last"]

_MARK = "_channels_last_input"


def _to_channels_last(module: nn.Module, args):
    """Forward pre-hook: the backbone's ``(N, 3, H, W)`` input in channels_last memory format."""
    return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])


def use_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D weights converted to channels_last in place and, when it has a
    ``backbone`` (a BlendMask), the backbone's input converted on entry, so that activations stay
    channels_last through the convolutions. Idempotent. Returns ``model``."""
    model.to(memory_format=torch.channels_last)
    if hasattr(model, "backbone") and not getattr(model.backbone, _MARK, False):
        model.backbone.register_forward_pre_hook(_to_channels_last)
        setattr(model.backbone, _MARK, True)
    return model
