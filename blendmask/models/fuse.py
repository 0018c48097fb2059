"""Deprecated alias of :mod:`blendmask.models.batchnorm_folding` (renamed); it goes in the next version."""
from blendmask._deprecation import warn_renamed

warn_renamed("blendmask.models.fuse", "blendmask.models.batchnorm_folding")

from blendmask.models.batchnorm_folding import (  # noqa: E402
    INFERENCE_ONLY_ATTRIBUTE,
    NAMED_PAIRS,
    fold_batchnorm,
    is_foldable_norm,
)

__all__ = ["fold_batchnorm", "NAMED_PAIRS", "is_foldable_norm", "INFERENCE_ONLY_ATTRIBUTE"]
