"""The per-pixel path of csrc/blender_math.h, the one the CUDA kernels run (roi_align_pixel,
upsample_bilinear_pixel / upsample_nearest_index, SoftmaxBlend, softmax_weight, blend_grads),
compiled for the host and checked against the reference. No machine of this project has a
GPU, so this is how the CPU tests cover the GPU's math."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from blendmask.ops import blend_reference
from tests.helpers.paths import REPO


PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "blender_math.h"
using namespace blendmask::math;

// stdin: H W K M R spatial_scale sampling_ratio aligned bilinear, bases (K*H*W), attn (K*M*M),
//        box x1 y1 x2 y2, grad (R*R)
// stdout: R*R outputs, then K*M*M attention gradients (the CUDA kernels' per-pixel formulas)
int main() {
  int H, W, K, M, R, sr, aligned, bilinear;
  double scale;
  if (std::scanf("%d %d %d %d %d %lf %d %d %d", &H, &W, &K, &M, &R, &scale, &sr, &aligned, &bilinear) != 9) return 1;
  std::vector<double> bases(K * H * W), attn(K * M * M), grad(R * R), grad_attn(K * M * M, 0.0);
  for (double& v : bases) std::scanf("%lf", &v);
  for (double& v : attn) std::scanf("%lf", &v);
  double x1, y1, x2, y2;
  std::scanf("%lf %lf %lf %lf", &x1, &y1, &x2, &y2);
  for (double& v : grad) std::scanf("%lf", &v);
  const RoiGeometry<double> g = roi_geometry<double>(x1, y1, x2, y2, scale, R, sr, aligned != 0);
  for (int ph = 0; ph < R; ++ph) {
    for (int pw = 0; pw < R; ++pw) {
      LinearTaps<double> ty, tx;
      if (bilinear) {
        ty = upsample_linear_taps<double>(ph, M, R);
        tx = upsample_linear_taps<double>(pw, M, R);
      } else {
        ty = LinearTaps<double>{upsample_nearest_index(ph, M, R), 0, 1.0, 0.0};
        tx = LinearTaps<double>{upsample_nearest_index(pw, M, R), 0, 1.0, 0.0};
        ty.i1 = ty.i0;
        tx.i1 = tx.i0;
      }
      auto att = [&](int k) { return upsample_bilinear_pixel<double>(attn.data() + k * M * M, M, M, ty, tx); };
      double mx = att(0);
      for (int k = 1; k < K; ++k) mx = max_of(mx, att(k));
      SoftmaxBlend<double> blend(mx);
      for (int k = 0; k < K; ++k) blend.push(att(k), roi_align_pixel<double>(bases.data() + k * H * W, H, W, g, ph, pw));
      const double out = blend.value();
      std::printf("%.17g\n", out);
      for (int k = 0; k < K; ++k) {
        const double r = roi_align_pixel<double>(bases.data() + k * H * W, H, W, g, ph, pw);
        const BlendGrads<double> d = blend_grads(grad[ph * R + pw], softmax_weight(att(k), blend.max, 1.0 / blend.sum), r, out);
        double* ga = grad_attn.data() + k * M * M;
        ga[ty.i0 * M + tx.i0] += d.attention * ty.w0 * tx.w0;
        ga[ty.i0 * M + tx.i1] += d.attention * ty.w0 * tx.w1;
        ga[ty.i1 * M + tx.i0] += d.attention * ty.w1 * tx.w0;
        ga[ty.i1 * M + tx.i1] += d.attention * ty.w1 * tx.w1;
      }
    }
  }
  for (double v : grad_attn) std::printf("%.17g\n", v);
  return 0;
}
"""


@pytest.fixture(scope="module")
def header_program(tmp_path_factory) -> str:
    cxx = shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++ compiler is needed to build the extension and this test"
    build = tmp_path_factory.mktemp("header")
    source = build / "per_pixel.cpp"
    source.write_text(PROGRAM)
    binary = build / "per_pixel"
    result = subprocess.run([cxx, "-std=c++17", "-O1", f"-I{os.path.join(REPO, 'csrc')}", str(source), "-o", str(binary)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return str(binary)


BOXES = [
    (10.0, 6.0, 70.0, 50.0),  # inside
    (-30.0, -12.0, 40.0, 30.0),  # partly outside
    (60.0, 40.0, 130.0, 90.0),  # partly outside, bottom-right
    (30.0, 20.0, 30.0, 20.0),  # zero area
    (50.0, 40.0, 20.0, 10.0),  # inverted
]


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("aligned,sampling_ratio,bilinear", [(True, 1, True), (False, 2, False), (True, 0, True), (False, 1, True)])
def test_cuda_per_pixel_math_matches_reference(header_program, box, aligned, sampling_ratio, bilinear):
    h, w, k, m, r = 20, 24, 3, 4, 9
    g = torch.Generator().manual_seed(7)
    bases = torch.randn(1, k, h, w, dtype=torch.float64, generator=g)
    attns = 2 * torch.randn(1, k, m, m, dtype=torch.float64, generator=g, requires_grad=True)
    grad = torch.randn(1, r, r, dtype=torch.float64, generator=g)
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    top_interp = "bilinear" if bilinear else "nearest"
    if aligned and sampling_ratio == 0 and (box[2] < box[0] or box[3] < box[1]):
        # torchvision's CPU roi_align crashes here; its rule (an empty sample grid, divisor
        # max(count, 1)) makes every crop value 0, so the blend and the attention gradient are 0.
        expected, expected_grad = torch.zeros(1, r, r, dtype=torch.float64), torch.zeros_like(attns)
    else:
        expected = blend_reference(bases, attns, rois, r, 0.25, sampling_ratio, aligned, top_interp)
        (expected_grad,) = torch.autograd.grad(expected, attns, grad)

    numbers = [h, w, k, m, r, 0.25, sampling_ratio, int(aligned), int(bilinear)]
    numbers += bases.flatten().tolist() + attns.detach().flatten().tolist() + list(box) + grad.flatten().tolist()
    result = subprocess.run([header_program], input=" ".join(repr(float(x)) if isinstance(x, float) else str(x) for x in numbers),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    values = torch.tensor([float(v) for v in result.stdout.split()], dtype=torch.float64)
    out, grad_attn = values[: r * r].reshape(1, r, r), values[r * r:].reshape(1, k, m, m)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_attn, expected_grad, rtol=1e-10, atol=1e-12)
