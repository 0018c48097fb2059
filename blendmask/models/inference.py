"""Deprecated alias of :mod:`blendmask.models.inference_path` (renamed); it goes in the next version."""
from blendmask._deprecation import warn_renamed

warn_renamed("blendmask.models.inference", "blendmask.models.inference_path")

from blendmask.models.inference_path import (  # noqa: E402
    CompiledStage,
    compile_report,
    compiled_stages,
    inference_model_of,
    optimize_for_inference,
)

__all__ = ["optimize_for_inference", "inference_model_of", "CompiledStage", "compiled_stages", "compile_report"]
