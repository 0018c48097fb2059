"""Deprecated alias of :mod:`blendmask.models.bottom` (the bottom modules' package); it goes in the next version."""
from blendmask._deprecation import warn_renamed

warn_renamed("blendmask.models.basis", "blendmask.models.bottom")

from blendmask.models.bottom import (  # noqa: E402
    ProtoNet,
    SemanticHead,
    channels_of,
    conv_block,
    semantic_targets_from_instances,
)

__all__ = ["ProtoNet", "SemanticHead", "channels_of", "conv_block", "semantic_targets_from_instances"]
