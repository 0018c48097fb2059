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

The returned model is inference-only (it refuses ``train()``); checkpoints are written from
the original, whose state-dict keys are unchanged.
"""
from __future__ import annotations

from torch import nn

from .fuse import fold_batchnorm

__all__ = ["optimize_for_inference", "inference_model_of"]


def optimize_for_inference(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The inference model of ``model`` (see the module docstring): a copy unless ``inplace``,
    in eval mode, batch norms folded."""
    return fold_batchnorm(model, inplace=inplace)


def inference_model_of(model: nn.Module) -> nn.Module:
    """What the evaluation and prediction code runs for ``model``: the :func:`optimize_for_inference`
    copy of a :class:`~blendmask.models.BlendMask` (panoptic included) that is not one already;
    any other module (a DDP wrapper, a test double) as it is."""
    from .blendmask import BlendMask  # deferred: blendmask.py is the larger import

    if isinstance(model, BlendMask) and not getattr(model, "inference_only", False):
        return optimize_for_inference(model)
    return model
