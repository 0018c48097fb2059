// CUDA kernels of blendmask::blend and blendmask::blend_backward.
//
// Forward: one thread per output pixel (grid-stride). It finds max_k of the upsampled
// attentions, then streams k once more, sampling the crop and accumulating the softmax
// blend (blender_math.h): three accumulators whatever K is, no per-thread arrays.
//
// Backward: one block per roi (grid-stride over rois), threads over its pixels. Each pixel
// recomputes its forward, then scatters dL/dr[k] into grad_bases (global atomics: rois
// overlap, so this scatter is unavoidable) and dL/da[k] into the roi's attention gradient,
// which the block owns: it is accumulated in shared memory and written once, without
// global atomics. Half and bfloat16 accumulate in float (at::opmath_type).
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
#include "../blender_math.h"

namespace blendmask {
namespace {

using math::AxisTaps;
using math::LinearTaps;
using math::RoiGeometry;

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 256;
constexpr int64_t kMaxBlocks = 65535;
constexpr int64_t kMaxSharedBytes = 48 * 1024;

template <typename acc_t>
__device__ __forceinline__ RoiGeometry<acc_t> load_geometry(const acc_t* roi, acc_t spatial_scale, const Dims& n) {
  return math::roi_geometry<acc_t>(roi[1], roi[2], roi[3], roi[4], spatial_scale, n.out, n.sampling_ratio, n.aligned);
}

/// Upsample taps of output pixel (ph, pw); nearest mode stores its indices in i0 with weight 1.
template <typename acc_t>
struct PixelTaps {
  LinearTaps<acc_t> y;
  LinearTaps<acc_t> x;
};

template <typename acc_t>
__device__ __forceinline__ PixelTaps<acc_t> pixel_taps(int ph, int pw, const Dims& n) {
  PixelTaps<acc_t> t;
  if (n.bilinear) {
    t.y = math::upsample_linear_taps<acc_t>(ph, n.attn_h, n.out);
    t.x = math::upsample_linear_taps<acc_t>(pw, n.attn_w, n.out);
  } else {
    t.y = LinearTaps<acc_t>{math::upsample_nearest_index(ph, n.attn_h, n.out), 0, acc_t(1), acc_t(0)};
    t.x = LinearTaps<acc_t>{math::upsample_nearest_index(pw, n.attn_w, n.out), 0, acc_t(1), acc_t(0)};
    t.y.i1 = t.y.i0;
    t.x.i1 = t.x.i0;
  }
  return t;
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t attention_at(const scalar_t* plane, const PixelTaps<acc_t>& t, const Dims& n) {
  if (n.bilinear) return math::upsample_bilinear_pixel<acc_t>(plane, n.attn_h, n.attn_w, t.y, t.x);
  return static_cast<acc_t>(plane[t.y.i0 * n.attn_w + t.x.i0]);
}

/// max_k a[k] over the K attention planes of one roi.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t attention_max(const scalar_t* attn, const PixelTaps<acc_t>& t, const Dims& n) {
  const int attn_plane = n.attn_h * n.attn_w;
  acc_t max_a = attention_at<acc_t>(attn, t, n);
  for (int k = 1; k < n.channels; ++k) max_a = math::max_of(max_a, attention_at<acc_t>(attn + k * attn_plane, t, n));
  return max_a;
}

template <typename scalar_t, typename index_t>
__global__ void blend_forward_kernel(
    const scalar_t* __restrict__ bases, const scalar_t* __restrict__ attns,
    const at::opmath_type<scalar_t>* __restrict__ rois, scalar_t* __restrict__ output, Dims n,
    at::opmath_type<scalar_t> spatial_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t total = static_cast<index_t>(n.num_rois) * n.out * n.out;
  const index_t plane_size = static_cast<index_t>(n.height) * n.width;
  const index_t attn_size = static_cast<index_t>(n.channels) * n.attn_h * n.attn_w;
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const int pw = static_cast<int>(i % n.out);
    const int ph = static_cast<int>((i / n.out) % n.out);
    const index_t d = i / (static_cast<index_t>(n.out) * n.out);
    const acc_t* roi = rois + d * 5;
    if (math::roi_problem(roi, n.num_images) != math::RoiProblem::None) {
      output[i] = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());  // see the file comment
      continue;
    }
    const RoiGeometry<acc_t> geo = load_geometry<acc_t>(roi, spatial_scale, n);
    const scalar_t* image = bases + static_cast<index_t>(roi[0]) * n.channels * plane_size;
    const scalar_t* attn = attns + d * attn_size;
    const PixelTaps<acc_t> taps = pixel_taps<acc_t>(ph, pw, n);

    math::SoftmaxBlend<acc_t> blend(attention_max<acc_t>(attn, taps, n));
    for (int k = 0; k < n.channels; ++k) {
      const acc_t a = attention_at<acc_t>(attn + k * n.attn_h * n.attn_w, taps, n);
      const acc_t r = math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw);
      blend.push(a, r);
    }
    output[i] = static_cast<scalar_t>(blend.value());
  }
}

/// Adds ``value`` times the bilinear weights of sample (y, x) into one plane of grad_bases.
template <typename acc_t>
__device__ __forceinline__ void scatter_bilinear(
    acc_t* plane, int width, const AxisTaps<acc_t>& y, const AxisTaps<acc_t>& x, acc_t value) {
  acc_t* row_lo = plane + static_cast<int64_t>(y.lo) * width;
  acc_t* row_hi = plane + static_cast<int64_t>(y.hi) * width;
  atomicAdd(row_lo + x.lo, value * (y.w_lo * x.w_lo));
  atomicAdd(row_lo + x.hi, value * (y.w_lo * x.w_hi));
  atomicAdd(row_hi + x.lo, value * (y.w_hi * x.w_lo));
  atomicAdd(row_hi + x.hi, value * (y.w_hi * x.w_hi));
}

template <typename scalar_t, typename index_t>
__global__ void blend_backward_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ bases, const scalar_t* __restrict__ attns,
    const at::opmath_type<scalar_t>* __restrict__ rois, at::opmath_type<scalar_t>* __restrict__ grad_bases,
    at::opmath_type<scalar_t>* __restrict__ grad_attns, Dims n, at::opmath_type<scalar_t> spatial_scale,
    bool attn_in_shared) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* shared_attn = reinterpret_cast<acc_t*>(shared_bytes);
  const index_t pixels = static_cast<index_t>(n.out) * n.out;
  const index_t plane_size = static_cast<index_t>(n.height) * n.width;
  const int attn_plane = n.attn_h * n.attn_w;
  const index_t attn_size = static_cast<index_t>(n.channels) * attn_plane;

  for (index_t d = blockIdx.x; d < n.num_rois; d += gridDim.x) {
    const acc_t* roi = rois + d * 5;
    // The same for every thread of the block, so no thread skips a __syncthreads alone.
    if (math::roi_problem(roi, n.num_images) != math::RoiProblem::None) continue;  // zero gradient
    const RoiGeometry<acc_t> geo = load_geometry<acc_t>(roi, spatial_scale, n);
    const index_t image_offset = static_cast<index_t>(roi[0]) * n.channels * plane_size;
    const scalar_t* image = bases + image_offset;
    acc_t* grad_image = grad_bases + image_offset;
    const scalar_t* attn = attns + d * attn_size;
    acc_t* grad_attn = attn_in_shared ? shared_attn : grad_attns + d * attn_size;
    if (attn_in_shared) {
      for (int j = threadIdx.x; j < attn_size; j += blockDim.x) shared_attn[j] = acc_t(0);
      __syncthreads();
    }

    for (index_t p = threadIdx.x; p < pixels; p += blockDim.x) {
      const int ph = static_cast<int>(p / n.out);
      const int pw = static_cast<int>(p % n.out);
      const PixelTaps<acc_t> taps = pixel_taps<acc_t>(ph, pw, n);
      math::SoftmaxBlend<acc_t> blend(attention_max<acc_t>(attn, taps, n));
      for (int k = 0; k < n.channels; ++k) {
        blend.push(
            attention_at<acc_t>(attn + k * attn_plane, taps, n),
            math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw));
      }
      const acc_t out = blend.value();
      const acc_t inv_sum = acc_t(1) / blend.sum;
      const acc_t g = static_cast<acc_t>(grad[d * pixels + p]);

      for (int k = 0; k < n.channels; ++k) {
        const acc_t a = attention_at<acc_t>(attn + k * attn_plane, taps, n);
        const acc_t r = math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw);
        const math::BlendGrads<acc_t> bg = math::blend_grads(g, math::softmax_weight(a, blend.max, inv_sum), r, out);

        const acc_t grad_sample = bg.crop / geo.count;
        acc_t* grad_plane = grad_image + k * plane_size;
        for (int iy = 0; iy < geo.grid_h; ++iy) {
          const AxisTaps<acc_t> y = math::axis_taps(math::sample_coord(geo.start_h, geo.bin_h, ph, iy, geo.grid_h), n.height);
          if (!y.valid) continue;
          for (int ix = 0; ix < geo.grid_w; ++ix) {
            const AxisTaps<acc_t> x = math::axis_taps(math::sample_coord(geo.start_w, geo.bin_w, pw, ix, geo.grid_w), n.width);
            if (x.valid) scatter_bilinear(grad_plane, n.width, y, x, grad_sample);
          }
        }

        acc_t* grad_attn_plane = grad_attn + k * attn_plane;
        if (n.bilinear) {
          const acc_t top = bg.attention * taps.y.w0;
          const acc_t bottom = bg.attention * taps.y.w1;
          atomicAdd(grad_attn_plane + taps.y.i0 * n.attn_w + taps.x.i0, top * taps.x.w0);
          atomicAdd(grad_attn_plane + taps.y.i0 * n.attn_w + taps.x.i1, top * taps.x.w1);
          atomicAdd(grad_attn_plane + taps.y.i1 * n.attn_w + taps.x.i0, bottom * taps.x.w0);
          atomicAdd(grad_attn_plane + taps.y.i1 * n.attn_w + taps.x.i1, bottom * taps.x.w1);
        } else {
          atomicAdd(grad_attn_plane + taps.y.i0 * n.attn_w + taps.x.i0, bg.attention);
        }
      }
    }

    if (attn_in_shared) {
      __syncthreads();
      acc_t* dst = grad_attns + d * attn_size;
      for (int j = threadIdx.x; j < attn_size; j += blockDim.x) dst[j] = shared_attn[j];
      __syncthreads();  // the next roi reuses shared_attn
    }
  }
}

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
    double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp) {
  const BlendCall call = prepare_call(
      "blend_cuda", c10::DeviceType::CUDA, at::Tensor(), bases, attns, rois, output_size, spatial_scale,
      sampling_ratio, aligned, top_interp, /*check_values=*/false);
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
    int64_t output_size, double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp) {
  const BlendCall call = prepare_call(
      "blend_backward_cuda", c10::DeviceType::CUDA, grad, bases, attns, rois, output_size, spatial_scale,
      sampling_ratio, aligned, top_interp, /*check_values=*/false);
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
