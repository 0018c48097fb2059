"""Config presets (values from AdelaiDet's configs/BlendMask/*.yaml), overrides and (de)serialisation."""
import json

import pytest

from blendmask.config import BlendMaskConfig, get_config, list_configs, parse_overrides
from blendmask.errors import InputTypeError, is_user_error

PRESETS = ["R_50_1x", "R_50_3x", "R_101_3x", "R_101_dcni3_5x", "550_R_50_3x", "550_R_50_dcni3_5x", "Base-RT",
           "RT_R_50_4x", "RT_R_50_4x-BN-head", "RT_R_50_4x_syncbn_shtw", "RT_R_50_4x_bn-head_syncbn_shtw",
           "DLA_34_syncbn_4x", "lite_mobilenet_v2",
           # configs/BlendMask/Panoptic/*.yaml and the lite panoptic preset
           "Panoptic_R_50_1x", "Panoptic_R_50_3x", "Panoptic_R_101_3x", "Panoptic_R_50_dcni3_5x",
           "Panoptic_R_101_dcni3_5x", "lite_mobilenet_v2_panoptic"]


def test_list_configs_names_exactly_the_presets():
    assert sorted(list_configs()) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips_through_dict_and_json(name):
    cfg = get_config(name)
    assert cfg.name == name
    data = json.loads(json.dumps(cfg.to_dict()))
    assert BlendMaskConfig.from_dict(data) == cfg


def test_base_blendmask_values_match_adelaidet():
    cfg = get_config("R_50_1x")
    m = cfg.model
    assert (m.backbone.name, m.backbone.layout, m.backbone.norm, m.backbone.freeze_at) == ("resnet50", "msra", "FrozenBN", 2)
    assert m.backbone.fpn_top_levels == 2 and m.fcos.fpn_strides == (8, 16, 32, 64, 128)
    assert m.fcos.sizes_of_interest == (64, 128, 256, 512)
    assert (m.fcos.num_cls_convs, m.fcos.num_box_convs, m.fcos.num_share_convs) == (4, 4, 0)
    assert m.fcos.thresh_with_ctr is True and m.fcos.use_scale is False  # Base-BlendMask.yaml
    assert (m.fcos.inference_th, m.fcos.pre_nms_topk, m.fcos.nms_th, m.fcos.post_nms_topk) == (0.05, 1000, 0.6, 100)
    assert (m.basis.num_bases, m.basis.convs_dim, m.basis.num_convs, m.basis.loss_on, m.basis.loss_weight) == (4, 128, 3, True, 0.3)
    assert (m.blender.attn_size, m.blender.bottom_resolution, m.blender.top_interp) == (14, 56, "bilinear")
    assert cfg.input.min_size_train == (640, 672, 704, 736, 768, 800)
    assert (cfg.input.max_size_train, cfg.input.min_size_test, cfg.input.max_size_test) == (1333, 800, 1333)
    s = cfg.solver
    assert (s.ims_per_batch, s.base_lr, s.steps, s.max_iter) == (16, 0.01, (60000, 80000), 90000)


def test_3x_101_550_and_rt_values_match_adelaidet():
    for name in ("R_50_3x", "R_101_3x", "550_R_50_3x"):
        assert get_config(name).solver.steps == (210000, 250000) and get_config(name).solver.max_iter == 270000
    assert get_config("R_101_3x").model.backbone.name == "resnet101"
    c550 = get_config("550_R_50_3x")
    assert c550.model.backbone.fpn_top_levels == 1 and c550.model.fcos.fpn_strides == (8, 16, 32, 64)
    assert c550.model.fcos.sizes_of_interest == (64, 128, 256)
    assert (c550.model.fcos.num_share_convs, c550.model.fcos.num_cls_convs, c550.model.fcos.num_box_convs) == (3, 0, 0)
    assert c550.model.basis.num_convs == 2
    assert (c550.input.min_size_train[-1], c550.input.max_size_train, c550.input.min_size_test, c550.input.max_size_test) == (550, 916, 550, 916)
    rt = get_config("RT_R_50_4x")  # derives from Base-550.yaml
    assert rt.model.backbone.fpn_top_levels == 1 and rt.model.fcos.num_share_convs == 3
    assert (rt.model.backbone.norm, rt.model.backbone.freeze_at) == ("BN", 0)
    assert rt.input.min_size_train == tuple(range(256, 609, 32))
    assert (rt.input.max_size_train, rt.input.min_size_test, rt.input.max_size_test) == (900, 512, 736)
    assert rt.solver.steps == (300000, 340000) and rt.solver.max_iter == 360000


def test_lite_preset_is_a_small_p3_p5_mobilenet():
    lite = get_config("lite_mobilenet_v2")
    assert (lite.model.backbone.name, lite.model.backbone.layout, lite.model.backbone.fpn_top_levels) == ("mobilenet_v2", "torchvision", 0)
    assert len(lite.model.fcos.fpn_strides) == 3 and len(lite.model.fcos.sizes_of_interest) == 2
    assert lite.input.max_size_train <= 512 and lite.input.max_size_test <= 512


def test_overrides_with_dotted_keys_and_type_coercion():
    cfg = get_config("R_50_3x", {"solver.base_lr": 1, "model.blender.attn_size": 7, "input.min_size_train": [320, 352]})
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.model.blender.attn_size == 7 and cfg.input.min_size_train == (320, 352)
    assert get_config("R_50_3x").model.blender.attn_size == 14  # presets are not mutated


@pytest.mark.parametrize("overrides, error, match", [
    ({"model.backbone.nrom": "GN"}, ValueError, r"model\.backbone.*nrom.*known"),
    ({"solver.lr": 0.1}, ValueError, r"solver\.lr"),
    ({"model": 3}, ValueError, r"is a section"),
    ({"solver.base_lr": "fast"}, TypeError, r"solver\.base_lr.*float.*str"),
    ({"solver.max_iter": 1.5}, TypeError, r"solver\.max_iter.*int"),
    ({"solver.max_iter": True}, TypeError, r"solver\.max_iter.*int.*bool"),
    ({"solver.steps": 5}, TypeError, r"solver\.steps.*list/tuple"),
    ({"solver.steps": [1, "a"]}, TypeError, r"solver\.steps\[1\]"),
    ({"model.backbone.norm": "SyncBN"}, ValueError, r"model\.backbone\.norm.*FrozenBN"),
    ({"model.blender.top_interp": "cubic"}, ValueError, r"top_interp"),
    ({"model.fcos.norm": "SyncBN"}, ValueError, r"model\.fcos\.norm.*'GN', 'BN', 'none'"),
    ({"input.min_size_train_sampling": "uniform"}, ValueError, r"min_size_train_sampling.*choice"),
    ({"input.crop_type": "absolute_range"}, ValueError, r"input\.crop_type.*relative_range"),
    ({"model.backbone.deform_on_per_stage": [0, 1, 1, 1]}, TypeError, r"deform_on_per_stage\[0\].*bool"),
])
def test_bad_overrides_name_the_key(overrides, error, match):
    with pytest.raises(error, match=match):
        get_config("R_50_1x", overrides)


def test_unknown_preset_and_bad_dicts():
    with pytest.raises(ValueError, match=r"unknown config name 'R_50_9x'.*R_50_1x"):
        get_config("R_50_9x")
    with pytest.raises(ValueError, match=r"unknown config keys in 'model\.fcos': \['bogus'\]"):
        BlendMaskConfig.from_dict({"model": {"fcos": {"bogus": 1}}})
    with pytest.raises(TypeError, match=r"'model' must be a mapping"):
        BlendMaskConfig.from_dict({"model": [1, 2]})
    with pytest.raises(TypeError, match=r"overrides must be a mapping"):
        get_config("R_50_1x", [("solver.base_lr", 0.1)])
    partial = BlendMaskConfig.from_dict({"solver": {"max_iter": 10}})
    assert partial.solver.max_iter == 10 and partial.model == BlendMaskConfig().model


def test_parse_overrides_reads_json_then_python_literals_then_strings():
    assert parse_overrides(["solver.max_iter=300", "solver.steps=(10, 20)", "solver.amp=false",
                            "model.backbone.name=mobilenet_v2", "input.min_size_train=[256,288]",
                            "solver.base_lr = 0.5"]) == {
        "solver.max_iter": 300, "solver.steps": (10, 20), "solver.amp": False,
        "model.backbone.name": "mobilenet_v2", "input.min_size_train": (256, 288), "solver.base_lr": 0.5}
    assert parse_overrides(["a=" + "(" * 10000, "b={[1]: 2}"]) == {"a": "(" * 10000, "b": "{[1]: 2}"}


@pytest.mark.parametrize("item", ["solver.max_iter", "=3", "solver.max_iter=", "solver.max_iter=  "])
def test_parse_overrides_refuses_items_without_key_or_value(item):
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides([item])


def test_wrong_types_are_input_errors_but_still_type_errors():
    """The CLI prints these as one line (blendmask.errors); Python callers can still catch TypeError."""
    with pytest.raises(InputTypeError, match=r"solver\.max_iter.*int.*str"):
        get_config("R_50_1x", parse_overrides(["solver.max_iter=abc"]))
    assert issubclass(InputTypeError, TypeError) and is_user_error(InputTypeError("x"))
    assert not is_user_error(TypeError("a bug")) and not is_user_error(RuntimeError("out of memory"))
