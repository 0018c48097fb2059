// CUDA entry points of blendmask::blend and blendmask::blend_backward: the shared prologue
// (blender.cpp), then the launches of the kernels in blender_cuda_kernels.cuh.
//
// No host synchronisation: nothing here waits for the device (no .item(), no copy to the
// host), so the op can be captured in a CUDA graph. Roi values are therefore checked on the
// device, with the predicate the CPU backend raises on (math::roi_problem): a roi with a
// NaN/inf value or a batch index outside [0, N) gets an all-NaN mask in the forward and
// contributes no gradient in the backward; it never reads out of bounds.
//
// Determinism: the backward's atomicAdd scatter into grad_bases makes its float sums depend
// on the order threads run in, so under torch.use_deterministic_algorithms(True) it raises
// PyTorch's standard alert (at::globalContext().alertNotDeterministic), as torchvision's
// roi_align backward does. The forward is deterministic.
//
// Only c10/cuda headers are used (ATen/cuda/CUDAContext.h would need cuSPARSE headers).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../blender.h"
#include "blender_cuda_kernels.cuh"

namespace blendmask {
namespace {

using kernels::blend_backward_kernel;
using kernels::blend_forward_kernel;

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 256;
constexpr int64_t kMaxBlocks = 65535;
constexpr int64_t kMaxSharedBytes = 48 * 1024;

bool fits_int32(std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes) {
    if (s > std::numeric_limits<int32_t>::max() / 2) return false;
  }
  return true;
}

int grid_size(int64_t work, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, kMaxBlocks)));
}

at::Tensor blend_cuda(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, int64_t output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  const BlendCall call = prepare_call(
      "blend_cuda", c10::DeviceType::CUDA, at::Tensor(), bases, attns, rois, output_size, spatial_scale,
      sampling_ratio, aligned, top_interp, normalize, bottom_interp, /*check_values=*/false);
  const c10::cuda::CUDAGuard device_guard(bases.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor output = at::empty({call.n.num_rois, output_size, output_size}, bases.options());
  if (output.numel() == 0) return output;
  const int blocks = grid_size(output.numel(), kForwardThreads);
  const bool small = fits_int32({output.numel(), bases.numel(), attns.numel()});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "blend_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bases_p = call.bases.const_data_ptr<scalar_t>();
    const scalar_t* attns_p = call.attns.const_data_ptr<scalar_t>();
    const acc_t* rois_p = call.rois.const_data_ptr<acc_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    if (small) {
      blend_forward_kernel<scalar_t, int><<<blocks, kForwardThreads, 0, stream>>>(bases_p, attns_p, rois_p, out_p, call.n, scale);
    } else {
      blend_forward_kernel<scalar_t, int64_t><<<blocks, kForwardThreads, 0, stream>>>(bases_p, attns_p, rois_p, out_p, call.n, scale);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> blend_backward_cuda(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois,
    int64_t output_size, double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  const BlendCall call = prepare_call(
      "blend_backward_cuda", c10::DeviceType::CUDA, grad, bases, attns, rois, output_size, spatial_scale,
      sampling_ratio, aligned, top_interp, normalize, bottom_interp, /*check_values=*/false);
  // atomicAdd scatters into grad_bases: the summation order varies from run to run.
  at::globalContext().alertNotDeterministic("blend_backward_cuda");
  const c10::cuda::CUDAGuard device_guard(bases.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType acc_type = at::toOpMathType(bases.scalar_type());
  // Accumulate in opmath (float for half/bfloat16), cast at the end.
  at::Tensor grad_bases = at::zeros(bases.sizes(), bases.options().dtype(acc_type));
  at::Tensor grad_attns = at::zeros(attns.sizes(), attns.options().dtype(acc_type));
  if (call.n.num_rois == 0) return {grad_bases.to(bases.scalar_type()), grad_attns.to(attns.scalar_type())};
  const int blocks = static_cast<int>(std::min<int64_t>(call.n.num_rois, kMaxBlocks));
  const int64_t attn_bytes = attns.size(1) * attns.size(2) * attns.size(3) * c10::elementSize(acc_type);
  const bool attn_in_shared = attn_bytes <= kMaxSharedBytes;
  const size_t shared_bytes = attn_in_shared ? static_cast<size_t>(attn_bytes) : 0;
  const bool small = fits_int32({grad.numel(), bases.numel(), attns.numel()});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "blend_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* grad_p = call.grad.const_data_ptr<scalar_t>();
    const scalar_t* bases_p = call.bases.const_data_ptr<scalar_t>();
    const scalar_t* attns_p = call.attns.const_data_ptr<scalar_t>();
    const acc_t* rois_p = call.rois.const_data_ptr<acc_t>();
    acc_t* grad_bases_p = grad_bases.mutable_data_ptr<acc_t>();
    acc_t* grad_attns_p = grad_attns.mutable_data_ptr<acc_t>();
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    if (small) {
      blend_backward_kernel<scalar_t, int><<<blocks, kBackwardThreads, shared_bytes, stream>>>(
          grad_p, bases_p, attns_p, rois_p, grad_bases_p, grad_attns_p, call.n, scale, attn_in_shared);
    } else {
      blend_backward_kernel<scalar_t, int64_t><<<blocks, kBackwardThreads, shared_bytes, stream>>>(
          grad_p, bases_p, attns_p, rois_p, grad_bases_p, grad_attns_p, call.n, scale, attn_in_shared);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_bases.to(bases.scalar_type()), grad_attns.to(attns.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(blendmask, CUDA, m) {
  m.impl("blend", &blend_cuda);
  m.impl("blend_backward", &blend_backward_cuda);
}

}  // namespace blendmask
