// CPU entry points of blendmask::blend and blendmask::blend_backward: argument checks,
// then the kernels of blender_cpu_kernels.h, compiled here for the baseline ISA of the
// build and in blender_cpu_avx2.cpp for AVX2+FMA. The AVX2 copy runs when the CPU has
// AVX2 and FMA, unless ATEN_CPU_CAPABILITY=default (ATen's own switch) asks for the
// baseline. Both copies compute the same thing; with FMA the results differ from the
// baseline's at rounding level only.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../blender.h"
#include "../blender_math.h"
#include "blender_cpu_isa.h"

#define BLENDMASK_CPU_ISA baseline
#include "blender_cpu_kernels.h"
#undef BLENDMASK_CPU_ISA

namespace blendmask {

#if BLENDMASK_CPU_HAS_AVX2
namespace cpu {
namespace avx2 {
void blend_forward(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, const Dims& n, double spatial_scale,
    int sampling_ratio, bool aligned, TopInterp mode, at::Tensor& output);
void blend_backward(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, const Dims& n,
    double spatial_scale, int sampling_ratio, bool aligned, TopInterp mode, at::Tensor& grad_bases,
    at::Tensor& grad_attns);
}  // namespace avx2
}  // namespace cpu
#endif

namespace {

using cpu::Dims;
using cpu::dims_of;

#if BLENDMASK_CPU_HAS_AVX2
/// True when the AVX2+FMA kernels may run: the CPU has both and ATEN_CPU_CAPABILITY does
/// not ask for the baseline ("default").
bool use_avx2() {
  static const bool enabled = [] {
    const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
    if (capability != nullptr && std::strcmp(capability, "default") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return enabled;
}
#endif

/// Rejects rois with NaN/inf coordinates or a batch index outside [0, N).
template <typename scalar_t>
void check_roi_values(const scalar_t* rois, int64_t num_rois, int64_t num_images) {
  for (int64_t d = 0; d < num_rois; ++d) {
    const scalar_t* roi = rois + d * 5;
    for (int j = 0; j < 5; ++j) {
      TORCH_CHECK_VALUE(
          std::isfinite(static_cast<double>(roi[j])), "blend: rois[", d, "] has a non-finite value (",
          static_cast<double>(roi[j]), ")");
    }
    const double b = static_cast<double>(roi[0]);
    TORCH_CHECK_VALUE(
        b >= 0 && b < static_cast<double>(num_images), "blend: rois[", d, "] has batch index ", b,
        " out of range for ", num_images, " images");
  }
}

at::Tensor blend_cpu(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, int64_t output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp) {
  check_blend_args(bases, attns, rois, output_size, spatial_scale, sampling_ratio, at::Tensor());
  TORCH_CHECK(bases.device().is_cpu(), "blend_cpu: expected CPU tensors, got ", bases.device());
  const TopInterp mode = parse_top_interp(top_interp);
  const Dims n = dims_of(bases, attns, output_size);
  at::Tensor output = at::empty({n.num_rois, output_size, output_size}, bases.options());
  if (output.numel() == 0) return output;
  const at::Tensor bases_c = bases.contiguous();
  const at::Tensor attns_c = attns.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "blend_cpu", [&] {
    check_roi_values(rois_c.const_data_ptr<scalar_t>(), n.num_rois, n.num_images);
  });
  const int sampling = static_cast<int>(sampling_ratio);
#if BLENDMASK_CPU_HAS_AVX2
  if (use_avx2()) {
    cpu::avx2::blend_forward(bases_c, attns_c, rois_c, n, spatial_scale, sampling, aligned, mode, output);
    return output;
  }
#endif
  cpu::baseline::blend_forward(bases_c, attns_c, rois_c, n, spatial_scale, sampling, aligned, mode, output);
  return output;
}

std::tuple<at::Tensor, at::Tensor> blend_backward_cpu(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois,
    int64_t output_size, double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp) {
  check_blend_args(bases, attns, rois, output_size, spatial_scale, sampling_ratio, grad);
  TORCH_CHECK(bases.device().is_cpu(), "blend_backward_cpu: expected CPU tensors, got ", bases.device());
  const TopInterp mode = parse_top_interp(top_interp);
  const Dims n = dims_of(bases, attns, output_size);
  at::Tensor grad_bases = at::zeros(bases.sizes(), bases.options());
  at::Tensor grad_attns = at::zeros(attns.sizes(), attns.options());
  if (n.num_rois == 0) return {grad_bases, grad_attns};
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor bases_c = bases.contiguous();
  const at::Tensor attns_c = attns.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "blend_backward_cpu", [&] {
    check_roi_values(rois_c.const_data_ptr<scalar_t>(), n.num_rois, n.num_images);
  });
  const int sampling = static_cast<int>(sampling_ratio);
#if BLENDMASK_CPU_HAS_AVX2
  if (use_avx2()) {
    cpu::avx2::blend_backward(
        grad_c, bases_c, attns_c, rois_c, n, spatial_scale, sampling, aligned, mode, grad_bases, grad_attns);
    return {grad_bases, grad_attns};
  }
#endif
  cpu::baseline::blend_backward(
      grad_c, bases_c, attns_c, rois_c, n, spatial_scale, sampling, aligned, mode, grad_bases, grad_attns);
  return {grad_bases, grad_attns};
}

}  // namespace

TORCH_LIBRARY_IMPL(blendmask, CPU, m) {
  m.impl("blend", &blend_cpu);
  m.impl("blend_backward", &blend_backward_cpu);
}

}  // namespace blendmask
