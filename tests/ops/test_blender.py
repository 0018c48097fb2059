"""Numerics of the fused blender op against the unfused reference (blendmask.ops).

Parity over the paper's ablation grid, gradcheck, edge cases (empty, boxes outside the map,
zero-area and inverted boxes, non-contiguous inputs, reduced precision) and bad inputs.
"""
from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from blendmask import _extension, ops
from blendmask.ops import Blender, blend, blend_reference

from tests.helpers.blender_inputs import SPATIAL_SCALE, make_inputs, special_rois

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")

TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}
TOP_INTERPS = ("bilinear", "nearest")


def _both(bases, attns, rois, **kw):
    return blend(bases, attns, rois, **kw), blend_reference(bases, attns, rois, **kw)


def _grads(fn, bases, attns, rois, grad_out, **kw):
    bases = bases.detach().clone().requires_grad_(True)
    attns = attns.detach().clone().requires_grad_(True)
    out = fn(bases, attns, rois, **kw)
    return torch.autograd.grad(out, (bases, attns), grad_out)


# --- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_interp", TOP_INTERPS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("k,m", list(itertools.product([1, 2, 4, 8], [1, 2, 7, 14])))
def test_forward_parity_grid(k, m, aligned, top_interp):
    """K x M x aligned x top_interp, each over R in {28, 56}, sampling_ratio in {1, 2}, fp64 and fp32, N = 2."""
    for (r, sampling_ratio), dtype in itertools.product([(28, 1), (28, 2), (56, 1), (56, 2)], TOLERANCES):
        bases, attns, rois = make_inputs(n=2, k=k, h=20, w=26, d=5, m=m, dtype=dtype, seed=k * 100 + m)
        kw = dict(output_size=r, spatial_scale=SPATIAL_SCALE, sampling_ratio=sampling_ratio, aligned=aligned, top_interp=top_interp)
        fused, ref = _both(bases, attns, rois, **kw)
        assert fused.shape == (5, r, r) and fused.dtype == dtype
        torch.testing.assert_close(fused, ref, **TOLERANCES[dtype], msg=lambda s: f"{dtype} R={r} sr={sampling_ratio}: {s}")


@pytest.mark.parametrize("top_interp", TOP_INTERPS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_backward_parity(sampling_ratio, aligned, top_interp):
    """Gradients w.r.t. bases and attns equal the reference's autograd gradients (fp64 and fp32)."""
    for dtype in TOLERANCES:
        bases, attns, rois = make_inputs(n=3, k=4, h=18, w=22, d=7, m=7, dtype=dtype, seed=sampling_ratio)
        kw = dict(output_size=28, sampling_ratio=sampling_ratio, aligned=aligned, top_interp=top_interp)
        grad_out = torch.randn(7, 28, 28, dtype=dtype, generator=torch.Generator().manual_seed(1))
        fused = _grads(blend, bases, attns, rois, grad_out, **kw)
        ref = _grads(blend_reference, bases, attns, rois, grad_out, **kw)
        for name, a, b in zip(("bases", "attns"), fused, ref):
            torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=lambda s: f"grad {name} {dtype}: {s}")


def test_adaptive_sampling_forward_parity():
    """sampling_ratio=0 uses ceil(roi size / R) samples per bin, as torchvision."""
    bases, attns, rois = make_inputs(n=2, k=4, h=40, w=50, d=8, m=14, seed=3)
    rois[:, 3:] += 150.0  # large boxes: several samples per bin
    for r in (7, 28):
        fused, ref = _both(bases, attns, rois, output_size=r, sampling_ratio=0)
        torch.testing.assert_close(fused, ref, **TOLERANCES[torch.float64])


def test_list_of_boxes_equals_batched_rois():
    bases, attns, _ = make_inputs(n=2, k=4, d=5)
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 70.0], [10.0, 0.0, 30.0, 90.0]], dtype=torch.float64),
             torch.tensor([[0.0, 0.0, 128.0, 96.0], [50.0, 20.0, 90.0, 60.0], [-5.0, -5.0, 20.0, 20.0]], dtype=torch.float64)]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), dtype=torch.float64), b], 1) for i, b in enumerate(boxes)])
    torch.testing.assert_close(blend(bases, attns, boxes), blend(bases, attns, rois), rtol=0, atol=0)
    torch.testing.assert_close(blend(bases, attns, boxes), blend_reference(bases, attns, boxes), **TOLERANCES[torch.float64])


def test_blender_module_forwards_to_blend():
    bases, attns, rois = make_inputs(k=2, m=2)
    module = Blender(output_size=28, sampling_ratio=2, aligned=False, top_interp="nearest")
    expected = blend(bases, attns, rois, 28, SPATIAL_SCALE, 2, False, "nearest")
    torch.testing.assert_close(module(bases, attns, rois), expected, rtol=0, atol=0)
    assert "top_interp='nearest'" in repr(module)


def test_m1_is_per_instance_coefficients():
    """With M = 1 the attention is one coefficient per (instance, k): softmax(c) . crop."""
    bases, attns, rois = make_inputs(k=4, m=1, d=4)
    from torchvision.ops import roi_align

    crops = roi_align(bases, rois, (28, 28), SPATIAL_SCALE, 1, True)
    expected = (attns.softmax(dim=1) * crops).sum(dim=1)
    torch.testing.assert_close(blend(bases, attns, rois, output_size=28), expected, **TOLERANCES[torch.float64])


# --- gradcheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize("top_interp", TOP_INTERPS)
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 1), (True, 2), (False, 1), (False, 0)])
def test_gradcheck_special_boxes(aligned, sampling_ratio, top_interp):
    """fp64 gradcheck for bases and attns with boxes partly/fully outside, zero-area and inverted."""
    h, w = 7, 9
    rois = special_rois(2, 4.0 * h, 4.0 * w)
    g = torch.Generator().manual_seed(5)
    bases = torch.randn(2, 3, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    attns = (2 * torch.randn(len(rois), 3, 3, 3, dtype=torch.float64, generator=g)).requires_grad_(True)

    def fn(b, a):
        return blend(b, a, rois, output_size=5, spatial_scale=SPATIAL_SCALE, sampling_ratio=sampling_ratio,
                     aligned=aligned, top_interp=top_interp)

    assert torch.autograd.gradcheck(fn, (bases, attns), eps=1e-6, atol=1e-7, fast_mode=False)


def test_special_boxes_match_reference_and_outside_box_is_zero():
    bases, _, _ = make_inputs(n=2, k=4, h=12, w=16)
    rois = special_rois(2, 48.0, 64.0)
    attns = torch.randn(len(rois), 4, 7, 7, dtype=torch.float64)
    for aligned, top_interp in itertools.product([True, False], TOP_INTERPS):
        kw = dict(output_size=14, aligned=aligned, top_interp=top_interp)
        fused, ref = _both(bases, attns, rois, **kw)
        torch.testing.assert_close(fused, ref, **TOLERANCES[torch.float64])
        grad_out = torch.ones_like(fused)
        for a, b in zip(_grads(blend, bases, attns, rois, grad_out, **kw), _grads(blend_reference, bases, attns, rois, grad_out, **kw)):
            torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])
    assert fused[2].abs().max() == 0  # a box fully outside crops nothing


# --- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("rois_as_list", [False, True])
def test_empty_rois(rois_as_list):
    bases = torch.randn(2, 4, 10, 12, dtype=torch.float64, requires_grad=True)
    attns = torch.randn(0, 4, 14, 14, dtype=torch.float64, requires_grad=True)
    rois = [torch.zeros(0, 4, dtype=torch.float64)] * 2 if rois_as_list else torch.zeros(0, 5, dtype=torch.float64)
    out = blend(bases, attns, rois, output_size=28)
    assert out.shape == (0, 28, 28)
    out.sum().backward()
    assert bases.grad.shape == bases.shape and bases.grad.abs().max() == 0
    assert attns.grad.shape == attns.shape


def test_non_contiguous_inputs():
    bases, attns, rois = make_inputs(n=2, k=4, h=20, w=24, d=6, m=7)
    bases_nc = bases.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # transposed strides
    wide = torch.cat([rois, torch.zeros_like(rois)], dim=1)
    rois_nc = wide[:, :5]
    bases_cl = bases.to(memory_format=torch.channels_last)
    assert not bases_nc.is_contiguous() and not rois_nc.is_contiguous() and not bases_cl.is_contiguous()
    expected = blend_reference(bases, attns, rois, output_size=28)
    torch.testing.assert_close(blend(bases_nc, attns, rois_nc, output_size=28), expected, **TOLERANCES[torch.float64])
    torch.testing.assert_close(blend(bases_cl, attns, rois, output_size=28), expected, **TOLERANCES[torch.float64])
    # non-contiguous incoming gradient (expanded) and attns
    attns_t = attns.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_(True)
    assert not attns_t.is_contiguous()
    out = blend(bases, attns_t, rois, output_size=28)
    grad_out = torch.ones(1, 1, 1, dtype=torch.float64).expand_as(out)
    (grad_fused,) = torch.autograd.grad(out, attns_t, grad_out)
    (grad_ref,) = torch.autograd.grad(blend_reference(bases, attns_t, rois, output_size=28), attns_t, grad_out)
    torch.testing.assert_close(grad_fused, grad_ref, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_reduced_precision_cpu(dtype, tol):
    """fp16/bf16 accumulate in fp32; compare with the fp32 reference on the same rounded inputs."""
    bases, attns, rois = make_inputs(n=2, k=4, h=20, w=24, d=6, m=7, dtype=torch.float32)
    bases, attns, rois = bases.to(dtype), attns.to(dtype), rois.to(dtype)
    out = blend(bases, attns, rois, output_size=28)
    assert out.dtype == dtype
    expected = blend_reference(bases.float(), attns.float(), rois.float(), output_size=28)
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
    b = bases.detach().requires_grad_(True)
    a = attns.detach().requires_grad_(True)
    gb, ga = torch.autograd.grad(blend(b, a, rois, output_size=28).float().sum(), (b, a))
    bf = bases.float().requires_grad_(True)
    af = attns.float().requires_grad_(True)
    gbf, gaf = torch.autograd.grad(blend_reference(bf, af, rois.float(), output_size=28).sum(), (bf, af))
    assert gb.dtype == dtype and ga.dtype == dtype
    torch.testing.assert_close(gb.float(), gbf, rtol=tol, atol=tol * gbf.abs().max().item())
    torch.testing.assert_close(ga.float(), gaf, rtol=tol, atol=tol * gaf.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bottom_interp", ["bilinear", "nearest"])
@pytest.mark.parametrize("top_interp", TOP_INTERPS)
def test_no_read_past_the_inputs(dtype, bottom_interp, top_interp):
    """Boxes over the bottom-right corner sample the last row and column of the bases, and the
    upsample reads the last attention column: the kernels must read no element past them. Both
    inputs are views at the start of storage whose following elements are NaN, so a read past
    the end (a tap pair's right cell beyond the map, say) turns the result into NaN."""
    n, k, h, w, m, r = 1, 2, 6, 7, 5, 12
    g = torch.Generator().manual_seed(0)
    rois = torch.tensor([[0, 3.0, 2.0, w + 0.4, h + 0.3], [0, w - 1.6, h - 1.2, w + 0.9, h + 0.8],
                         [0, -0.7, -0.4, w + 0.2, h + 0.1]], dtype=dtype)
    bases_storage = torch.full((2 * n * k * h * w,), float("nan"), dtype=dtype)
    bases = bases_storage[: n * k * h * w].view(n, k, h, w)
    bases.copy_(torch.randn(n, k, h, w, generator=g, dtype=dtype))
    attns_storage = torch.full((2 * len(rois) * k * m * m,), float("nan"), dtype=dtype)
    attns = attns_storage[: len(rois) * k * m * m].view(len(rois), k, m, m)
    attns.copy_(torch.randn(len(rois), k, m, m, generator=g, dtype=dtype))
    kw = dict(output_size=r, spatial_scale=1.0, sampling_ratio=1, top_interp=top_interp, bottom_interp=bottom_interp)
    out = blend(bases, attns, rois, **kw)
    grad_out = torch.randn(out.shape, generator=g, dtype=dtype)
    grads = _grads(blend, bases, attns, rois, grad_out, **kw)
    for name, t in zip(("out", "grad bases", "grad attns"), (out, *grads)):
        assert torch.isfinite(t).all(), f"{name} has non-finite values: a read past the inputs"
    torch.testing.assert_close(out, blend_reference(bases, attns, rois, **kw), **TOLERANCES[dtype])
    for x, y in zip(grads, _grads(blend_reference, bases, attns, rois, grad_out, **kw)):
        torch.testing.assert_close(x, y, **TOLERANCES[dtype])


def test_many_rois_on_many_threads_are_race_free():
    """Heavily overlapping rois scatter into the same base pixels from every thread."""
    bases, attns, _ = make_inputs(n=2, k=4, h=16, w=16, d=64, m=4)
    rois = torch.tensor([[i % 2, 10.0, 12.0, 50.0, 44.0] for i in range(64)], dtype=torch.float64)
    grad_out = torch.randn(64, 14, 14, dtype=torch.float64)
    fused = _grads(blend, bases, attns, rois, grad_out, output_size=14)
    ref = _grads(blend_reference, bases, attns, rois, grad_out, output_size=14)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


def test_double_backward_raises():
    bases, attns, rois = make_inputs(k=2, m=3, d=3)
    attns.requires_grad_(True)
    out = blend(bases, attns, rois, output_size=7)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), attns, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    bases, attns, rois = make_inputs(k=2, m=3, d=3)
    monkeypatch.setattr(ops, "_FUSED_DEVICE_TYPES", frozenset())
    monkeypatch.setattr(_extension, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="falling back"):
        out = blend(bases, attns, rois, output_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blend(bases, attns, rois, output_size=7)  # warned only once
    torch.testing.assert_close(out, blend_reference(bases, attns, rois, output_size=7), rtol=0, atol=0)
    bad = rois.clone()
    bad[0, 0] = 5.0
    with pytest.raises(ValueError, match="batch index"):
        blend(bases, attns, bad, output_size=7)


# --- dtypes: coordinates stay float32 --------------------------------------------------------------

FEATURE_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("roi_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", FEATURE_DTYPES)
def test_rois_keep_their_precision_whatever_the_feature_dtype(dtype, roi_dtype):
    """float32/float64 rois with features of any dtype: the boxes are not rounded to the
    features' dtype. Boxes above 1024 px with fractional edges tell the difference in fp16."""
    bases, attns, _ = make_inputs(n=2, k=4, h=300, w=320, d=4, m=7, dtype=torch.float64)
    rois = torch.tensor([[0, 1000.3, 1011.7, 1190.6, 1150.2], [1, 1030.1, 900.45, 1270.9, 1190.3],
                         [0, 10.3, 20.7, 300.2, 250.1], [1, 600.55, 700.35, 1100.15, 1000.85]], dtype=torch.float64)
    bases, attns, rois = bases.to(dtype), attns.to(dtype), rois.to(roi_dtype)
    out = blend(bases, attns, rois, output_size=28, sampling_ratio=2)
    assert out.dtype == dtype
    coord = torch.float64 if dtype == torch.float64 else torch.float32
    expected = blend_reference(bases.to(coord), attns.to(coord), rois.to(coord), output_size=28, sampling_ratio=2)
    tol = TOLERANCES.get(dtype, dict(rtol=2e-2, atol=2e-2) if dtype == torch.float16 else dict(rtol=8e-2, atol=8e-2))
    torch.testing.assert_close(out.to(coord), expected, **tol)
    rounded = blend_reference(bases.to(coord), attns.to(coord), rois.to(dtype).to(coord), output_size=28, sampling_ratio=2)
    if dtype in (torch.float16, torch.bfloat16):
        # had the boxes been rounded to the feature dtype, the masks would be visibly off
        assert (out.to(coord) - expected).abs().max() < (rounded - expected).abs().max()
    torch.testing.assert_close(blend_reference(bases, attns, rois, output_size=28, sampling_ratio=2), expected.to(dtype),
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rois_are_computed_in_float32(dtype):
    bases, attns, rois = make_inputs(n=2, k=4, d=5, m=7, dtype=torch.float32)
    half = rois.to(dtype)
    torch.testing.assert_close(blend(bases, attns, half), blend(bases, attns, half.float()), rtol=0, atol=0)
    b = bases.clone().requires_grad_(True)
    blend(b, attns, half).sum().backward()
    assert b.grad.dtype == torch.float32


# --- bad input -----------------------------------------------------------------------------------


def _bad_cases():
    bases, attns, rois = make_inputs(n=2, k=4, d=3, m=7)
    nan_rois = rois.clone()
    nan_rois[1, 2] = float("nan")
    inf_rois = rois.clone()
    inf_rois[2, 4] = float("inf")
    neg_rois = rois.clone()
    neg_rois[0, 0] = -1.0
    high_rois = rois.clone()
    high_rois[2, 0] = 2.0
    return {
        "bases rank": ((bases[0], attns, rois), {}, "bases must be"),
        "attns rank": ((bases, attns[:, :, 0], rois), {}, "attns must be"),
        "rois shape": ((bases, attns, rois[:, :4]), {}, "rois must be"),
        "K mismatch": ((bases, attns[:, :3], rois), {}, "K="),
        "D mismatch": ((bases, attns[:2], rois), {}, "D="),
        "batch index high": ((bases, attns, high_rois), {}, "batch index"),
        "batch index negative": ((bases, attns, neg_rois), {}, "batch index"),
        "nan box": ((bases, attns, nan_rois), {}, "non-finite"),
        "inf box": ((bases, attns, inf_rois), {}, "non-finite"),
        "dtype mismatch": ((bases, attns.float(), rois), {}, "dtype"),
        "integer rois": ((bases, attns, rois.long()), {}, "rois must be floating point"),
        "integer bases": ((bases.long(), attns.long(), rois.long()), {}, "floating point"),
        "device mismatch": ((bases, attns.to("meta"), rois), {}, "device"),
        "bad top_interp": ((bases, attns, rois), {"top_interp": "bicubic"}, "top_interp"),
        "output_size 0": ((bases, attns, rois), {"output_size": 0}, "output_size"),
        "negative sampling_ratio": ((bases, attns, rois), {"sampling_ratio": -1}, "sampling_ratio"),
        "zero spatial_scale": ((bases, attns, rois), {"spatial_scale": 0.0}, "spatial_scale"),
        "rois list of wrong boxes": ((bases, attns, [rois[:, :3]]), {}, r"rois\[0\]"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_clear_error(case):
    args, kwargs, match = _bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        blend(*args, **kwargs)


@pytest.mark.parametrize("case", ["K mismatch", "batch index high", "nan box", "dtype mismatch", "output_size 0", "bad top_interp"])
def test_op_called_directly_checks_inputs(case):
    """The schema op itself (bypassing the Python checks) rejects bad input with a ValueError."""
    args, kwargs, match = _bad_cases()[case]
    config = {**dict(output_size=7, spatial_scale=0.25, sampling_ratio=1, aligned=True, top_interp="bilinear"), **kwargs}
    with pytest.raises(ValueError, match=match):
        torch.ops.blendmask.blend.default(*args, *config.values())
    bases, attns, rois = args
    grad = torch.zeros(rois.shape[0], 7, 7, dtype=bases.dtype)
    with pytest.raises(ValueError, match=match):
        torch.ops.blendmask.blend_backward.default(grad, bases, attns, rois, *config.values())


@pytest.mark.parametrize("case", [c for c in _bad_cases() if c != "rois list of wrong boxes"] + ["empty base map"])
def test_reference_refuses_what_the_op_refuses(case):
    """blend_reference raises the fused op's errors, with the same messages (it used to crash in
    torchvision's roi_align on an empty base map)."""
    if case == "empty base map":
        bases, attns, rois = make_inputs(n=1, k=2, d=2, m=3)
        args, kwargs = (bases[:, :, :0], attns, rois), {}
    else:
        args, kwargs, _ = _bad_cases()[case]
    with pytest.raises(ValueError) as fused:
        blend(*args, **kwargs)
    with pytest.raises(ValueError) as reference:
        blend_reference(*args, **kwargs)
    assert str(reference.value) == str(fused.value)


def _wide_cases():
    """Integer arguments that do not fit the kernels' 32-bit ints (zero-element tensors, so cheap)."""
    big = 2**31
    bases, attns, rois = make_inputs(n=1, k=2, d=2, m=3)
    empty_rois = torch.zeros(0, 5, dtype=torch.float64)
    return {
        "output_size": ((bases, attns, rois), {"output_size": big}, "output_size"),
        "sampling_ratio": ((bases, attns, rois), {"sampling_ratio": big}, "sampling_ratio"),
        "K": ((torch.zeros(0, big, 1, 1, dtype=torch.float64), torch.zeros(0, big, 1, 1, dtype=torch.float64), empty_rois),
              {}, "K"),
        "Hb": ((torch.zeros(0, 2, big, 1, dtype=torch.float64), attns[:0], empty_rois), {}, "Hb"),
        "Wb": ((torch.zeros(0, 2, 1, big, dtype=torch.float64), attns[:0], empty_rois), {}, "Wb"),
        "M": ((bases, torch.zeros(0, 2, big, 1, dtype=torch.float64), empty_rois), {}, "M"),
        "K*M*M": ((bases[:, :1].expand(1, 2**16, -1, -1), torch.zeros(0, 2**16, 2**8, 2**8, dtype=torch.float64),
                   empty_rois), {}, "K \\* M \\* M"),
        "R*R": ((bases, attns, rois), {"output_size": 2**16}, "output_size \\*\\* 2"),
    }


@pytest.mark.parametrize("case", list(_wide_cases()))
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_integers_that_do_not_fit_int32_are_refused(case, op):
    args, kwargs, match = _wide_cases()[case]
    config = {**dict(output_size=7, spatial_scale=0.25, sampling_ratio=1, aligned=True, top_interp="bilinear"), **kwargs}
    bases, attns, rois = args
    with pytest.raises(ValueError, match=match):
        if op == "forward":
            torch.ops.blendmask.blend.default(bases, attns, rois, *config.values())
        else:
            r = config["output_size"]
            grad = torch.zeros(0, r, r, dtype=bases.dtype)  # D = 0: the range checks come first
            torch.ops.blendmask.blend_backward.default(grad, bases, attns[:0], rois[:0], *config.values())


def test_meta_kernel_runs_the_same_checks():
    bases, attns, rois = (t.to("meta") for t in make_inputs(n=2, k=4, d=3, m=7))
    with pytest.raises(ValueError, match="K="):
        blend(bases, attns[:, :3], rois)
    with pytest.raises(ValueError, match="device"):
        blend(torch.zeros(2, 4, 5, 5, dtype=torch.float64), attns, rois)


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)])
def test_backward_honours_needs_input_grad(needs):
    """The autograd formula returns None for an input that does not need a gradient."""
    bases, attns, rois = make_inputs(k=2, m=3, d=3)

    class Ctx:
        needs_input_grad = (*needs, False, False, False, False, False, False)
        saved_tensors = (bases, attns, rois)
        config = (7, 0.25, 1, True, "bilinear")

    grads = ops._blend_backward(Ctx(), torch.ones(3, 7, 7, dtype=torch.float64))
    assert len(grads) == 8 and all(g is None for g in grads[2:])
    for need, g, x in zip(needs, grads, (bases, attns)):
        assert (g is not None) == need
        if need:
            assert g.shape == x.shape and g.abs().max() > 0


def test_only_attns_requiring_grad():
    bases, attns, rois = make_inputs(k=2, m=3, d=3)
    attns.requires_grad_(True)
    out = blend(bases, attns, rois, output_size=7)
    out.sum().backward()
    assert bases.grad is None and attns.grad is not None


# --- CUDA (runs only where a GPU is visible) -------------------------------------------------------


@pytest.mark.skipif(not (torch.cuda.is_available() and _extension.has_kernel("cuda")), reason="needs a GPU and the CUDA build")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
@pytest.mark.parametrize("top_interp", TOP_INTERPS)
def test_cuda_matches_cpu(dtype, tol, top_interp):
    bases, attns, rois = make_inputs(n=2, k=4, h=30, w=40, d=20, m=14, dtype=torch.float64)
    rois = torch.cat([rois, special_rois(2, 120.0, 160.0)])
    attns = torch.cat([attns, torch.randn(len(rois) - 20, 4, 14, 14, dtype=torch.float64)])
    kw = dict(output_size=28, top_interp=top_interp)
    grad_out = torch.randn(len(rois), 28, 28, dtype=torch.float64)
    cpu = [t.to(dtype).double() for t in (bases, attns, rois, grad_out)]
    cuda = [t.to("cuda", dtype) for t in (bases, attns, rois, grad_out)]
    out_cpu = blend(*cpu[:3], **kw)
    out_cuda = blend(*cuda[:3], **kw)
    torch.testing.assert_close(out_cuda.double().cpu(), out_cpu, rtol=tol, atol=tol)
    g_cpu = _grads(blend, *cpu[:3], cpu[3], **kw)
    g_cuda = _grads(blend, *cuda[:3], cuda[3], **kw)
    for a, b in zip(g_cuda, g_cpu):
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))
