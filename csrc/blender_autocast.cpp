// Autocast kernels of blendmask::blend (CPU and CUDA), after torchvision's
// csrc/ops/autocast/roi_align_kernel.cpp, with the blender's own policy:
//
//   * features: bases and attns are brought to the wider of their two dtypes
//     (c10::promoteTypes), never narrowed; so fp16 features stay fp16 (the kernels
//     accumulate in at::opmath_type, i.e. float32) and a float32 tensor next to a half one
//     makes both float32. The output has that dtype.
//   * rois: passed through untouched, never rounded (the kernels read them in float32, or
//     float64 for float64 features).
//
// Non-floating features are passed through unchanged, so the op's own checks refuse them.
// blend_backward needs no autocast kernel: autograd calls it with the dtypes the forward saw.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "blender.h"

namespace blendmask {
namespace {

using BlendSignature = at::Tensor(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, int64_t, bool, c10::string_view, c10::string_view,
    c10::string_view);

template <c10::DispatchKey autocast_key>
at::Tensor blend_autocast(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, int64_t output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("blendmask::blend", "").typed<BlendSignature>();
  if (!(at::isFloatingType(bases.scalar_type()) && at::isFloatingType(attns.scalar_type()))) {
    return op.call(
        bases, attns, rois, output_size, spatial_scale, sampling_ratio, aligned, top_interp, normalize, bottom_interp);
  }
  const at::ScalarType dtype = c10::promoteTypes(bases.scalar_type(), attns.scalar_type());
  return op.call(
      bases.to(dtype), attns.to(dtype), rois, output_size, spatial_scale, sampling_ratio, aligned, top_interp,
      normalize, bottom_interp);
}

}  // namespace

TORCH_LIBRARY_IMPL(blendmask, AutocastCPU, m) {
  m.impl("blend", &blend_autocast<c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(blendmask, AutocastCUDA, m) {
  m.impl("blend", &blend_autocast<c10::DispatchKey::AutocastCUDA>);
}

}  // namespace blendmask
