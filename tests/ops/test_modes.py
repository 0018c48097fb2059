"""The blender's normalize ("softmax" | "sigmoid") and bottom_interp ("bilinear" | "nearest")
modes: parity with the reference over dtypes x shapes, gradcheck, the definitions themselves
(independent of the reference), and bad modes."""
from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import roi_align

from blendmask import _extension
from blendmask.ops import Blender, blend, blend_reference, coordinate_dtype

from tests.helpers.blender_inputs import SPATIAL_SCALE, make_inputs, special_rois

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")

TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=8e-2, atol=8e-2),
}
MODES = list(itertools.product(("softmax", "sigmoid"), ("bilinear", "nearest")))
SHAPES = {  # (n, k, h, w, d, m, r, sampling_ratio, aligned, top_interp)
    "K1": (2, 1, 12, 14, 6, 7, 9, 1, True, "bilinear"),
    "K4-adaptive": (2, 4, 10, 9, 5, 3, 7, 0, False, "nearest"),
    "K8-sr2": (1, 8, 16, 12, 4, 14, 28, 2, True, "bilinear"),
    "M1": (3, 2, 8, 8, 5, 1, 6, 1, False, "nearest"),
}


def _config(shape, normalize, bottom_interp):
    n, k, h, w, d, m, r, sr, aligned, top = shape
    return dict(output_size=r, spatial_scale=SPATIAL_SCALE, sampling_ratio=sr, aligned=aligned, top_interp=top,
                normalize=normalize, bottom_interp=bottom_interp)


def _grads(fn, bases, attns, rois, grad_out, **kw):
    b = bases.detach().clone().requires_grad_(True)
    a = attns.detach().clone().requires_grad_(True)
    out = fn(b, a, rois, **kw)
    return (out, *torch.autograd.grad(out, (b, a), grad_out))


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("normalize,bottom_interp", MODES)
def test_modes_match_reference(normalize, bottom_interp, shape, dtype):
    n, k, h, w, d, m, r, *_ = SHAPES[shape]
    bases, attns, rois = make_inputs(n=n, k=k, h=h, w=w, d=d, m=m, dtype=dtype, seed=k + m)
    rois = torch.cat([rois.double(), special_rois(n, 4.0 * h, 4.0 * w)]).to(coordinate_dtype(dtype))
    attns = torch.cat([attns, torch.randn(len(rois) - d, k, m, m, generator=torch.Generator().manual_seed(3)).to(dtype)])
    grad_out = torch.randn(len(rois), r, r, generator=torch.Generator().manual_seed(1)).to(dtype)
    kw = _config(SHAPES[shape], normalize, bottom_interp)
    if kw["sampling_ratio"] == 0 and kw["aligned"]:
        pytest.skip("torchvision's CPU roi_align cannot size the adaptive grid of an inverted aligned box")
    fused = _grads(blend, bases, attns, rois, grad_out, **kw)
    # the reference in the op's coordinate dtype (float32 for reduced precision, in which the op
    # computes): nearest sampling is discontinuous where a sample crosses a cell boundary, so
    # the sample coordinates must be computed in the same precision
    wide = coordinate_dtype(dtype)
    ref = _grads(blend_reference, bases.to(wide), attns.to(wide), rois.to(wide), grad_out.to(wide), **kw)
    assert fused[0].dtype == dtype and fused[0].shape == (len(rois), r, r)
    for name, x, y in zip(("out", "grad bases", "grad attns"), fused, ref):
        x, y = x.detach().double(), y.detach().double()
        scale = max(1.0, float(y.abs().max()))
        tol = TOLERANCES[dtype]
        torch.testing.assert_close(x, y, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("normalize,bottom_interp", MODES)
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 1), (True, 2), (False, 0)])
def test_gradcheck_modes(normalize, bottom_interp, aligned, sampling_ratio):
    """fp64 gradcheck of both inputs, special boxes (outside, zero-area, inverted) included."""
    h, w = 7, 9
    rois = torch.cat([special_rois(2, 4.0 * h, 4.0 * w), torch.tensor([[1, 3.3, 2.1, 25.7, 19.4]], dtype=torch.float64)])
    g = torch.Generator().manual_seed(5)
    bases = torch.randn(2, 3, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    attns = (2 * torch.randn(len(rois), 3, 3, 3, dtype=torch.float64, generator=g)).requires_grad_(True)

    def fn(b, a):
        return blend(b, a, rois, output_size=5, spatial_scale=SPATIAL_SCALE, sampling_ratio=sampling_ratio,
                     aligned=aligned, normalize=normalize, bottom_interp=bottom_interp)

    assert torch.autograd.gradcheck(fn, (bases, attns), eps=1e-6, atol=1e-7, fast_mode=False)


def test_sigmoid_mode_is_the_product_of_sigmoids():
    """Independent of blend_reference: sum_k sigmoid(a_k) sigmoid(r_k) from torchvision's roi_align."""
    bases, attns, rois = make_inputs(n=2, k=3, h=12, w=14, d=5, m=4)
    r = 11
    crop = roi_align(bases, rois, (r, r), SPATIAL_SCALE, 1, True)
    up = torch.nn.functional.interpolate(attns, (r, r), mode="bilinear", align_corners=False)
    expected = (up.sigmoid() * crop.sigmoid()).sum(1)
    torch.testing.assert_close(blend(bases, attns, rois, r, normalize="sigmoid"), expected, **TOLERANCES[torch.float64])


def test_sigmoid_one_basis_is_a_probability_and_uses_the_attention():
    """K = 1: the output lies in [0, 1] and depends on the attention (the softmax would not)."""
    bases, attns, rois = make_inputs(n=2, k=1, h=12, w=14, d=5, m=4)
    out = blend(bases, 5 * attns, rois, 9, normalize="sigmoid")
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, blend(bases, 5 * attns + 1, rois, 9, normalize="sigmoid"))
    softmax = blend(bases, attns, rois, 9)
    torch.testing.assert_close(softmax, blend(bases, attns + 1, rois, 9))  # softmax over one basis is 1


def test_nearest_takes_the_nearest_cell():
    """Hand-computed: scale 1, aligned=False, R = 1, one sample at the box centre."""
    bases = torch.arange(20, dtype=torch.float64).reshape(1, 1, 4, 5)
    attns = torch.zeros(3, 1, 1, 1, dtype=torch.float64)
    # centres (x, y): (1.4, 2.6) -> cell (y=3, x=1); (2.5, 0.5) -> half up (y=1, x=3); (-0.7, 3.8) -> clamped (3, 0)
    rois = torch.tensor([[0, 0.9, 2.1, 1.9, 3.1], [0, 2.0, 0.0, 3.0, 1.0], [0, -1.2, 3.3, -0.2, 4.3]], dtype=torch.float64)
    out = blend(bases, attns, rois, 1, 1.0, 1, False, bottom_interp="nearest")
    assert out.flatten().tolist() == [bases[0, 0, 3, 1].item(), bases[0, 0, 1, 3].item(), bases[0, 0, 3, 0].item()]
    outside = torch.tensor([[0, -3.0, 0.0, -2.0, 1.0]], dtype=torch.float64)  # centre x = -2.5 < -1: contributes 0
    assert blend(bases, attns[:1], outside, 1, 1.0, 1, False, bottom_interp="nearest").item() == 0.0


def test_nearest_gradient_flows_to_one_cell():
    bases = torch.randn(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    attns = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    rois = torch.tensor([[0, 0.9, 2.1, 1.9, 3.1]], dtype=torch.float64)
    blend(bases, attns, rois, 1, 1.0, 1, False, bottom_interp="nearest").sum().backward()
    expected = torch.zeros(1, 1, 4, 5, dtype=torch.float64)
    expected[0, 0, 3, 1] = 1.0
    torch.testing.assert_close(bases.grad, expected)


@pytest.mark.parametrize("name,value", [("normalize", "softplus"), ("bottom_interp", "bicubic")])
def test_bad_mode_lists_the_choices(name, value):
    bases, attns, rois = make_inputs(n=1, k=2, d=2, m=3)
    kw = {name: value}
    for fn in (blend, blend_reference):
        with pytest.raises(ValueError, match=rf"{name} must be .*'.*'.*'.*', got '{value}'"):
            fn(bases, attns, rois, 7, **kw)
    with pytest.raises(ValueError, match=name):
        Blender(**kw)
    with pytest.raises(ValueError, match=rf"{name} must be"):  # the Meta kernel runs the same check
        blend(*(t.to("meta") for t in (bases, attns, rois)), 7, **kw)
    grad = torch.zeros(2, 7, 7, dtype=bases.dtype)
    with pytest.raises(ValueError, match=rf"{name} must be"):
        torch.ops.blendmask.blend_backward.default(grad, bases, attns, rois, 7, 0.25, 1, True, "bilinear", **kw)


def test_blender_module_passes_the_modes():
    bases, attns, rois = make_inputs(n=2, k=3, d=4, m=3)
    module = Blender(output_size=7, normalize="sigmoid", bottom_interp="nearest")
    assert "normalize='sigmoid'" in repr(module) and "bottom_interp='nearest'" in repr(module)
    torch.testing.assert_close(module(bases, attns, rois), blend(bases, attns, rois, 7, normalize="sigmoid", bottom_interp="nearest"))


@pytest.mark.parametrize("normalize,bottom_interp", MODES)
def test_autocast_keeps_the_modes(normalize, bottom_interp):
    bases, attns, rois = make_inputs(n=2, k=3, d=4, m=3, dtype=torch.float32)
    expected = blend(bases, attns, rois, 7, normalize=normalize, bottom_interp=bottom_interp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = blend(bases, attns, rois, 7, normalize=normalize, bottom_interp=bottom_interp)
    torch.testing.assert_close(out, expected)
