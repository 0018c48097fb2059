"""The rest of AdelaiDet's BlendMask zoo: presets, strict loads of AdelaiDet-named weights, and the
new modules (DCNv2 interval ResNet, DLA-34, per-level BN FCOS head, range sampling, instance crop).

The synthetic state dicts come from ``tests.helpers.adelaidet_zoo_weights`` (names and shapes from AdelaiDet's source)."""
import functools

import pytest
import torch
import torch.nn.functional as F

from blendmask.config import BackboneConfig, InputConfig, get_config
from blendmask.convert import convert_state_dict, match_state_dict
from blendmask.data.transforms import RandomHorizontalFlip, RandomInstanceCrop, build_train_transforms
from blendmask.models import build_model
from blendmask.models.backbone import build_backbone
from blendmask.models.backbone.deform import MSRADeformBottleneck
from blendmask.models.backbone.resnet import MSRABottleneck
from blendmask.models.fcos.head import FCOSHead, PerLevelBatchNorm

from tests.helpers.adelaidet_weights import adelaidet_state_dict
from tests.helpers.adelaidet_zoo_weights import add_deform_convs, dla34_state_dict, with_bn_head

SHARED = dict(num_cls_convs=0, num_box_convs=0, num_share_convs=3, basis_num_convs=2)
DCNI3 = dict(stages=(False, True, True, True), interval=3, modulated=True)


@functools.lru_cache(maxsize=None)  # read-only once built; generating R-101's 56M values is the slow part
def _r101_dcni3():
    return add_deform_convs(adelaidet_state_dict(depth=101), depth=101, **DCNI3)


def _550_dcni3():
    return add_deform_convs(adelaidet_state_dict(top_levels=1, **SHARED), depth=50, **DCNI3)


def _dla34():
    return dla34_state_dict(top_levels=0)


def _rt_bn_head_550():  # RT_R_50_4x-BN-head: P3-P6 shared tower, SyncBN backbone and head
    return with_bn_head(adelaidet_state_dict(top_levels=1, backbone_bn=True, **SHARED), num_levels=4,
                        towers={"share_tower": 3})


def _rt_shtw():
    return adelaidet_state_dict(top_levels=0, backbone_bn=True, **SHARED)


def _rt_bn_head_shtw():
    return with_bn_head(_rt_shtw(), num_levels=3, towers={"share_tower": 3})


def _base_rt():
    return adelaidet_state_dict(top_levels=0)


ZOO = {
    "R_101_dcni3_5x": _r101_dcni3,
    "550_R_50_dcni3_5x": _550_dcni3,
    "DLA_34_syncbn_4x": _dla34,
    "RT_R_50_4x-BN-head": _rt_bn_head_550,
    "RT_R_50_4x_syncbn_shtw": _rt_shtw,
    "RT_R_50_4x_bn-head_syncbn_shtw": _rt_bn_head_shtw,
    "Base-RT": _base_rt,
}


@pytest.fixture(scope="module")
def zoo_models():
    torch.manual_seed(0)
    return {name: build_model(get_config(name)) for name in ZOO}


# ----------------------------------------------------------------------------- presets

def test_dcni3_5x_presets_match_adelaidet_yaml():
    r101 = get_config("R_101_dcni3_5x")
    b = r101.model.backbone
    assert (b.name, b.norm, b.freeze_at, b.fpn_top_levels) == ("resnet101", "FrozenBN", 2, 2)
    assert (b.deform_on_per_stage, b.deform_modulated, b.deform_interval) == ((False, True, True, True), True, 3)
    i = r101.input
    assert (i.min_size_train, i.min_size_train_sampling, i.max_size_train) == ((640, 864), "range", 1440)
    assert (i.crop_enabled, i.crop_type, i.crop_size) == (True, "relative_range", (0.9, 0.9))
    assert (i.min_size_test, i.max_size_test) == (800, 1333)
    s = r101.solver
    assert (s.steps, s.max_iter, s.eval_period) == ((280000, 360000), 400000, 20000)
    c550 = get_config("550_R_50_dcni3_5x")
    assert c550.model.backbone.name == "resnet50" and c550.model.backbone.deform_interval == 3
    assert c550.model.backbone.fpn_top_levels == 1 and c550.model.fcos.num_share_convs == 3
    assert (c550.input.min_size_train, c550.input.min_size_train_sampling, c550.input.max_size_train) == ((440, 594), "range", 990)
    assert c550.input.crop_enabled and (c550.input.min_size_test, c550.input.max_size_test) == (550, 916)
    assert (c550.solver.steps, c550.solver.max_iter) == ((210000, 250000), 270000)


def test_rt_and_dla_presets_match_adelaidet_yaml():
    base = get_config("Base-RT")
    assert base.model.backbone.fpn_top_levels == 0 and base.model.fcos.fpn_strides == (8, 16, 32)
    assert base.model.fcos.sizes_of_interest == (64, 128)
    assert (base.model.fcos.num_cls_convs, base.model.fcos.num_box_convs, base.model.fcos.norm) == (4, 4, "GN")
    assert (base.model.backbone.norm, base.model.backbone.freeze_at) == ("FrozenBN", 2)
    assert base.input.min_size_train == tuple(range(256, 609, 32))
    assert (base.input.max_size_train, base.input.min_size_test, base.input.max_size_test) == (900, 512, 736)
    assert (base.solver.steps, base.solver.max_iter) == ((300000, 340000), 360000)
    for name in ("RT_R_50_4x_syncbn_shtw", "RT_R_50_4x_bn-head_syncbn_shtw", "DLA_34_syncbn_4x"):
        cfg = get_config(name)
        assert cfg.input == base.input and cfg.solver == base.solver, name
        assert cfg.model.fcos.fpn_strides == (8, 16, 32) and cfg.model.backbone.fpn_top_levels == 0, name
        assert (cfg.model.backbone.norm, cfg.model.backbone.freeze_at) == ("BN", 0), name
    shtw, bn_head = get_config("RT_R_50_4x_syncbn_shtw").model, get_config("RT_R_50_4x_bn-head_syncbn_shtw").model
    assert (shtw.fcos.num_share_convs, shtw.fcos.num_cls_convs, shtw.fcos.num_box_convs, shtw.basis.num_convs) == (3, 0, 0, 2)
    assert shtw.fcos.norm == "GN" and bn_head.fcos.norm == "BN" and bn_head.fcos.num_share_convs == 3
    dla = get_config("DLA_34_syncbn_4x").model
    assert (dla.backbone.name, dla.backbone.layout, dla.fcos.num_cls_convs, dla.basis.num_convs) == ("dla34", "msra", 4, 3)
    old = get_config("RT_R_50_4x-BN-head")
    assert old.model.fcos.norm == "BN" and old.model.fcos.fpn_strides == (8, 16, 32, 64)
    assert {k: v for k, v in old.to_dict().items() if k != "name"} == {
        **{k: v for k, v in get_config("RT_R_50_4x").to_dict().items() if k != "name"},
        "model": {**get_config("RT_R_50_4x").to_dict()["model"],
                  "fcos": {**get_config("RT_R_50_4x").to_dict()["model"]["fcos"], "norm": "BN"}}}


# ----------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_checkpoint_converts_and_loads_strictly(name, zoo_models):
    model = zoo_models[name]
    source = ZOO[name]()
    converted, report = convert_state_dict({"model": source})
    matched, report = match_state_dict(converted, model.state_dict(), report)
    assert report.ok, report.summary()
    assert not report.filled and len(matched) == len(model.state_dict())
    model.load_state_dict(matched, strict=True)
    differ = [key for key, value in model.state_dict().items() if not torch.equal(value, source[key])]
    assert not differ


def test_dcn_weights_do_not_fit_a_plain_config_and_vice_versa(zoo_models):
    _, report = match_state_dict(convert_state_dict(_r101_dcni3())[0], build_model(get_config("R_101_3x")).state_dict())
    assert not report.ok and len(report.unexpected) == 2 * 11 and not report.missing  # 2 + 8 + 1 DCN blocks
    assert all(k.endswith(("conv2_offset.weight", "conv2_offset.bias")) for k in report.unexpected)
    plain = {k: v for k, v in _r101_dcni3().items() if "conv2_offset" not in k}  # = adelaidet_state_dict(depth=101)
    _, report = match_state_dict(convert_state_dict(plain)[0], zoo_models["R_101_dcni3_5x"].state_dict())
    assert not report.ok and len(report.missing) == 22 and not report.unexpected


def test_dcni3_blocks_sit_at_interval_3_in_res3_to_res5(zoo_models):
    body = zoo_models["R_101_dcni3_5x"].backbone.bottom_up
    deformable = {f"{stage}.{i}" for stage in ("res2", "res3", "res4", "res5")
                  for i, block in enumerate(getattr(body, stage)) if isinstance(block, MSRADeformBottleneck)}
    expected = {"res3.0", "res3.3", "res5.0"} | {f"res4.{i}" for i in range(0, 23, 3)}
    assert deformable == expected
    block = body.res4[3]
    assert block.conv2_offset.out_channels == 27 and block.conv2_offset.stride == (1, 1)
    assert block.conv2.bias is None and block.conv1.stride == (1, 1)
    assert body.res3[0].conv1.stride == (2, 2)  # stride in the 1x1 (MSRA), offsets at the 3x3's stride 1
    fresh = MSRADeformBottleneck(in_channels=512, out_channels=512, bottleneck_channels=128, stride=1,
                                 norm="FrozenBN", modulated=True)
    assert torch.count_nonzero(fresh.conv2_offset.weight) == 0 and torch.count_nonzero(fresh.conv2_offset.bias) == 0


# ----------------------------------------------------------------------------- DCN semantics

def _pair(modulated):
    torch.manual_seed(0)
    kw = dict(in_channels=16, out_channels=16, bottleneck_channels=8, stride=1, norm="FrozenBN")
    plain, deform = MSRABottleneck(**kw).eval(), MSRADeformBottleneck(**kw, modulated=modulated).eval()
    deform.load_state_dict(plain.state_dict(), strict=False)
    return plain, deform


def test_zero_offsets_give_the_plain_conv_and_dcnv2_halves_the_taps():
    plain, dcn1 = _pair(modulated=False)
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(dcn1(x), plain(x), rtol=1e-5, atol=1e-5)
        _, dcn2 = _pair(modulated=True)
        mid = F.relu(dcn2.conv1(x))
        expected = dcn2.conv2.norm(0.5 * F.conv2d(mid, dcn2.conv2.weight, padding=1))  # sigmoid(0) = 0.5 on every tap
        offset = dcn2.conv2_offset(mid)
        torch.testing.assert_close(dcn2.conv2(mid, offset[:, :18], offset[:, 18:].sigmoid()), expected, rtol=1e-5, atol=1e-5)


def test_offset_channels_are_dy_dx_pairs_and_the_last_nine_modulate():
    """A bias of +1 on every dy channel samples one row lower, i.e. the plain conv of the image shifted up
    (row 0 excepted: its top taps read row 0 where the shifted image has zero padding)."""
    _, dcn = _pair(modulated=True)
    with torch.no_grad():
        dcn.conv2_offset.bias[0:18:2] = 1.0  # dy of the 9 taps
        dcn.conv2_offset.bias[18:] = 20.0  # sigmoid ~ 1: unmodulated
        mid = torch.randn(1, 8, 7, 9)
        offset = dcn.conv2_offset(mid)
        out = dcn.conv2(mid, offset[:, :18], offset[:, 18:].sigmoid())
        shifted = torch.cat([mid[:, :, 1:], torch.zeros_like(mid[:, :, :1])], dim=2)
        expected = dcn.conv2.norm(F.conv2d(shifted, dcn.conv2.weight, padding=1))
        torch.testing.assert_close(out[..., 1:, :], expected[..., 1:, :], rtol=1e-4, atol=1e-4)


def test_deform_config_errors():
    with pytest.raises(ValueError, match="deform_on_per_stage needs an MSRA-layout ResNet"):
        build_backbone(BackboneConfig(name="dla34", deform_on_per_stage=(False, True, True, True)))
    with pytest.raises(ValueError, match="deform_on_per_stage needs an MSRA-layout ResNet"):
        build_backbone(BackboneConfig(layout="torchvision", deform_on_per_stage=(True,) * 4))
    with pytest.raises(ValueError, match="deform_on_per_stage must be 4 bools"):
        build_backbone(BackboneConfig(deform_on_per_stage=(True, True)))
    with pytest.raises(ValueError, match="deform_interval must be an int >= 1"):
        build_backbone(BackboneConfig(deform_on_per_stage=(False, True, True, True), deform_interval=0))
    with pytest.raises(ValueError, match="dla34 exists only in the 'msra' layout"):
        build_backbone(BackboneConfig(name="dla34", layout="torchvision"))


def test_dcn_backbone_trains_and_every_offset_conv_gets_a_gradient():
    torch.manual_seed(0)
    cfg = BackboneConfig(norm="BN", freeze_at=0, fpn_top_levels=1, deform_on_per_stage=(False, True, True, True),
                         deform_modulated=True, deform_interval=3)
    backbone = build_backbone(cfg).train()
    sum(f.square().mean() for f in backbone(torch.randn(1, 3, 64, 64)).values()).backward()
    offsets = {n: p.grad for n, p in backbone.named_parameters() if "conv2_offset" in n}
    assert len(offsets) == 2 * 5  # res3.0, res3.3, res4.0, res4.3, res5.0
    assert all(g is not None and g.abs().sum() > 0 for g in offsets.values())


# ----------------------------------------------------------------------------- DLA-34

def test_dla34_levels_channels_and_strides(zoo_models):
    backbone = zoo_models["DLA_34_syncbn_4x"].backbone
    body = backbone.bottom_up
    assert body.out_channels == {"level3": 128, "level4": 256, "level5": 512}
    assert body.strides == {"level3": 8, "level4": 16, "level5": 32}
    assert backbone.in_features == ["level3", "level4", "level5"]
    assert backbone.fpn_lateral3.in_channels == 128 and backbone.fpn_lateral5.in_channels == 512
    assert (body.level3.tree2.root.conv.in_channels, body.level4.tree2.root.conv.in_channels,
            body.level5.root.conv.in_channels, body.level2.root.conv.in_channels) == (448, 896, 1280, 128)
    assert body.level3.root is None and body.level3.tree2.project is None
    assert (backbone.input_format, backbone.pixel_mean, backbone.pixel_std) == ("BGR", [103.53, 116.28, 123.675], [1.0, 1.0, 1.0])
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p3": (1, 256, 8, 12), "p4": (1, 256, 4, 6), "p5": (1, 256, 2, 3)}


def test_dla34_every_parameter_gets_a_gradient_in_training():
    """Including the outer ``project`` of level3/level4, kept in the graph as AdelaiDet does."""
    torch.manual_seed(0)
    backbone = build_backbone(get_config("DLA_34_syncbn_4x").model.backbone).train()
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert not missing
    assert backbone.bottom_up.level3.project[0].weight.grad.abs().sum() == 0  # the zero-weighted term


def test_dla34_freezing_and_imagenet_style_weights(tmp_path):
    torch.manual_seed(0)
    source = {k[len("backbone.bottom_up."):]: v for k, v in dla34_state_dict().items()
              if k.startswith("backbone.bottom_up.")}
    source.update({"fc.weight": torch.zeros(1000, 512, 1, 1), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "dla34.pth"
    torch.save(source, path)
    cfg = BackboneConfig(name="dla34", norm="BN", freeze_at=2)
    net = build_backbone(cfg, weights_backbone=str(path))
    assert not any(p.requires_grad for p in net.bottom_up.level2.parameters())
    assert all(p.requires_grad for p in net.bottom_up.level3.parameters())
    torch.testing.assert_close(net.bottom_up.level2.root.bn.running_var, source["level2.root.bn.running_var"])


# ----------------------------------------------------------------------------- per-level BN head

def test_bn_head_normalises_each_level_with_its_own_statistics():
    torch.manual_seed(0)
    head = FCOSHead(in_channels=32, num_classes=3, num_levels=3, num_cls_convs=1, num_box_convs=1, norm="BN").eval()
    assert isinstance(head.cls_tower[1], PerLevelBatchNorm) and len(head.cls_tower[1]) == 3
    with torch.no_grad():
        for level, bn in enumerate(head.bbox_tower[1]):
            bn.running_mean.fill_(0.1 * level)
            bn.bias.fill_(float(level))
        x = torch.randn(1, 32, 5, 5)
        out = head([x, x, x])
        for level in range(3):
            bn = head.bbox_tower[1][level]
            tower = F.relu(bn(head.bbox_tower[0](x)))
            torch.testing.assert_close(out.bbox_towers[level], tower)
        assert not torch.allclose(out.bbox_towers[0], out.bbox_towers[2])
    with pytest.raises(ValueError, match="expected 3 FPN levels, got 2"):
        head([x, x])
    with pytest.raises(ValueError, match="'GN', 'BN' or 'none'"):
        FCOSHead(in_channels=32, num_classes=3, num_levels=3, norm="SyncBN")


def test_bn_head_model_runs_in_train_and_eval():
    small = {"input.min_size_train": (64,), "input.max_size_train": 64, "input.min_size_test": 64, "input.max_size_test": 64}
    torch.manual_seed(0)
    model = build_model(get_config("RT_R_50_4x_bn-head_syncbn_shtw", small))
    norms = model.proposal_generator.fcos_head.share_tower[1]
    assert isinstance(norms, PerLevelBatchNorm) and len(norms) == 3
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}
    model.train()
    losses = model([torch.rand(3, 64, 64)], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    assert [bn.num_batches_tracked.item() for bn in norms] == [1, 1, 1]  # each level ran through its own BN
    model.eval()
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 64)])) == 1


# ----------------------------------------------------------------------------- training recipe

def test_range_sampling_draws_every_size_in_the_closed_interval(zoo_models):
    transform = zoo_models["R_101_dcni3_5x"].transform
    assert transform.min_size_train_sampling == "range"
    transform.train()
    torch.manual_seed(0)
    sizes = {transform._pick_min_size() for _ in range(3000)}
    assert sizes == set(range(640, 865))
    transform.eval()
    assert transform._pick_min_size() == 800
    with pytest.raises(ValueError, match=r"needs min_size_train = \(low, high\)"):
        build_model(get_config("R_50_1x", {"input.min_size_train_sampling": "range"}))


def _sample(height=100, width=80):
    masks = torch.zeros(3, height, width, dtype=torch.uint8)
    masks[0, 10:30, 5:25] = 1
    masks[1, 60:95, 40:78] = 1
    masks[2, 0:4, 0:4] = 1  # a corner object, cut away by most crops
    boxes = torch.tensor([[5.0, 10.0, 25.0, 30.0], [40.0, 60.0, 78.0, 95.0], [0.0, 0.0, 4.0, 4.0]])
    image = torch.arange(height * width, dtype=torch.float32).view(1, height, width).repeat(3, 1, 1)
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks, "image_id": 7}


def test_instance_crop_keeps_image_masks_boxes_and_labels_consistent():
    crop = RandomInstanceCrop("relative_range", (0.5, 0.5))
    image, target = _sample()
    torch.manual_seed(0)
    seen_sizes, dropped = set(), 0
    for _ in range(200):
        out_image, out = crop(image, target)
        h, w = out_image.shape[-2:]
        assert 50 <= h <= 100 and 40 <= w <= 80
        seen_sizes.add((h, w))
        y0, x0 = divmod(int(out_image[0, 0, 0].item()), 80)  # the pixel values encode the source position
        torch.testing.assert_close(out_image, image[:, y0:y0 + h, x0:x0 + w])
        kept = [i for i in range(3) if target["masks"][i, y0:y0 + h, x0:x0 + w].any()]
        dropped += 3 - len(kept)
        assert out["labels"].tolist() == [i + 1 for i in kept] and out["image_id"] == 7
        assert out["masks"].shape == (len(kept), h, w) and out["masks"].dtype == torch.uint8
        for j, i in enumerate(kept):
            assert torch.equal(out["masks"][j], target["masks"][i, y0:y0 + h, x0:x0 + w])
            ys, xs = torch.nonzero(out["masks"][j], as_tuple=True)
            assert out["boxes"][j].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert len(kept) >= 1  # the window holds the centre of a drawn instance
    assert len(seen_sizes) > 20 and dropped > 0


def test_relative_crop_size_and_errors():
    image, target = _sample()
    out_image, _ = RandomInstanceCrop("relative", (0.9, 0.5))(image, target)
    assert out_image.shape[-2:] == (90, 40)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 100, 80, dtype=torch.uint8)}
    out_image, out = RandomInstanceCrop("relative", (0.5, 0.5))(image, empty)
    assert out_image.shape[-2:] == (50, 40) and out["masks"].shape == (0, 50, 40)
    with pytest.raises(ValueError, match="crop_type must be"):
        RandomInstanceCrop("absolute_range", (0.5, 0.5))
    with pytest.raises(ValueError, match="an 'absolute' crop_size must be two whole numbers of pixels"):
        RandomInstanceCrop("absolute", (0.5, 0.5))
    with pytest.raises(ValueError, match=r"crop_size must be two fractions in \(0, 1\]"):
        RandomInstanceCrop("relative", (0.0, 1.5))
    with pytest.raises(ValueError, match=r"cannot crop target keys \['polygons'\]"):
        RandomInstanceCrop()(image, {**target, "polygons": []})


def test_boxes_without_masks_are_shifted_and_clipped():
    image, target = _sample()
    target = {"boxes": target["boxes"], "labels": target["labels"]}
    torch.manual_seed(1)
    out_image, out = RandomInstanceCrop("relative", (0.5, 0.5))(image, target)
    y0, x0 = divmod(int(out_image[0, 0, 0].item()), 80)
    expected = target["boxes"] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 40)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 50)
    keep = ((expected[:, 2:] - expected[:, :2]) > 1e-5).all(dim=1)
    torch.testing.assert_close(out["boxes"], expected[keep])
    assert out["labels"].tolist() == target["labels"][keep].tolist()


def test_build_train_transforms_follows_the_config():
    recipe = build_train_transforms(get_config("R_101_dcni3_5x").input)
    assert [type(t) for t in recipe.transforms] == [RandomInstanceCrop, RandomHorizontalFlip]
    assert recipe.transforms[0].crop_size == (0.9, 0.9) and recipe.transforms[0].crop_type == "relative_range"
    assert [type(t) for t in build_train_transforms(InputConfig()).transforms] == [RandomHorizontalFlip]
    assert build_train_transforms(InputConfig(hflip_prob=0.0)).transforms == []


# ----------------------------------------------------------------------------- bad input

def test_a_checkpoint_of_another_architecture_is_named_in_a_sentence(zoo_models):
    dcn = _r101_dcni3()
    plain_r101 = build_model(get_config("R_101_3x")).state_dict()
    _, report = match_state_dict(convert_state_dict(dcn)[0], plain_r101)
    assert ("the checkpoint's backbone is ResNet-101 with deformable convs in res3.0, res3.3, res4.0, res4.3, "
            "res4.6, res4.9, res4.12, res4.15, res4.18, res4.21, res5.0, but the config's model has ResNet-101 "
            "without deformable convs") in report.summary()
    _, report = match_state_dict(convert_state_dict(dcn)[0], zoo_models["DLA_34_syncbn_4x"].state_dict())
    notes = "\n".join(report.notes)
    assert "backbone is ResNet-101 with deformable convs" in notes and "config's model has DLA-34" in notes
    assert "FPN levels is P3-P7, but the config's model has P3-P5" in notes
    _, report = match_state_dict(convert_state_dict(_rt_shtw())[0],
                                 zoo_models["RT_R_50_4x_bn-head_syncbn_shtw"].state_dict())
    assert report.notes == ["the checkpoint's FCOS head norm is GN, but the config's model has per-level BN"]
    _, report = match_state_dict(convert_state_dict(_rt_bn_head_shtw())[0], zoo_models["Base-RT"].state_dict())
    assert "the checkpoint's FCOS head norm is per-level BN, but the config's model has GN" in report.notes
    _, report = match_state_dict(convert_state_dict(_base_rt())[0], zoo_models["Base-RT"].state_dict())
    assert report.ok and not report.notes


@pytest.mark.parametrize("name", ["DLA_34_syncbn_4x", "550_R_50_dcni3_5x", "RT_R_50_4x-BN-head"])
def test_zoo_models_detect_on_a_tiny_image(name):
    torch.manual_seed(0)
    model = build_model(get_config(name, {"input.min_size_test": 64, "input.max_size_test": 96})).eval()
    model.proposal_generator.score_thresh = 0.0
    model.proposal_generator.post_nms_topk = 3
    with torch.no_grad():
        (out,) = model([torch.rand(3, 50, 70)])
    assert out["boxes"].shape == (3, 4) and out["masks"].shape == (3, 1, 50, 70)
    assert torch.isfinite(out["scores"]).all()
