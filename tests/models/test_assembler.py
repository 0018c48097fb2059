"""The assembler merge (paper Table 1's FCIS analogue, ``model.blender.merge="assembler"``): K = M*M
bases, fixed one-hot attentions (region (i, j) of the M x M grid takes base i*M + j), nearest top
interpolation, no top layer."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from blendmask.config import get_config
from blendmask.models import blendmask_mobilenet_v2_fpn, build_model
from blendmask.models.blendmask import assembler_attention_logits
from blendmask.ops import blend, blend_reference

M_, R_ = 4, 28
ASSEMBLER = {"model.blender.merge": "assembler", "model.basis.num_bases": M_ * M_, "model.blender.attn_size": M_,
             "model.blender.top_interp": "nearest", "model.blender.bottom_resolution": R_}
SMALL_INPUT = {"input.min_size_train": (64,), "input.max_size_train": 96, "input.min_size_test": 64, "input.max_size_test": 96}


def _lite_assembler(**overrides):
    torch.manual_seed(0)
    return blendmask_mobilenet_v2_fpn(num_classes=2, **{**SMALL_INPUT, **ASSEMBLER, **overrides})


def test_fixed_attentions_are_exactly_one_hot_per_region():
    logits = assembler_attention_logits(M_ * M_, M_)
    assert logits.shape == (16, 4, 4) and logits.dtype == torch.float32
    weights = logits.softmax(dim=0)  # (K, M, M)
    for i in range(M_):
        for j in range(M_):
            expected = torch.zeros(M_ * M_)
            expected[i * M_ + j] = 1.0
            assert torch.equal(weights[:, i, j], expected), (i, j)
    assert torch.equal(logits.half().softmax(dim=0).float(), weights)  # one-hot in float16 too


def test_nearest_upsampling_of_m4_to_r28_gives_7x7_regions():
    grid = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    up = F.interpolate(grid, (R_, R_), mode="nearest")[0, 0]
    expected = grid[0, 0].repeat_interleave(7, 0).repeat_interleave(7, 1)
    assert torch.equal(up, expected)


def test_assembler_model_has_no_top_layer_and_a_constant_attention_buffer():
    model = _lite_assembler()
    assert model.top_layer is None
    assert not any(name.startswith("top_layer") for name in model.state_dict())
    assert "assembler_logits" not in model.state_dict()  # a constant of the config, not a weight
    assert torch.equal(model.assembler_logits, assembler_attention_logits(16, 4))
    blender = _lite_assembler(**{"model.blender.merge": "blender"})
    assert sum(p.numel() for p in blender.parameters()) - sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in blender.top_layer.parameters())


@pytest.mark.parametrize("blender", [blend, blend_reference], ids=["fused", "reference"])
def test_region_ij_of_the_blended_mask_is_the_crop_of_base_i_m_plus_j(blender):
    model = _lite_assembler()
    g = torch.Generator().manual_seed(3)
    stride = model.basis_module.out_stride
    bases = torch.randn(2, 16, 20, 24, generator=g)
    rois = torch.tensor([[0, 3.0, 5.0, 61.0, 70.0], [1, 10.5, 0.0, 90.0, 33.3], [0, -8.0, 20.0, 40.0, 90.0]])
    attns = model.attentions(None, torch.arange(3))  # the assembler reads no head: the constant rows
    blended = model.blend_masks(bases, attns, rois, blender=blender)  # (3, R, R) logits
    crops = roi_align(bases, rois, R_, 1.0 / stride, model.blender.sampling_ratio, model.blender.aligned)  # (3, K, R, R)
    side = R_ // M_
    for i in range(M_):
        for j in range(M_):
            region = (slice(None), slice(i * side, (i + 1) * side), slice(j * side, (j + 1) * side))
            torch.testing.assert_close(blended[region], crops[:, i * M_ + j][region])


@pytest.mark.parametrize("overrides, needle", [
    ({"model.basis.num_bases": 4}, "num_bases=4, attn_size=4"),
    ({"model.blender.attn_size": 2}, "num_bases=16, attn_size=2"),
    ({"model.blender.top_interp": "bilinear"}, "top_interp='bilinear'"),
    ({"model.blender.normalize": "sigmoid"}, "normalize='sigmoid'"),
])
def test_bad_assembler_configurations_are_refused(overrides, needle):
    cfg = get_config("lite_mobilenet_v2", {**ASSEMBLER, **overrides})
    with pytest.raises(ValueError, match="merge='assembler' needs model.basis.num_bases == ") as info:
        build_model(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_merge_is_refused_by_the_config():
    with pytest.raises(ValueError, match="model.blender.merge.*'blender', 'assembler'"):
        get_config("lite_mobilenet_v2", {"model.blender.merge": "fcis"})


def _one_target(h=64, w=64):
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 6:30, 8:40] = 1
    masks[1, 30:60, 34:62] = 1
    return {"boxes": torch.tensor([[8.0, 6.0, 40.0, 30.0], [34.0, 30.0, 62.0, 60.0]]),
            "labels": torch.tensor([0, 1]), "masks": masks}


def test_lite_assembler_trains_one_step_with_finite_losses_and_evaluates():
    model = _lite_assembler()
    images, targets = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [_one_target(), _one_target()]
    losses = model(images, targets)
    assert {"loss_mask", "loss_fcos_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_mask"] > 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01)
    sum(losses.values()).backward()
    last_basis = [m for m in model.basis_module.tower.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last_basis.weight.grad.abs().sum() > 0  # the mask loss reaches the bases
    optimizer.step()
    model.eval()
    model.proposal_generator.score_thresh = 0.0
    model.proposal_generator.post_nms_topk = 5
    model.return_internals = True
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    n = out["boxes"].shape[0]
    assert n == 5 and out["masks"].shape == (5, 1, 64, 64)
    assert torch.equal(out["attns"], model.assembler_logits.expand(n, -1, -1, -1))


def test_empty_ground_truth_trains_the_assembler():
    model = _lite_assembler()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    losses = model([torch.rand(3, 64, 64)], [empty])
    assert losses["loss_mask"] == 0 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
