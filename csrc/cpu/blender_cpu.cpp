// CPU entry points of blendmask::blend and blendmask::blend_backward: the shared prologue
// (blender.cpp: argument checks, roi value checks, contiguous inputs), then the kernels of
// blender_cpu_kernels.h, compiled here for the baseline ISA of the build and in
// blender_cpu_avx2.cpp for AVX2+FMA. The AVX2 copy runs when ATen's own CPU capability (the
// one its vectorised kernels use, which honours ATEN_CPU_CAPABILITY=default) is AVX2 or
// better. Both copies compute the same thing; with FMA the results differ from the
// baseline's at rounding level only.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
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
void blend_forward(const BlendCall& call, at::Tensor& output);
void blend_backward(const BlendCall& call, at::Tensor& grad_bases, at::Tensor& grad_attns);
}  // namespace avx2
}  // namespace cpu
#endif

namespace {

#if BLENDMASK_CPU_HAS_AVX2
/// True when the AVX2+FMA kernels may run: ATen's CPU capability is AVX2 or AVX512 (ATen
/// requires FMA for both, and reports DEFAULT under ATEN_CPU_CAPABILITY=default). The
/// capability enum (at::native::get_cpu_capability) is not exported from libtorch_cpu, so
/// its exported string form is read.
bool use_avx2() {
  static const bool enabled = [] {
    const std::string capability = at::get_cpu_capability();
    __builtin_cpu_init();
    return (capability == "AVX2" || capability == "AVX512") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma");
  }();
  return enabled;
}
#endif

at::Tensor blend_cpu(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, int64_t output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  const BlendCall call = prepare_call(
      "blend_cpu", c10::DeviceType::CPU, at::Tensor(), bases, attns, rois, output_size, spatial_scale, sampling_ratio,
      aligned, top_interp, normalize, bottom_interp, /*check_values=*/true);
  at::Tensor output = at::empty({call.n.num_rois, output_size, output_size}, bases.options());
  if (output.numel() == 0) return output;
#if BLENDMASK_CPU_HAS_AVX2
  if (use_avx2()) {
    cpu::avx2::blend_forward(call, output);
    return output;
  }
#endif
  cpu::baseline::blend_forward(call, output);
  return output;
}

std::tuple<at::Tensor, at::Tensor> blend_backward_cpu(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois,
    int64_t output_size, double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  const BlendCall call = prepare_call(
      "blend_backward_cpu", c10::DeviceType::CPU, grad, bases, attns, rois, output_size, spatial_scale,
      sampling_ratio, aligned, top_interp, normalize, bottom_interp, /*check_values=*/true);
  at::Tensor grad_bases = at::zeros(bases.sizes(), bases.options());
  at::Tensor grad_attns = at::zeros(attns.sizes(), attns.options());
  if (call.n.num_rois == 0) return {grad_bases, grad_attns};
#if BLENDMASK_CPU_HAS_AVX2
  if (use_avx2()) {
    cpu::avx2::blend_backward(call, grad_bases, grad_attns);
    return {grad_bases, grad_attns};
  }
#endif
  cpu::baseline::blend_backward(call, grad_bases, grad_attns);
  return {grad_bases, grad_attns};
}

}  // namespace

TORCH_LIBRARY_IMPL(blendmask, CPU, m) {
  m.impl("blend", &blend_cpu);
  m.impl("blend_backward", &blend_backward_cpu);
}

}  // namespace blendmask
