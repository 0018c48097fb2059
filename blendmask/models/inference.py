"""The inference path: one entry point that turns a trained model into the model that predicts.

:func:`optimize_for_inference` is what :class:`blendmask.predict.Predictor`,
:class:`blendmask.predict_panoptic.PanopticPredictor`, :func:`blendmask.evaluation.evaluate_model`
(and so ``blendmask eval``, ``blendmask predict`` and the evaluation during training) run. Call it
yourself for ``model.eval()`` inference::

    fast = optimize_for_inference(model)      # a folded copy; ``model`` is untouched
    results = fast(images)                    # same API and outputs as model.eval()(images)

Steps (each keeps the outputs equal to the plain eager eval model within float rounding; see
tests/test_inference_path.py):

1. batch norms folded into their convolutions (:func:`blendmask.models.fuse.fold_batchnorm`):
   FrozenBN in the backbone, eval-mode BN in the basis module / bottom / panoptic head.
2. channels_last (default on): weights and activations in the channels_last memory format,
   which oneDNN's convolutions prefer. Measured on 1 CPU thread (``benchmarks/bench_inference.py``):
   on top of the fold, backbone 1.13x (R_50, 512) and 1.31x (lite), FCOS head 1.06x / 1.10x.

The returned model is inference-only (it refuses ``train()``); checkpoints are written from
the original, whose state-dict keys are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .fuse import fold_batchnorm

__all__ = ["optimize_for_inference", "inference_model_of"]


def _to_channels_last(module: nn.Module, args):
    """Forward pre-hook: the backbone's ``(N, 3, H, W)`` input in channels_last memory format."""
    return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])


def optimize_for_inference(model: nn.Module, *, inplace: bool = False, channels_last: bool = True) -> nn.Module:
    """The inference model of ``model`` (see the module docstring): a copy unless ``inplace``,
    in eval mode, batch norms folded; with ``channels_last``, weights and activations in the
    channels_last memory format."""
    model = fold_batchnorm(model, inplace=inplace)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.backbone.register_forward_pre_hook(_to_channels_last)
    return model


def inference_model_of(model: nn.Module) -> nn.Module:
    """What the evaluation and prediction code runs for ``model``: the :func:`optimize_for_inference`
    copy of a :class:`~blendmask.models.BlendMask` (panoptic included) that is not one already;
    any other module (a DDP wrapper, a test double) as it is."""
    from .blendmask import BlendMask  # deferred: blendmask.py is the larger import

    if isinstance(model, BlendMask) and not getattr(model, "inference_only", False):
        return optimize_for_inference(model)
    return model
