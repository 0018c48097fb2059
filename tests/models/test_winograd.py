"""Winograd F(4x4, 3x3) (csrc/cpu/winograd_cpu.cpp, blendmask.models.winograd): the op against the
float64 convolution over a shape matrix, its contract and fake kernel, and the rewiring of a
model's convolutions by the inference path."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from blendmask import _extension
from blendmask.config import get_config
from blendmask.models import build_model, optimize_for_inference
from blendmask.models.winograd import MIN_CHANNELS, is_eligible, transform_weight, use_winograd, winograd_conv3x3

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason="needs the compiled extension")

#: Max error against the float64 convolution, relative to the output's largest magnitude. The
#: direct float32 convolution measures ~2e-6 here, F(4x4, 3x3) ~1.2e-5 (transform coefficients up
#: to 8 and 1/24); a wrong transform is off by O(1).
RELATIVE_TOL = 5e-5


def _case(n, c, o, h, w, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(o, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    b = torch.randn(o, generator=g) if bias else None
    return x, weight, b


def _relative_error(y, x, weight, bias):
    ref = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    return float((y.double() - ref).abs().max()) / max(float(ref.abs().max()), 1.0)


@pytest.mark.parametrize("n,c,o,h,w", [
    (1, 64, 64, 8, 8),  # whole tiles
    (1, 64, 96, 9, 13),  # partial tiles on both sides
    (2, 80, 64, 5, 7),  # two images
    (1, 64, 64, 1, 1),  # one pixel: every tap but the centre is padding
    (1, 64, 128, 3, 1),  # one column
    (3, 128, 80, 17, 4),
    (1, 256, 256, 20, 27),  # the FCOS tower's channels
    (1, 3, 5, 6, 6),  # the op itself takes any channel count
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_the_float64_convolution(n, c, o, h, w, channels_last):
    x, weight, bias = _case(n, c, o, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = winograd_conv3x3(x, transform_weight(weight), bias)
    assert y.shape == (n, o, h, w) and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert _relative_error(y, x, weight, bias) < RELATIVE_TOL


def test_without_bias_and_with_a_non_contiguous_input():
    x, weight, _ = _case(1, 64, 64, 12, 10)
    wide = torch.randn(1, 64, 12, 20)[..., ::2]  # strided view
    for inp in (x, wide):
        y = winograd_conv3x3(inp, transform_weight(weight), None)
        assert _relative_error(y, inp, weight, None) < RELATIVE_TOL


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 40), o=st.integers(1, 40), h=st.integers(1, 19), w=st.integers(1, 19),
       seed=st.integers(0, 10_000))
def test_fuzz_shapes(n, c, o, h, w, seed):
    x, weight, bias = _case(n, c, o, h, w, seed=seed)
    assert _relative_error(winograd_conv3x3(x, transform_weight(weight), bias), x, weight, bias) < RELATIVE_TOL


def test_a_nan_input_spreads_over_its_tiles_and_no_further():
    x, weight, bias = _case(1, 8, 6, 16, 16)
    x[0, 3, 9, 6] = float("nan")
    y = winograd_conv3x3(x, transform_weight(weight), bias)
    direct = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    nan = y.isnan()
    assert bool(nan[direct.isnan()].all())  # NaN wherever the direct convolution has one
    assert not bool(nan[..., :4, :].any()) and not bool(nan[..., 12:, :].any())  # tiles not reading the pixel
    assert not bool(nan[..., :, :4].any()) and not bool(nan[..., :, 8:].any())


@pytest.mark.parametrize("n,h,w", [
    (2, 40, 44),  # 220 tiles, 4 blocks: the threads take whole blocks
    (1, 20, 20),  # 25 tiles, one block: its transforms are split over the threads
])
def test_two_threads_give_the_same_output(n, h, w):
    x, weight, bias = _case(n, 64, 64, h, w)
    u = transform_weight(weight)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = winograd_conv3x3(x, u, bias)
        torch.set_num_threads(2)
        two = winograd_conv3x3(x, u, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # no reduction across threads: tiles and blocks are independent
    assert _relative_error(two, x, weight, bias) < RELATIVE_TOL


@pytest.mark.parametrize("args,message", [
    (lambda x, u, b: (x[0], u, b), "input must be"),
    (lambda x, u, b: (x.double(), u, b), "must be float32"),
    (lambda x, u, b: (x, u[:, :5], b), r"weight_transformed must be \(36, C, O\)"),
    (lambda x, u, b: (x, u[:30], b), r"weight_transformed must be \(36, C, O\)"),
    (lambda x, u, b: (x, u, b[:3]), r"bias must be float32 \(O,\)"),
])
def test_bad_arguments_are_clear_errors(args, message):
    x, weight, bias = _case(1, 8, 6, 5, 5)
    with pytest.raises(ValueError, match=message):
        winograd_conv3x3(*args(x, transform_weight(weight), bias))


def test_opcheck_schema_and_fake_kernel():
    x, weight, bias = _case(1, 8, 6, 5, 7)
    torch.library.opcheck(torch.ops.blendmask.winograd_conv3x3.default, (x, transform_weight(weight), bias),
                          test_utils=("test_schema", "test_faketensor"))


def test_transform_weight_rejects_other_kernels():
    with pytest.raises(ValueError, match=r"expected \(O, C, 3, 3\)"):
        transform_weight(torch.zeros(4, 4, 5, 5))


def test_eligible_convolutions():
    assert is_eligible(nn.Conv2d(64, 64, 3, padding=1))
    assert not is_eligible(nn.Conv2d(64, 4, 3, padding=1))  # too thin to gain
    assert not is_eligible(nn.Conv2d(MIN_CHANNELS - 1, 64, 3, padding=1))
    assert not is_eligible(nn.Conv2d(64, 64, 3, padding=1, stride=2))
    assert not is_eligible(nn.Conv2d(64, 64, 3, padding=2, dilation=2))
    assert not is_eligible(nn.Conv2d(64, 64, 3, padding=1, groups=2))
    assert not is_eligible(nn.Conv2d(64, 64, 1))
    assert not is_eligible(nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))


def _r50():
    torch.manual_seed(0)
    model = build_model(get_config("R_50_1x", {"input.min_size_test": 64, "input.max_size_test": 96,
                                               "model.num_classes": 3}))
    model.eval()
    model.proposal_generator.score_thresh = 0.0
    model.proposal_generator.post_nms_topk = 5
    return model


def test_use_winograd_rewires_the_eligible_convolutions_and_keeps_the_outputs():
    model = _r50()
    conv = model.proposal_generator.fcos_head.cls_tower[0]
    with torch.no_grad():
        direct = conv(torch.rand(1, 256, 10, 12, generator=torch.Generator().manual_seed(0)))
    eligible = [name for name, m in model.named_modules() if is_eligible(m)]
    # the backbone's 16 bottleneck 3x3s, the FPN's 3 output convs, the 8 tower convs and the basis
    # module's 9 (refine, tower, semantic head); not the stem (7x7), the stride-2 P6/P7 convs,
    # cls_logits (3 classes here), bbox_pred/ctrness (4 and 1 channels) nor the top layer
    assert sum(name.endswith(".conv2") for name in eligible) == 16
    assert sum(name.startswith("backbone.fpn_output") for name in eligible) == 3
    assert sum("_tower." in name for name in eligible) == 8
    assert sum(name.startswith("basis_module.") for name in eligible) == 9
    assert len(eligible) == 36 and "top_layer" not in eligible
    assert use_winograd(model) == 36
    assert use_winograd(model) == 0  # idempotent
    assert not is_eligible(model.proposal_generator.fcos_head.bbox_pred)
    assert "winograd_weight" not in model.state_dict()  # checkpoints are unchanged
    with torch.no_grad():
        rewired = conv(torch.rand(1, 256, 10, 12, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(rewired, direct)  # another rounding: the Winograd op ran
    torch.testing.assert_close(rewired, direct, rtol=1e-4, atol=1e-4 * float(direct.abs().max()))


def test_only_float32_cpu_convolutions_are_rewired():
    assert use_winograd(_r50().double()) == 0  # float64 weights: the op is float32 only
    assert use_winograd(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1).half())) == 0


def test_rewired_convolutions_run_direct_where_winograd_does_not_apply():
    model = _r50()
    conv = model.proposal_generator.fcos_head.cls_tower[0]
    x = torch.rand(1, 256, 9, 11)
    with torch.no_grad():
        reference = F.conv2d(x, conv.weight, conv.bias, padding=1)
    use_winograd(model)
    # with a gradient to compute: the ordinary convolution, bit for bit, and the gradient flows
    y = conv(x.requires_grad_())
    assert torch.equal(y.detach(), reference)
    y.sum().backward()
    assert x.grad is not None
    # in float64: the ordinary convolution (the transformed filters are float32)
    conv.double()
    with torch.no_grad():
        torch.testing.assert_close(conv(x.detach().double()), F.conv2d(x.detach().double(), conv.weight, conv.bias,
                                                                         padding=1), rtol=0, atol=0)


def test_the_inference_path_with_and_without_winograd_agree():
    model = _r50()
    image = [torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        exact = optimize_for_inference(model, winograd=False)(image)[0]
        fast = optimize_for_inference(model)(image)[0]
    assert fast["boxes"].shape[0] == exact["boxes"].shape[0] == 5
    torch.testing.assert_close(fast["scores"], exact["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast["boxes"], exact["boxes"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fast["masks"], exact["masks"], rtol=1e-3, atol=1e-4)
