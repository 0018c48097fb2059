// Host/device inline math of the blender, shared by the CPU and the CUDA kernels.
//
// The blender (docs/design.md §1) computes, for roi d and output pixel (ph, pw):
//   r[k] = RoIAlign(bases[b_d, k], roi_d)(ph, pw)          crop, torchvision rules
//   a[k] = Upsample(attns[d, k], (R, R))(ph, pw)            bilinear or nearest
//   s[k] = softmax_k(a)
//   out  = sum_k s[k] * r[k]                               normalize == "softmax"
//   out  = sum_k sigmoid(a[k]) * sigmoid(r[k])            normalize == "sigmoid"
// The crop samples bilinearly (RoIAlign) or, with bottom_interp == "nearest", takes the
// value of the nearest base cell of each sample (RoIPool-style, same sampling grid).
// Everything here is written once and compiled by both g++ and nvcc, so the two backends
// cannot drift apart and the CPU tests cover the math that the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BLENDMASK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BLENDMASK_HOST_DEVICE inline
#endif

namespace blendmask {
namespace math {

/// exp for float on the host, written so compilers vectorise loops that call it (no libm
/// call, no branch): Cody-Waite range reduction x = n ln2 + r, a degree-6 polynomial for
/// e^r (Cephes expf coefficients, about 1 ulp) and 2^n built in the exponent bits. Inputs
/// below -87.3 (e^x < 1.2e-38) are clamped there; the softmax only feeds it x <= 0.
BLENDMASK_HOST_DEVICE float exp_vectorizable(float x) {
  x = x > 88.3f ? 88.3f : x;  // two selects of x itself: minps / maxps, NaN passes through
  x = x < -87.3f ? -87.3f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof(two_n));
  return e_r * two_n;
}

// Elementary functions: the CUDA math overloads on the device, <cmath> on the host, except
// float exp on the host, which uses exp_vectorizable so the CPU softmax loops vectorise.
template <typename T>
BLENDMASK_HOST_DEVICE T exp_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  if constexpr (std::is_same<T, float>::value) {
    return exp_vectorizable(x);
  } else {
    return std::exp(x);
  }
#endif
}

/// The logistic function 1 / (1 + exp(-x)), through exp_of (so float stays vectorisable).
template <typename T>
BLENDMASK_HOST_DEVICE T sigmoid_of(T x) {
  return T(1) / (T(1) + exp_of(-x));
}

template <typename T>
BLENDMASK_HOST_DEVICE T floor_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::floor(x);
#else
  return std::floor(x);
#endif
}

template <typename T>
BLENDMASK_HOST_DEVICE T ceil_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::ceil(x);
#else
  return std::ceil(x);
#endif
}

template <typename T>
BLENDMASK_HOST_DEVICE T max_of(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
BLENDMASK_HOST_DEVICE T min_of(T a, T b) {
  return a < b ? a : b;
}

template <typename T>
BLENDMASK_HOST_DEVICE bool is_finite(T x) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// ---------------------------------------------------------------------------------------
// Roi values: the one definition of a valid roi, used by every backend.
// ---------------------------------------------------------------------------------------

/// What is wrong with one roi ``[batch_index, x1, y1, x2, y2]`` of a call on ``num_images``
/// images. The CPU backend turns a problem into an error; the CUDA kernels, which must not
/// synchronise with the host, give such a roi a NaN mask and no gradient.
enum class RoiProblem { None = 0, NonFinite = 1, BatchIndex = 2 };  // BatchIndex: outside [0, N) or fractional

/// The largest ``sampling_ratio`` (samples per bin along each axis) a call accepts: beyond it the
/// sample tables and the work of one roi grow without a useful bound.
constexpr int64_t kMaxSamplingRatio = 128;

template <typename T>
BLENDMASK_HOST_DEVICE RoiProblem roi_problem(const T* roi, int64_t num_images) {
  for (int j = 0; j < 5; ++j) {
    if (!is_finite(roi[j])) return RoiProblem::NonFinite;
  }
  if (!(roi[0] >= T(0) && roi[0] < static_cast<T>(num_images)) || floor_of(roi[0]) != roi[0]) {
    return RoiProblem::BatchIndex;
  }
  return RoiProblem::None;
}

// ---------------------------------------------------------------------------------------
// Crop: torchvision roi_align, one roi.
// ---------------------------------------------------------------------------------------

/// Where the bins of one roi lie on the base map and how many samples each bin averages.
template <typename T>
struct RoiGeometry {
  T start_h;
  T start_w;
  T bin_h;
  T bin_w;
  int grid_h;  // samples per bin along y
  int grid_w;  // samples per bin along x
  T count;     // max(grid_h * grid_w, 1): the divisor of the bin average
};

/// Geometry of roi ``box = [x1, y1, x2, y2]`` (image pixels) exactly as torchvision's
/// roi_align computes it, including ``aligned`` (half-pixel offset) and the adaptive grid
/// (``sampling_ratio <= 0``: ceil(roi size / output size) samples per bin).
template <typename T>
BLENDMASK_HOST_DEVICE RoiGeometry<T> roi_geometry(
    T x1, T y1, T x2, T y2, T spatial_scale, int pooled, int sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiGeometry<T> g;
  g.start_w = x1 * spatial_scale - offset;
  g.start_h = y1 * spatial_scale - offset;
  const T end_w = x2 * spatial_scale - offset;
  const T end_h = y2 * spatial_scale - offset;
  T roi_w = end_w - g.start_w;
  T roi_h = end_h - g.start_h;
  if (!aligned) {  // legacy mode: force malformed rois to be 1x1
    roi_w = max_of(roi_w, T(1));
    roi_h = max_of(roi_h, T(1));
  }
  g.bin_h = roi_h / static_cast<T>(pooled);
  g.bin_w = roi_w / static_cast<T>(pooled);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil_of(roi_h / static_cast<T>(pooled)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil_of(roi_w / static_cast<T>(pooled)));
  g.count = static_cast<T>(max_of(g.grid_h * g.grid_w, 1));
  return g;
}

/// Coordinate of sub-sample ``i`` (of ``grid``) inside bin ``p``, along one axis.
template <typename T>
BLENDMASK_HOST_DEVICE T sample_coord(T start, T bin, int p, int i, int grid) {
  return start + static_cast<T>(p) * bin + static_cast<T>(static_cast<float>(i) + 0.5f) * bin / static_cast<T>(grid);
}

/// One axis of torchvision's bilinear_interpolate: the two taps and their weights.
/// ``valid`` is false when the sample lies beyond one pixel outside the map (it contributes
/// 0); otherwise the coordinate is clamped into the map.
template <typename T>
struct AxisTaps {
  int lo;
  int hi;
  T w_lo;  // weight of ``lo`` (torchvision's hy / hx)
  T w_hi;  // weight of ``hi`` (torchvision's ly / lx)
  bool valid;
};

template <typename T>
BLENDMASK_HOST_DEVICE AxisTaps<T> axis_taps(T coord, int size) {
  AxisTaps<T> t;
  t.valid = !(coord < T(-1) || coord > static_cast<T>(size));
  if (!t.valid) {
    t.lo = t.hi = 0;
    t.w_lo = t.w_hi = T(0);
    return t;
  }
  if (coord <= T(0)) coord = T(0);
  t.lo = static_cast<int>(coord);
  if (t.lo >= size - 1) {
    t.lo = t.hi = size - 1;
    coord = static_cast<T>(t.lo);
  } else {
    t.hi = t.lo + 1;
  }
  t.w_hi = coord - static_cast<T>(t.lo);
  t.w_lo = T(1) - t.w_hi;
  return t;
}

/// One axis of the nearest ("RoIPool-style") sampling: the same validity rule as
/// axis_taps (a sample beyond one pixel outside the map contributes 0), then the coordinate
/// is clamped into [0, size - 1] and rounded half up: index = min(floor(max(coord, 0) + 0.5),
/// size - 1). Both taps are that cell, with weights 1 and 0, so every consumer of AxisTaps
/// (the samplers and the gradient scatters) takes the one cell and sends its gradient there.
template <typename T>
BLENDMASK_HOST_DEVICE AxisTaps<T> axis_taps_nearest(T coord, int size) {
  AxisTaps<T> t;
  t.valid = !(coord < T(-1) || coord > static_cast<T>(size));
  t.w_lo = t.valid ? T(1) : T(0);
  t.w_hi = T(0);
  if (!t.valid) {
    t.lo = t.hi = 0;
    return t;
  }
  if (coord < T(0)) coord = T(0);
  t.lo = min_of(static_cast<int>(floor_of(coord + T(0.5))), size - 1);
  t.hi = t.lo;
  return t;
}

/// The taps of one sample coordinate along one axis for the bottom sampling mode.
template <typename T>
BLENDMASK_HOST_DEVICE AxisTaps<T> sample_taps(T coord, int size, bool nearest) {
  return nearest ? axis_taps_nearest(coord, size) : axis_taps(coord, size);
}

/// Bilinear sample of one plane (row stride ``width``) at the taps ``y`` x ``x``; both
/// must be valid. Same products and summation order as torchvision (w1..w4).
template <typename T, typename scalar_t>
BLENDMASK_HOST_DEVICE T bilinear_sample(const scalar_t* plane, int64_t width, const AxisTaps<T>& y, const AxisTaps<T>& x) {
  const scalar_t* row_lo = plane + static_cast<int64_t>(y.lo) * width;
  const scalar_t* row_hi = plane + static_cast<int64_t>(y.hi) * width;
  const T w1 = y.w_lo * x.w_lo;
  const T w2 = y.w_lo * x.w_hi;
  const T w3 = y.w_hi * x.w_lo;
  const T w4 = y.w_hi * x.w_hi;
  return w1 * static_cast<T>(row_lo[x.lo]) + w2 * static_cast<T>(row_lo[x.hi]) + w3 * static_cast<T>(row_hi[x.lo]) +
      w4 * static_cast<T>(row_hi[x.hi]);
}

/// Crop value r(ph, pw) of one base plane: the average of the bin's valid samples.
/// ``nearest`` picks the nearest-cell sampling of axis_taps_nearest.
template <typename T, typename scalar_t>
BLENDMASK_HOST_DEVICE T roi_align_pixel(
    const scalar_t* plane, int height, int width, const RoiGeometry<T>& g, int ph, int pw, bool nearest = false) {
  T sum = T(0);
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const AxisTaps<T> y = sample_taps(sample_coord(g.start_h, g.bin_h, ph, iy, g.grid_h), height, nearest);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const AxisTaps<T> x = sample_taps(sample_coord(g.start_w, g.bin_w, pw, ix, g.grid_w), width, nearest);
      if (y.valid && x.valid) sum += bilinear_sample(plane, width, y, x);
    }
  }
  return sum / g.count;
}

// ---------------------------------------------------------------------------------------
// Attention upsample: F.interpolate(attns, (R, R), mode=...) for one output index.
// ---------------------------------------------------------------------------------------

/// The two taps of F.interpolate(mode="bilinear", align_corners=False) along one axis:
/// src = max(scale * (dst + 0.5) - 0.5, 0) with scale = in / out.
template <typename T>
struct LinearTaps {
  int i0;
  int i1;
  T w0;
  T w1;
};

template <typename T>
BLENDMASK_HOST_DEVICE LinearTaps<T> upsample_linear_taps(int dst, int in_size, int out_size) {
  LinearTaps<T> t;
  if (in_size == out_size) {
    t.i0 = t.i1 = dst;
    t.w0 = T(1);
    t.w1 = T(0);
    return t;
  }
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  t.i0 = min_of(static_cast<int>(floor_of(src)), in_size - 1);
  t.w1 = min_of(max_of(src - static_cast<T>(t.i0), T(0)), T(1));
  t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
  t.w0 = T(1) - t.w1;
  return t;
}

/// The source index of F.interpolate(mode="nearest") along one axis:
/// min(floor(dst * (in / out)), in - 1), computed in float as PyTorch does.
BLENDMASK_HOST_DEVICE int upsample_nearest_index(int dst, int in_size, int out_size) {
  if (in_size == out_size) return dst;
  if (out_size == 2 * in_size) return dst >> 1;
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  return min_of(static_cast<int>(floor_of(static_cast<float>(dst) * scale)), in_size - 1);
}

/// Upsampled attention a(ph, pw) of one (Mh, Mw) plane, bilinear: the width pass first,
/// then the height pass, as PyTorch's separable CPU kernel sums it.
template <typename T, typename scalar_t>
BLENDMASK_HOST_DEVICE T upsample_bilinear_pixel(
    const scalar_t* plane, int in_h, int in_w, const LinearTaps<T>& ty, const LinearTaps<T>& tx) {
  const scalar_t* r0 = plane + static_cast<int64_t>(ty.i0) * in_w;
  const scalar_t* r1 = plane + static_cast<int64_t>(ty.i1) * in_w;
  const T top = static_cast<T>(r0[tx.i0]) * tx.w0 + static_cast<T>(r0[tx.i1]) * tx.w1;
  const T bottom = static_cast<T>(r1[tx.i0]) * tx.w0 + static_cast<T>(r1[tx.i1]) * tx.w1;
  return top * ty.w0 + bottom * ty.w1;
}

// ---------------------------------------------------------------------------------------
// Softmax over K and the blend, per pixel.
// ---------------------------------------------------------------------------------------

/// Softmax-weighted sum over K in two passes: the caller first finds max_k a[k] (cheap:
/// the attention upsample only), then feeds (a[k], r[k]) one k at a time; ``value()`` is
/// sum_k softmax(a)[k] * r[k]. Three scalars whatever K is, so the CUDA kernels need no
/// per-thread arrays. ``max`` and ``sum`` are what the backward needs to recompute
/// softmax(a)[k] = exp(a[k] - max) / sum.
template <typename T>
struct SoftmaxBlend {
  T max;
  T sum;  // sum_k exp(a[k] - max)
  T acc;  // sum_k exp(a[k] - max) * r[k]

  BLENDMASK_HOST_DEVICE explicit SoftmaxBlend(T max_a) : max(max_a), sum(T(0)), acc(T(0)) {}

  BLENDMASK_HOST_DEVICE void push(T a, T r) {
    const T e = exp_of(a - max);
    sum += e;
    acc += e * r;
  }

  BLENDMASK_HOST_DEVICE T value() const {
    return acc / sum;
  }
};

/// Softmax weight s[k] from the statistics of ``SoftmaxBlend``.
template <typename T>
BLENDMASK_HOST_DEVICE T softmax_weight(T a, T max, T inv_sum) {
  return exp_of(a - max) * inv_sum;
}

/// Per-pixel backward for one k, given g = dL/dout, s = s[k], r = r[k] and out:
///   dL/dr[k] = g * s[k]
///   dL/da[k] = g * s[k] * (r[k] - out)          (softmax Jacobian)
template <typename T>
struct BlendGrads {
  T crop;       // dL/dr[k]
  T attention;  // dL/da[k]
};

template <typename T>
BLENDMASK_HOST_DEVICE BlendGrads<T> blend_grads(T g, T s, T r, T out) {
  BlendGrads<T> d;
  d.crop = g * s;
  d.attention = d.crop * (r - out);
  return d;
}

/// Per-pixel backward of one k in "sigmoid" mode (out = sum_k sigmoid(a[k]) sigmoid(r[k])):
///   dL/dr[k] = g * sigmoid(a[k]) * sigmoid'(r[k])
///   dL/da[k] = g * sigmoid(r[k]) * sigmoid'(a[k])     with sigmoid'(x) = s (1 - s)
template <typename T>
BLENDMASK_HOST_DEVICE BlendGrads<T> sigmoid_blend_grads(T g, T sa, T sr) {
  BlendGrads<T> d;
  d.crop = g * sa * (sr * (T(1) - sr));
  d.attention = g * sr * (sa * (T(1) - sa));
  return d;
}

}  // namespace math
}  // namespace blendmask
