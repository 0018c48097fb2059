"""The blender's modes, defined once: ``Literal`` types and the tuples of their values.

:class:`blendmask.ops.Blender` (which owns the modes of the blend), :class:`blendmask.models.BlendMask`
(the merge of the top and bottom modules) and the config (its ``model.blender`` choices) take them
from here. This module imports nothing but ``typing``: the config, which the command line reads
before torch is imported, depends on it.
"""
from __future__ import annotations

from typing import Literal, get_args

__all__ = ["TopInterp", "Normalize", "BottomInterp", "Merge", "TOP_INTERP_MODES", "NORMALIZE_MODES",
           "BOTTOM_INTERP_MODES", "MERGE_MODES"]

#: How the ``M x M`` attentions are upsampled to ``R x R`` (``F.interpolate`` semantics).
TopInterp = Literal["bilinear", "nearest"]
#: ``"softmax"`` over K (the blend is a mask logit) or ``"sigmoid"`` (``sum_k sigmoid(a_k) sigmoid(r_k)``).
Normalize = Literal["softmax", "sigmoid"]
#: How the crop reads the bases: ``"bilinear"`` (RoIAlign) or ``"nearest"`` (RoIPool-style).
BottomInterp = Literal["bilinear", "nearest"]
#: Merge strategies of the top and bottom modules (paper Table 1): ``"blender"`` learns the
#: attentions (the top layer); ``"assembler"`` (FCIS-like) fixes them to one-hot.
Merge = Literal["blender", "assembler"]

TOP_INTERP_MODES = get_args(TopInterp)
NORMALIZE_MODES = get_args(Normalize)
BOTTOM_INTERP_MODES = get_args(BottomInterp)
MERGE_MODES = get_args(Merge)
