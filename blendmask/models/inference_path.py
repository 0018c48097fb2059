"""The inference path: one entry point that turns a trained model into the model that predicts.

:func:`optimize_for_inference` is what :class:`blendmask.predict.Predictor`,
:class:`blendmask.predict_panoptic.PanopticPredictor`, :func:`blendmask.evaluation.evaluate_model`
(and so ``blendmask eval``, ``blendmask predict`` and the evaluation during training) run. Call it
yourself for ``model.eval()`` inference::

    fast = optimize_for_inference(model)      # a folded copy; ``model`` is untouched
    results = fast(images)                    # same API and outputs as model.eval()(images)

Steps (each keeps the outputs equal to the plain eager eval model within float rounding; see
tests/models/test_inference_path.py):

1. batch norms folded into their convolutions (:func:`blendmask.models.batchnorm_folding.fold_batchnorm`):
   FrozenBN in the backbone, eval-mode BN in the basis module / bottom / panoptic head.
2. channels_last (default on): weights and activations in the channels_last memory format,
   which oneDNN's convolutions prefer (:func:`blendmask.models.memory_format.use_channels_last`).
3. ``winograd`` (default on): the 3x3 stride-1 convolutions of 64 channels or more run by
   Winograd F(4x4, 3x3) on float32 CPU inputs (:mod:`blendmask.models.winograd`): fewer
   multiplies, for a larger rounding error than the direct convolution's (float32 tolerance, not
   bit equality). Other devices and dtypes run the ordinary convolution.

What each step gains is measured by ``benchmarks/bench_inference.py`` and
``benchmarks/bench_winograd.py`` (the benchmarks page of the docs).
4. ``compile=True`` (``blendmask predict --compile``, ``blendmask eval --compile``): the backbone +
   FPN and the FCOS head are each ``torch.compile``d (inductor, with freezing: the
   folded weights become constants). Compilation is lazy: the first call of each new input size
   pays it (see :class:`CompiledStage`'s ``compile_seconds``). Where inductor cannot compile (no
   working C++ compiler, for example) the model falls back to eager with one warning.

The returned model is inference-only (it refuses ``train()``); checkpoints are written from
the original, whose state-dict keys are unchanged.
"""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Any, Callable, List

import torch
from torch import nn

from .batchnorm_folding import INFERENCE_ONLY_ATTRIBUTE, fold_batchnorm
from .memory_format import use_channels_last
from .winograd import use_winograd

__all__ = ["optimize_for_inference", "inference_model_of", "CompiledStage", "compiled_stages", "compile_report"]


class _FallbackState:
    """Shared by the compiled stages of one model: once one fails to compile, all run eagerly
    and one warning has been given."""

    def __init__(self) -> None:
        self.failed = False


class CompiledStage:
    """A ``torch.compile``d function that falls back to its eager original when inductor cannot
    compile (a ``BackendCompilerFailed``: no C++ compiler, an unsupported op), warning once per model.

    ``compile_seconds`` lists the duration of every call that compiled (the first call, then any
    call on a new input shape that recompiled), ``run_seconds`` that of every other call.
    """

    def __init__(self, name: str, eager: Callable, state: _FallbackState):
        self.name = name
        self.eager = eager
        self.compiled = torch.compile(eager, backend="inductor", options={"freezing": True})
        self.state = state
        self.compile_seconds: List[float] = []
        self.run_seconds: List[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state.failed:
            return self.eager(*args, **kwargs)
        from torch._dynamo.exc import BackendCompilerFailed
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except BackendCompilerFailed as exc:
            self.state.failed = True
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"--compile: torch.compile (inductor) cannot compile the model here, running it "
                          f"eagerly instead ({reason})", RuntimeWarning, stacklevel=2)
            return self.eager(*args, **kwargs)
        seconds = time.perf_counter() - start
        (self.compile_seconds if counters["stats"]["unique_graphs"] != before else self.run_seconds).append(seconds)
        return out


def compiled_stages(model: nn.Module) -> List[CompiledStage]:
    """The :class:`CompiledStage` s of a model built with ``optimize_for_inference(compile=True)``."""
    return [f for f in (getattr(model.backbone, "forward", None), getattr(model.proposal_generator, "forward", None))
            if isinstance(f, CompiledStage)]


def compile_report(model: nn.Module) -> str:
    """One line on a compiled model's stages: the time spent compiling, apart from the steady-state
    median time of a call; empty for a model without compiled stages."""
    stages = compiled_stages(model)
    if not stages:
        return ""
    if stages[0].state.failed:
        return "--compile: inductor could not compile here; ran eagerly"
    compile_s = sum(sum(s.compile_seconds) for s in stages)
    compiles = sum(len(s.compile_seconds) for s in stages)
    parts = [f"--compile: compiling took {compile_s:.1f} s ({compiles} graphs)"]
    for s in stages:
        if s.run_seconds:
            parts.append(f"{s.name} steady state {1000 * statistics.median(s.run_seconds):.1f} ms "
                         f"(median of {len(s.run_seconds)} calls)")
    return "; ".join(parts)


def optimize_for_inference(model: nn.Module, *, inplace: bool = False, channels_last: bool = True,
                           winograd: bool = True, compile: bool = False) -> nn.Module:
    """The inference model of ``model`` (see the module docstring): a copy unless ``inplace``,
    in eval mode, batch norms folded; with ``channels_last``, weights and activations in the
    channels_last memory format; with ``winograd``, the eligible 3x3 convolutions rewired to
    Winograd F(4x4, 3x3) (:func:`blendmask.models.winograd.use_winograd`); with ``compile``,
    backbone and head compiled by inductor (:class:`CompiledStage`, eager fallback). Call it
    under ``torch.no_grad()`` (freezing)."""
    model = fold_batchnorm(model, inplace=inplace)
    if channels_last:
        use_channels_last(model)
    if winograd:
        use_winograd(model)
    if compile:
        state = _FallbackState()
        model.backbone.forward = CompiledStage("backbone", model.backbone.forward, state)
        model.proposal_generator.forward = CompiledStage("head", model.proposal_generator.forward, state)
    return model


def inference_model_of(model: nn.Module, *, compile: bool = False) -> nn.Module:
    """What the evaluation and prediction code runs for ``model``: the :func:`optimize_for_inference`
    copy (with ``compile``, compiled) of a :class:`~blendmask.models.BlendMask` (panoptic included)
    that is not one already; any other module (a DDP wrapper, a test double) as it is."""
    from .blendmask import BlendMask  # deferred: blendmask.py is the larger import

    if isinstance(model, BlendMask) and not getattr(model, INFERENCE_ONLY_ATTRIBUTE, False):
        return optimize_for_inference(model, compile=compile)
    return model
