"""The real CUDA kernels (csrc/cuda/blender_cuda_kernels.cuh) executed on the CPU under the
launch emulator of tests/helpers/cuda_emulator.h, against blend_reference.

No machine of this project has a GPU. The per-pixel math is shared with the CPU kernels; this
runs the rest of each kernel: the grid-stride loops, the 32- and 64-bit index arithmetic, the
shared-memory accumulation with its __syncthreads, the atomics and the device-side roi check.
See cuda_emulator.h for what the emulator does not model.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils import cpp_extension

from blendmask.ops import blend_reference, coordinate_dtype

from tests.helpers.blender_inputs import make_inputs, special_rois
from tests.helpers.paths import REPO


HARNESS = r"""
#include <torch/extension.h>
#include "cuda_emulator.h"
#include "cuda/blender_cuda_kernels.cuh"

using namespace blendmask;

static Dims dims_of(const at::Tensor& bases, const at::Tensor& attns, int64_t r, int64_t sr, bool aligned, bool bilinear,
                    bool sigmoid, bool bottom_nearest) {
  return Dims{bases.size(0), (int)bases.size(1), (int)bases.size(2), (int)bases.size(3), attns.size(0),
              (int)attns.size(2), (int)attns.size(3), (int)r, (int)sr, aligned, bilinear, sigmoid, bottom_nearest};
}

at::Tensor forward(at::Tensor bases, at::Tensor attns, at::Tensor rois, int64_t r, double scale, int64_t sr,
                   bool aligned, bool bilinear, int64_t blocks, int64_t threads, bool wide_index, bool sigmoid,
                   bool bottom_nearest) {
  const Dims n = dims_of(bases, attns, r, sr, aligned, bilinear, sigmoid, bottom_nearest);
  at::Tensor out = at::empty({n.num_rois, r, r}, bases.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "emulated_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor coords = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const scalar_t* b = bases.const_data_ptr<scalar_t>();
    const scalar_t* a = attns.const_data_ptr<scalar_t>();
    const acc_t* c = coords.const_data_ptr<acc_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    emulator::launch(blocks, threads, 0, [&] {
      if (wide_index) kernels::blend_forward_kernel<scalar_t, int64_t>(b, a, c, o, n, static_cast<acc_t>(scale));
      else kernels::blend_forward_kernel<scalar_t, int>(b, a, c, o, n, static_cast<acc_t>(scale));
    });
  });
  return out;
}

std::vector<at::Tensor> backward(at::Tensor grad, at::Tensor bases, at::Tensor attns, at::Tensor rois, int64_t r,
                                 double scale, int64_t sr, bool aligned, bool bilinear, int64_t blocks,
                                 int64_t threads, bool wide_index, bool attn_in_shared, bool sigmoid,
                                 bool bottom_nearest) {
  const Dims n = dims_of(bases, attns, r, sr, aligned, bilinear, sigmoid, bottom_nearest);
  const at::ScalarType acc_type = at::toOpMathType(bases.scalar_type());
  at::Tensor grad_bases = at::zeros(bases.sizes(), bases.options().dtype(acc_type));
  at::Tensor grad_attns = at::zeros(attns.sizes(), attns.options().dtype(acc_type));
  const size_t shared = attn_in_shared ? attns.size(1) * attns.size(2) * attns.size(3) * c10::elementSize(acc_type) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "emulated_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor coords = rois.to(acc_type).contiguous();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* b = bases.const_data_ptr<scalar_t>();
    const scalar_t* a = attns.const_data_ptr<scalar_t>();
    const acc_t* c = coords.const_data_ptr<acc_t>();
    acc_t* gb = grad_bases.mutable_data_ptr<acc_t>();
    acc_t* ga = grad_attns.mutable_data_ptr<acc_t>();
    emulator::launch(blocks, threads, shared, [&] {
      if (wide_index) kernels::blend_backward_kernel<scalar_t, int64_t>(g, b, a, c, gb, ga, n, static_cast<acc_t>(scale), attn_in_shared);
      else kernels::blend_backward_kernel<scalar_t, int>(g, b, a, c, gb, ga, n, static_cast<acc_t>(scale), attn_in_shared);
    });
  });
  return {grad_bases.to(bases.scalar_type()), grad_attns.to(attns.scalar_type())};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
"""


@pytest.fixture(scope="module")
def emulated():
    return cpp_extension.load_inline(
        name="blendmask_cuda_emulated",
        cpp_sources=[HARNESS],
        extra_include_paths=[os.path.join(REPO, "csrc"), os.path.join(REPO, "tests", "helpers")],
        extra_cflags=["-O1", "-std=c++20", "-pthread"],
        extra_ldflags=["-pthread"],
        verbose=False,
    )


TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}
# (n, k, h, w, d, m, r, sampling_ratio, aligned, top_interp, blocks, threads)
SHAPES = {
    "default": (2, 4, 12, 14, 5, 7, 9, 1, True, "bilinear", 3, 32),
    "nearest-adaptive": (2, 3, 10, 9, 4, 3, 7, 0, False, "nearest", 2, 17),
    "one-block-grid-stride": (1, 2, 8, 8, 3, 1, 6, 2, True, "bilinear", 1, 8),
    "D=0": (2, 4, 6, 6, 0, 3, 5, 1, True, "bilinear", 1, 16),
}


def _problem(shape, dtype, seed=0):
    n, k, h, w, d, m, r, sr, aligned, interp, blocks, threads = shape
    bases, attns, rois = make_inputs(n=n, k=k, h=h, w=w, d=d, m=m, dtype=torch.float64, seed=seed)
    if d:
        rois = torch.cat([rois, special_rois(n, 4.0 * h, 4.0 * w)])  # boxes outside, zero-area, inverted
        attns = torch.cat([attns, 2 * torch.randn(len(rois) - d, k, m, m, dtype=torch.float64)])
    grad = torch.randn(len(rois), r, r, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    if sr == 0 and aligned:
        rois[:, 1:] = torch.cat([rois[:, [1, 3]].min(1, keepdim=True).values, rois[:, [2, 4]].min(1, keepdim=True).values,
                                 rois[:, [1, 3]].max(1, keepdim=True).values, rois[:, [2, 4]].max(1, keepdim=True).values], 1)
    return [t.to(dtype) for t in (bases, attns, grad)] + [rois]


def _reference(bases, attns, rois, grad, r, sr, aligned, interp, normalize="softmax", bottom_interp="bilinear"):
    # nearest bottom sampling is discontinuous at cell boundaries: its sample coordinates are
    # computed in the kernels' coordinate dtype (float32 below float64)
    wide = torch.float64 if bottom_interp == "bilinear" else coordinate_dtype(bases.dtype)
    b = bases.to(wide).requires_grad_(True)
    a = attns.to(wide).requires_grad_(True)
    out = blend_reference(b, a, rois.to(wide), r, 0.25, sr, aligned, interp, normalize, bottom_interp)
    gb, ga = torch.autograd.grad(out, (b, a), grad.to(wide))
    return out.detach().double(), gb.double(), ga.double()


MODES = [("softmax", "bilinear"), ("sigmoid", "bilinear"), ("softmax", "nearest"), ("sigmoid", "nearest")]


@pytest.mark.parametrize("wide_index", [False, True], ids=["int32", "int64"])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("normalize,bottom_interp", MODES, ids="-".join)
def test_emulated_cuda_kernels_match_reference(emulated, normalize, bottom_interp, shape, dtype, wide_index):
    n, k, h, w, d, m, r, sr, aligned, interp, blocks, threads = SHAPES[shape]
    bases, attns, grad, rois = _problem(SHAPES[shape], dtype)
    tol = TOLERANCES[dtype]
    modes = (normalize == "sigmoid", bottom_interp == "nearest")
    out = emulated.forward(bases, attns, rois, r, 0.25, sr, aligned, interp == "bilinear", blocks, threads, wide_index, *modes)
    ref_out, ref_gb, ref_ga = _reference(bases, attns, rois, grad, r, sr, aligned, interp, normalize, bottom_interp)
    assert out.dtype == dtype and out.shape == ref_out.shape
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    for attn_in_shared in (True, False):
        gb, ga = emulated.backward(grad, bases, attns, rois, r, 0.25, sr, aligned, interp == "bilinear", blocks, threads,
                                   wide_index, attn_in_shared, *modes)
        for name, x, y in (("bases", gb, ref_gb), ("attns", ga, ref_ga)):
            scale = max(1.0, float(y.abs().max())) if y.numel() else 1.0
            torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol * scale, msg=lambda s: f"grad {name}: {s}")


def test_emulated_cuda_bad_roi_gives_nan_mask_and_no_gradient(emulated):
    bases, attns, grad, rois = _problem(SHAPES["default"], torch.float32)
    rois = rois.clone()
    rois[1, 3] = float("nan")
    rois[2, 0] = 9.0  # batch index out of range
    out = emulated.forward(bases, attns, rois, 9, 0.25, 1, True, True, 3, 32, False, False, False)
    assert out[1].isnan().all() and out[2].isnan().all()
    good = [i for i in range(len(rois)) if i not in (1, 2)]
    ref_out, ref_gb, ref_ga = _reference(bases, attns[good], rois[good], grad[good], 9, 1, True, "bilinear")
    torch.testing.assert_close(out[good].double(), ref_out, rtol=2e-5, atol=2e-5)
    gb, ga = emulated.backward(grad, bases, attns, rois, 9, 0.25, 1, True, True, 3, 32, False, True, False, False)
    assert ga[1].abs().max() == 0 and ga[2].abs().max() == 0
    torch.testing.assert_close(gb.double(), ref_gb, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ga[good].double(), ref_ga, rtol=2e-5, atol=2e-5)
