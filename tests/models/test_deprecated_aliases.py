"""Names that moved keep working for one version, warn, and name their new place; the blender's
modes are defined once and the model's blender holds them."""
from __future__ import annotations

import importlib
import sys
import typing

import pytest

from blendmask import blend_modes, ops
from blendmask.config import BlenderConfig

RENAMED_MODULES = [  # old module, new module, names the old one served
    ("blendmask.models.basis", "blendmask.models.bottom",
     ["ProtoNet", "SemanticHead", "semantic_targets_from_instances", "conv_block", "channels_of"]),
    ("blendmask.models.fuse", "blendmask.models.batchnorm_folding",
     ["fold_batchnorm", "is_foldable_norm", "NAMED_PAIRS", "INFERENCE_ONLY_ATTRIBUTE"]),
    ("blendmask.models.inference", "blendmask.models.inference_path",
     ["optimize_for_inference", "inference_model_of", "compile_report", "compiled_stages", "CompiledStage"]),
]


@pytest.mark.parametrize("old, new, names", RENAMED_MODULES)
def test_a_renamed_module_warns_and_serves_the_new_objects(monkeypatch, old, new, names):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=rf"{old} is deprecated .*use {new}$"):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(target, name), name


@pytest.mark.parametrize("old", ["blendmask.engine", "blendmask.engine.checkpoint"])
def test_load_model_from_weights_moved_to_the_models(old):
    from blendmask.models import load_model_from_weights

    module = importlib.import_module(old)
    with pytest.warns(FutureWarning, match=rf"{old}.load_model_from_weights is deprecated .*"
                                           r"use blendmask.models.load_model_from_weights$"):
        assert module.load_model_from_weights is load_model_from_weights
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope


def test_the_blender_modes_are_defined_once():
    hints = typing.get_type_hints(BlenderConfig)
    assert typing.get_args(hints["top_interp"]) == blend_modes.TOP_INTERP_MODES == ops.TOP_INTERP_MODES
    assert typing.get_args(hints["normalize"]) == blend_modes.NORMALIZE_MODES == ops.NORMALIZE_MODES
    assert typing.get_args(hints["bottom_interp"]) == blend_modes.BOTTOM_INTERP_MODES == ops.BOTTOM_INTERP_MODES
    assert typing.get_args(hints["merge"]) == blend_modes.MERGE_MODES == ("blender", "assembler")


def test_the_model_holds_an_ops_blender_with_the_config_settings():
    from blendmask.models import blendmask_mobilenet_v2_fpn

    model = blendmask_mobilenet_v2_fpn(num_classes=2, **{"model.blender.top_interp": "nearest",
                                                         "model.blender.bottom_resolution": 28})
    blender = model.blender
    assert isinstance(blender, ops.Blender)
    assert (blender.output_size, blender.spatial_scale, blender.top_interp, blender.normalize) == (
        28, 1.0 / model.basis_module.out_stride, "nearest", "softmax")
    assert not any(key.startswith("blender.") for key in model.state_dict())  # checkpoints' keys unchanged
    for name in ("bottom_resolution", "top_interp", "normalize", "bottom_interp", "sampling_ratio", "aligned"):
        assert not hasattr(model, name), name  # one copy of each setting: the blender's
