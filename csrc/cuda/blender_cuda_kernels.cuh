// The CUDA kernels of blendmask::blend / blend_backward (launched by blender_cuda.cu).
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
// normalize == "sigmoid" replaces the softmax blend by sum_k sigmoid(a[k]) sigmoid(r[k]) (one
// pass, no max); bottom_interp == "nearest" replaces the bilinear taps by the nearest cell
// (math::sample_taps), in the forward and in the scatter of the backward alike.
//
// A roi that math::roi_problem rejects (NaN/inf value, batch index outside [0, N)) gets an
// all-NaN mask and no gradient: the kernels validate on the device, so the host never waits.
//
// This header is plain CUDA C++ so that tests/helpers/cuda_emulator.h can compile it for the host
// and run it with real threads per block (tests/ops/test_cuda_emulated.py). It defines
// BLENDMASK_EMULATED_CUDA and its own BLENDMASK_DYNAMIC_SHARED.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <limits>

#include "../blender.h"
#include "../blender_math.h"

#ifndef BLENDMASK_DYNAMIC_SHARED
/// Declares the block's dynamic shared memory as ``unsigned char name[]``.
#define BLENDMASK_DYNAMIC_SHARED(name) extern __shared__ unsigned char name[]
#endif

namespace blendmask {
namespace kernels {

using math::AxisTaps;
using math::LinearTaps;
using math::RoiGeometry;

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

    if (n.sigmoid) {
      acc_t acc = acc_t(0);
      for (int k = 0; k < n.channels; ++k) {
        const acc_t a = attention_at<acc_t>(attn + k * n.attn_h * n.attn_w, taps, n);
        const acc_t r =
            math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw, n.bottom_nearest);
        acc += math::sigmoid_of(a) * math::sigmoid_of(r);
      }
      output[i] = static_cast<scalar_t>(acc);
      continue;
    }
    math::SoftmaxBlend<acc_t> blend(attention_max<acc_t>(attn, taps, n));
    for (int k = 0; k < n.channels; ++k) {
      const acc_t a = attention_at<acc_t>(attn + k * n.attn_h * n.attn_w, taps, n);
      const acc_t r =
          math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw, n.bottom_nearest);
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
  BLENDMASK_DYNAMIC_SHARED(shared_bytes);
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
      // softmax statistics (unused in "sigmoid" mode, whose per-k gradient needs no sum over K)
      math::SoftmaxBlend<acc_t> blend(n.sigmoid ? acc_t(0) : attention_max<acc_t>(attn, taps, n));
      if (!n.sigmoid) {
        for (int k = 0; k < n.channels; ++k) {
          blend.push(
              attention_at<acc_t>(attn + k * attn_plane, taps, n),
              math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw, n.bottom_nearest));
        }
      }
      const acc_t out = n.sigmoid ? acc_t(0) : blend.value();
      const acc_t inv_sum = n.sigmoid ? acc_t(0) : acc_t(1) / blend.sum;
      const acc_t g = static_cast<acc_t>(grad[d * pixels + p]);

      for (int k = 0; k < n.channels; ++k) {
        const acc_t a = attention_at<acc_t>(attn + k * attn_plane, taps, n);
        const acc_t r =
            math::roi_align_pixel<acc_t>(image + k * plane_size, n.height, n.width, geo, ph, pw, n.bottom_nearest);
        const math::BlendGrads<acc_t> bg = n.sigmoid
            ? math::sigmoid_blend_grads(g, math::sigmoid_of(a), math::sigmoid_of(r))
            : math::blend_grads(g, math::softmax_weight(a, blend.max, inv_sum), r, out);

        const acc_t grad_sample = bg.crop / geo.count;
        acc_t* grad_plane = grad_image + k * plane_size;
        for (int iy = 0; iy < geo.grid_h; ++iy) {
          const AxisTaps<acc_t> y = math::sample_taps(
              math::sample_coord(geo.start_h, geo.bin_h, ph, iy, geo.grid_h), n.height, n.bottom_nearest);
          if (!y.valid) continue;
          for (int ix = 0; ix < geo.grid_w; ++ix) {
            const AxisTaps<acc_t> x = math::sample_taps(
                math::sample_coord(geo.start_w, geo.bin_w, pw, ix, geo.grid_w), n.width, n.bottom_nearest);
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

}  // namespace kernels
}  // namespace blendmask
