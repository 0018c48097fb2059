"""Hypothesis fuzzing of the fused blender against the reference: shapes, boxes, options."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blendmask import _extension
from blendmask.ops import _roi_geometry, blend, blend_reference

pytestmark = pytest.mark.skipif(not _extension.extension_loaded(), reason=f"blendmask._C not built: {_extension.load_error()}")

coordinate = st.floats(min_value=-80.0, max_value=200.0, allow_nan=False, width=64)


@st.composite
def blend_problems(draw):
    n = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    m = draw(st.integers(1, 9))
    d = draw(st.integers(0, 6))
    boxes = draw(st.lists(st.tuples(st.integers(0, n - 1), coordinate, coordinate, coordinate, coordinate), min_size=d, max_size=d))
    config = dict(
        output_size=draw(st.integers(1, 20)),
        spatial_scale=draw(st.sampled_from([0.25, 0.125, 0.5, 1.0])),
        sampling_ratio=draw(st.integers(0, 3)),
        aligned=draw(st.booleans()),
        top_interp=draw(st.sampled_from(["bilinear", "nearest"])),
        normalize=draw(st.sampled_from(["softmax", "sigmoid"])),
        bottom_interp=draw(st.sampled_from(["bilinear", "nearest"])),
    )
    if config["sampling_ratio"] == 0 and config["aligned"]:
        # torchvision's CPU roi_align (the reference) cannot size its sample grid for an
        # inverted box in this mode (ceil of a negative size); test_adaptive_inverted_box_is_zero
        # covers the fused op there.
        boxes = [(b, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)) for b, x1, y1, x2, y2 in boxes]
    seed = draw(st.integers(0, 2**31 - 1))
    return n, k, h, w, m, boxes, config, seed


@settings(max_examples=100, deadline=None)
@given(blend_problems())
def test_fuzz_forward_and_backward_match_reference(problem):
    n, k, h, w, m, boxes, config, seed = problem
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(n, k, h, w, dtype=torch.float64, generator=g)
    attns = 3 * torch.randn(len(boxes), k, m, m, dtype=torch.float64, generator=g)
    rois = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)
    r = config["output_size"]
    grad_out = torch.randn(len(boxes), r, r, dtype=torch.float64, generator=g)
    results = []
    for fn in (blend, blend_reference):
        b = bases.clone().requires_grad_(True)
        a = attns.clone().requires_grad_(True)
        out = fn(b, a, rois, **config)
        grads = torch.autograd.grad(out, (b, a), grad_out, allow_unused=True)
        results.append((out, *[torch.zeros_like(x) if gx is None else gx for gx, x in zip(grads, (b, a))]))
    for name, x, y in zip(("out", "grad bases", "grad attns"), *results):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10, msg=lambda s: f"{name} {config}: {s}")


def _adaptive_grid_sizes(rois: torch.Tensor, config) -> torch.Tensor:
    """``(D, 2)`` sample-grid sizes (h, w) of each roi with ``sampling_ratio == 0``, computed in the
    rois' dtype as RoIAlign does (``ceil(roi size / output size)``)."""
    _, _, roi_h, roi_w = _roi_geometry(rois, config["spatial_scale"], config["aligned"])
    return torch.ceil(torch.stack([roi_h, roi_w], dim=1) / config["output_size"])


@settings(max_examples=100, deadline=None)
@given(blend_problems())
def test_fuzz_float32_matches_the_float64_reference(problem):
    """float32 takes the AVX2 copy's 64-bit tap-pair loads (float only), which the float64 fuzz
    above does not reach; the float64 reference of the same float32 inputs bounds their error.

    Except where the two precisions give a roi a different adaptive sample grid: a box whose
    extent is below float32's resolution at its coordinates (e.g. y1 - y0 = 4e-16) is 0 px tall
    in float32 (no sample: a zero crop) and not in float64 (one sample). There the op is a step
    function of the box, and the float32 reference (the same grid) is the one to match."""
    n, k, h, w, m, boxes, config, seed = problem
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(n, k, h, w, generator=g)
    attns = 3 * torch.randn(len(boxes), k, m, m, generator=g)
    rois = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
    r = config["output_size"]
    grad_out = torch.randn(len(boxes), r, r, generator=g)
    same_grids = config["sampling_ratio"] > 0 or torch.equal(_adaptive_grid_sizes(rois, config),
                                                             _adaptive_grid_sizes(rois.double(), config))
    reference_dtype = torch.float64 if same_grids else torch.float32
    results = []
    for fn, dtype in ((blend, torch.float32), (blend_reference, reference_dtype)):
        b = bases.to(dtype).requires_grad_(True)
        a = attns.to(dtype).requires_grad_(True)
        out = fn(b, a, rois.to(dtype), **config)
        grads = torch.autograd.grad(out, (b, a), grad_out.to(dtype), allow_unused=True)
        results.append([t.double() for t in (out, *[torch.zeros_like(x) if gx is None else gx for gx, x in zip(grads, (b, a))])])
    for name, x, y in zip(("out", "grad bases", "grad attns"), *results):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=lambda s: f"{name} {config}: {s}")


def test_a_box_thinner_than_float32_resolution_gets_float32_s_sample_grid():
    """The case hypothesis found: y1 - y0 = 3.9e-16 is no height in float32 (no sample, zero crop)
    and a positive one in float64 (one sample); the float32 op matches the float32 reference."""
    config = dict(output_size=1, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 3.912546893579105e-16]])
    bases, attns = torch.full((1, 1, 1, 1), 1.5), torch.zeros(1, 1, 1, 1)
    grids32, grids64 = _adaptive_grid_sizes(rois, config), _adaptive_grid_sizes(rois.double(), config)
    assert grids32.tolist() == [[0.0, 1.0]] and grids64.tolist() == [[1.0, 1.0]]
    out = blend(bases, attns, rois, **config)
    torch.testing.assert_close(out, blend_reference(bases, attns, rois, **config))
    assert out.abs().max() == 0
    assert blend_reference(bases.double(), attns.double(), rois.double(), **config).abs().max() > 0


def test_adaptive_inverted_box_is_zero():
    """An inverted box with sampling_ratio=0 and aligned=True has a negative sample grid: no
    samples, so zero crops and zero gradients (torchvision's CUDA kernel gives the same; its
    CPU kernel fails to allocate)."""
    bases = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    attns = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 10.0, 16.0, 4.0, 0.0]], dtype=torch.float64)
    out = blend(bases, attns, rois, output_size=4, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    assert out.shape == (1, 4, 4) and out.abs().max() == 0
    grad_bases, grad_attns = torch.autograd.grad(out.sum(), (bases, attns))
    assert grad_bases.abs().max() == 0 and grad_attns.abs().max() == 0
