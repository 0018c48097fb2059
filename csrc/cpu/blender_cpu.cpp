// CPU kernels of blendmask::blend and blendmask::blend_backward.
//
// Work is split into rois (and, for the forward with few rois, into row blocks of a roi).
// Per roi the sample coordinates of the crop (separable: one list of y taps, one of x taps)
// are computed once and kept; the attention upsample taps depend only on (M, R) and are
// computed once per call. One output row of R pixels is then produced for all K at a
// time from small per-thread row buffers (K x R), so the inner loops run over contiguous
// memory and nothing of size D x K x R x R is ever allocated.
//
// The backward recomputes the forward row by row. Its gradient w.r.t. attns belongs to one
// roi, so the thread owning the roi writes it. Its gradient w.r.t. bases is a scatter that
// rois can share: every parallel chunk of rois accumulates into its own buffer (chunk 0
// directly into the result when the dtypes allow), and the buffers are summed afterwards.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../blender.h"
#include "../blender_math.h"

namespace blendmask {
namespace {

using math::AxisTaps;
using math::LinearTaps;
using math::RoiGeometry;

/// Sizes of one call, in the kernels' own words.
struct Dims {
  int64_t num_images;  // N
  int64_t channels;    // K
  int height;          // Hb
  int width;           // Wb
  int64_t num_rois;    // D
  int attn_h;          // Mh
  int attn_w;          // Mw
  int out;             // R
};

Dims dims_of(const at::Tensor& bases, const at::Tensor& attns, int64_t output_size) {
  return Dims{bases.size(0), bases.size(1), static_cast<int>(bases.size(2)), static_cast<int>(bases.size(3)),
              attns.size(0), static_cast<int>(attns.size(2)), static_cast<int>(attns.size(3)),
              static_cast<int>(output_size)};
}

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

/// The upsample taps of the attentions; the same for every roi.
template <typename acc_t>
struct AttentionPlan {
  TopInterp mode;
  std::vector<LinearTaps<acc_t>> rows;  // bilinear, per output row
  std::vector<LinearTaps<acc_t>> cols;  // bilinear, per output column
  std::vector<int> nearest_rows;        // nearest, per output row
  std::vector<int> nearest_cols;        // nearest, per output column

  AttentionPlan(TopInterp mode_, const Dims& n) : mode(mode_) {
    if (mode == TopInterp::Bilinear) {
      rows.resize(n.out);
      cols.resize(n.out);
      for (int p = 0; p < n.out; ++p) {
        rows[p] = math::upsample_linear_taps<acc_t>(p, n.attn_h, n.out);
        cols[p] = math::upsample_linear_taps<acc_t>(p, n.attn_w, n.out);
      }
    } else {
      nearest_rows.resize(n.out);
      nearest_cols.resize(n.out);
      for (int p = 0; p < n.out; ++p) {
        nearest_rows[p] = math::upsample_nearest_index(p, n.attn_h, n.out);
        nearest_cols[p] = math::upsample_nearest_index(p, n.attn_w, n.out);
      }
    }
  }
};

/// One k of the row-wise softmax blend: e = exp(a - max), sum += e, acc += e * crop
/// (math::SoftmaxBlend::push for R pixels at once; restrict pointers let it vectorise).
template <typename acc_t>
void softmax_blend_accumulate(
    const acc_t* __restrict a, const acc_t* __restrict max, const acc_t* __restrict crop, acc_t* __restrict e,
    acc_t* __restrict sum, acc_t* __restrict acc, int r) {
  for (int pw = 0; pw < r; ++pw) {
    const acc_t v = math::exp_of(a[pw] - max[pw]);
    e[pw] = v;
    sum[pw] += v;
    acc[pw] += v * crop[pw];
  }
}

/// line[x] = w_lo * row_lo[x] + w_hi * row_hi[x] for x in [begin, end).
template <typename scalar_t, typename acc_t>
void vertical_blend(
    const scalar_t* __restrict row_lo, const scalar_t* __restrict row_hi, acc_t w_lo, acc_t w_hi,
    acc_t* __restrict line, int begin, int end) {
  for (int x = begin; x < end; ++x) {
    line[x] = w_lo * static_cast<acc_t>(row_lo[x]) + w_hi * static_cast<acc_t>(row_hi[x]);
  }
}

/// Per-thread state for one roi at a time: its crop taps and the row buffers.
template <typename scalar_t, typename acc_t>
struct RoiWorkspace {
  const Dims& n;
  RoiGeometry<acc_t> geo{};
  int64_t image = 0;
  std::vector<AxisTaps<acc_t>> y_taps;  // (R * grid_h)
  std::vector<AxisTaps<acc_t>> x_taps;  // (R * grid_w)
  int x_begin = 0;                      // base columns [x_begin, x_end) hold all valid x taps
  int x_end = 0;
  bool all_x_valid = false;             // no x tap falls outside the map: branch-free loops
  std::vector<int> x_lo, x_hi;          // x_taps as separate arrays (R * grid_w)
  std::vector<acc_t> x_w_lo, x_w_hi;
  std::vector<acc_t> width_pass;        // (K, Mh, R): attentions interpolated along x only
  std::vector<acc_t> attn_row;          // (K, R): upsampled attentions of the current row
  std::vector<acc_t> crop_row;          // (K, R): crops of the current row
  std::vector<acc_t> exp_row;           // (K, R): exp(a[k] - max_k a) of the current row
  std::vector<acc_t> max_row;           // (R): max_k a[k]
  std::vector<acc_t> inv_sum_row;       // (R): 1 / sum_k exp(a[k] - max)
  std::vector<acc_t> out_row;           // (R): the blended values
  std::vector<acc_t> line;              // (Wb): two base rows blended for one y sample

  explicit RoiWorkspace(const Dims& dims)
      : n(dims),
        width_pass(static_cast<size_t>(dims.channels) * dims.attn_h * dims.out),
        attn_row(static_cast<size_t>(dims.channels) * dims.out),
        crop_row(static_cast<size_t>(dims.channels) * dims.out),
        exp_row(static_cast<size_t>(dims.channels) * dims.out),
        max_row(dims.out),
        inv_sum_row(dims.out),
        out_row(dims.out),
        line(dims.width) {}

  /// Caches the crop taps of roi ``roi`` (5 values) for output rows [row_begin, row_end).
  void load_roi(const scalar_t* roi, acc_t spatial_scale, int sampling_ratio, bool aligned, int row_begin, int row_end) {
    image = static_cast<int64_t>(roi[0]);
    geo = math::roi_geometry<acc_t>(
        static_cast<acc_t>(roi[1]), static_cast<acc_t>(roi[2]), static_cast<acc_t>(roi[3]), static_cast<acc_t>(roi[4]),
        spatial_scale, n.out, sampling_ratio, aligned);
    const int gh = std::max(geo.grid_h, 0);
    const int gw = std::max(geo.grid_w, 0);
    y_taps.resize(static_cast<size_t>(n.out) * gh);
    x_taps.resize(static_cast<size_t>(n.out) * gw);
    for (int ph = row_begin; ph < row_end; ++ph) {
      for (int iy = 0; iy < gh; ++iy) {
        y_taps[ph * gh + iy] = math::axis_taps(math::sample_coord(geo.start_h, geo.bin_h, ph, iy, geo.grid_h), n.height);
      }
    }
    x_begin = n.width;
    x_end = 0;
    all_x_valid = true;
    const size_t num_x = static_cast<size_t>(n.out) * gw;
    x_lo.resize(num_x);
    x_hi.resize(num_x);
    x_w_lo.resize(num_x);
    x_w_hi.resize(num_x);
    for (int pw = 0; pw < n.out; ++pw) {
      for (int ix = 0; ix < gw; ++ix) {
        const AxisTaps<acc_t> x = math::axis_taps(math::sample_coord(geo.start_w, geo.bin_w, pw, ix, geo.grid_w), n.width);
        const int i = pw * gw + ix;
        x_taps[i] = x;
        x_lo[i] = x.lo;
        x_hi[i] = x.hi;
        x_w_lo[i] = x.w_lo;
        x_w_hi[i] = x.w_hi;
        all_x_valid = all_x_valid && x.valid;
        if (x.valid) {
          x_begin = std::min(x_begin, x.lo);
          x_end = std::max(x_end, x.hi + 1);
        }
      }
    }
  }

  /// Interpolates the roi's attentions (K, Mh, Mw) along x: width_pass (K, Mh, R).
  void load_attention(const scalar_t* attn, const AttentionPlan<acc_t>& plan) {
    if (plan.mode != TopInterp::Bilinear) return;
    for (int64_t km = 0; km < n.channels * n.attn_h; ++km) {
      const scalar_t* src = attn + km * n.attn_w;
      acc_t* dst = width_pass.data() + km * n.out;
      for (int pw = 0; pw < n.out; ++pw) {
        const LinearTaps<acc_t>& t = plan.cols[pw];
        dst[pw] = static_cast<acc_t>(src[t.i0]) * t.w0 + static_cast<acc_t>(src[t.i1]) * t.w1;
      }
    }
  }

  /// Fills attn_row and crop_row (K, R) for output row ``ph``.
  void compute_row(const scalar_t* bases, const scalar_t* attn, const AttentionPlan<acc_t>& plan, int ph) {
    const int gh = std::max(geo.grid_h, 0);
    const int gw = std::max(geo.grid_w, 0);
    const int64_t plane_size = static_cast<int64_t>(n.height) * n.width;
    for (int64_t k = 0; k < n.channels; ++k) {
      acc_t* arow = attn_row.data() + k * n.out;
      if (plan.mode == TopInterp::Bilinear) {
        const LinearTaps<acc_t>& ty = plan.rows[ph];
        const acc_t* top = width_pass.data() + (k * n.attn_h + ty.i0) * n.out;
        const acc_t* bottom = width_pass.data() + (k * n.attn_h + ty.i1) * n.out;
        for (int pw = 0; pw < n.out; ++pw) arow[pw] = top[pw] * ty.w0 + bottom[pw] * ty.w1;
      } else {
        const scalar_t* src = attn + (k * n.attn_h + plan.nearest_rows[ph]) * n.attn_w;
        for (int pw = 0; pw < n.out; ++pw) arow[pw] = static_cast<acc_t>(src[plan.nearest_cols[pw]]);
      }

      acc_t* crow = crop_row.data() + k * n.out;
      std::fill(crow, crow + n.out, acc_t(0));
      const scalar_t* plane = bases + (image * n.channels + k) * plane_size;
      // The bilinear sample evaluated separably: blend the two base rows of the y sample
      // over the roi's columns (vectorised), then interpolate that line at the x taps.
      // Same taps and weights as math::bilinear_sample; the products are grouped
      // differently (w_y * (w_x * v) instead of (w_y * w_x) * v), a rounding-level change.
      for (int iy = 0; iy < gh && x_end > x_begin; ++iy) {
        const AxisTaps<acc_t>& y = y_taps[ph * gh + iy];
        if (!y.valid) continue;
        vertical_blend(plane + static_cast<int64_t>(y.lo) * n.width, plane + static_cast<int64_t>(y.hi) * n.width,
                       y.w_lo, y.w_hi, line.data(), x_begin, x_end);
        if (all_x_valid) {
          for (int pw = 0; pw < n.out; ++pw) {
            for (int ix = 0; ix < gw; ++ix) {
              const int i = pw * gw + ix;
              crow[pw] += line[x_lo[i]] * x_w_lo[i] + line[x_hi[i]] * x_w_hi[i];
            }
          }
        } else {
          for (int pw = 0; pw < n.out; ++pw) {
            for (int ix = 0; ix < gw; ++ix) {
              const AxisTaps<acc_t>& x = x_taps[pw * gw + ix];
              if (x.valid) crow[pw] += line[x.lo] * x.w_lo + line[x.hi] * x.w_hi;
            }
          }
        }
      }
      const acc_t inv_count = acc_t(1) / geo.count;
      for (int pw = 0; pw < n.out; ++pw) crow[pw] *= inv_count;
    }
  }

  /// Softmax over K and the blend for the whole current row: max_row, exp_row, inv_sum_row
  /// and out_row. The same arithmetic as math::SoftmaxBlend, arranged with the pixel loop
  /// innermost so that it vectorises (exp included, see math::exp_vectorizable).
  void blend_row() {
    const int r = n.out;
    acc_t* mx = max_row.data();
    std::copy(attn_row.begin(), attn_row.begin() + r, mx);
    for (int64_t k = 1; k < n.channels; ++k) {
      const acc_t* a = attn_row.data() + k * r;
      for (int pw = 0; pw < r; ++pw) mx[pw] = std::max(mx[pw], a[pw]);
    }
    acc_t* sum = inv_sum_row.data();
    acc_t* acc = out_row.data();
    std::fill(sum, sum + r, acc_t(0));
    std::fill(acc, acc + r, acc_t(0));
    for (int64_t k = 0; k < n.channels; ++k) {
      softmax_blend_accumulate(
          attn_row.data() + k * r, mx, crop_row.data() + k * r, exp_row.data() + k * r, sum, acc, r);
    }
    for (int pw = 0; pw < r; ++pw) {
      sum[pw] = acc_t(1) / sum[pw];
      acc[pw] *= sum[pw];
    }
  }
};

/// How many rows of one roi a forward work item covers: whole rois when there are enough
/// of them to keep every thread busy, row blocks otherwise.
int rows_per_item(const Dims& n) {
  const int64_t wanted_items = 4 * static_cast<int64_t>(at::get_num_threads());
  if (n.num_rois >= wanted_items) return n.out;
  const int64_t blocks = std::min<int64_t>((wanted_items + n.num_rois - 1) / n.num_rois, n.out);
  return static_cast<int>((n.out + blocks - 1) / blocks);
}

template <typename scalar_t>
void blend_forward_kernel(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, const Dims& n, double spatial_scale,
    int sampling_ratio, bool aligned, TopInterp mode, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* bases_p = bases.const_data_ptr<scalar_t>();
  const scalar_t* attns_p = attns.const_data_ptr<scalar_t>();
  const scalar_t* rois_p = rois.const_data_ptr<scalar_t>();
  scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
  const AttentionPlan<acc_t> plan(mode, n);
  const int rows = rows_per_item(n);
  const int blocks = (n.out + rows - 1) / rows;
  const int64_t attn_size = n.channels * n.attn_h * n.attn_w;

  at::parallel_for(0, n.num_rois * blocks, 1, [&](int64_t begin, int64_t end) {
    RoiWorkspace<scalar_t, acc_t> ws(n);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t d = item / blocks;
      const int row_begin = static_cast<int>(item % blocks) * rows;
      const int row_end = std::min(row_begin + rows, n.out);
      const scalar_t* attn = attns_p + d * attn_size;
      ws.load_roi(rois_p + d * 5, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, row_begin, row_end);
      ws.load_attention(attn, plan);
      for (int ph = row_begin; ph < row_end; ++ph) {
        ws.compute_row(bases_p, attn, plan, ph);
        ws.blend_row();
        scalar_t* out_row = out_p + (d * n.out + ph) * n.out;
        for (int pw = 0; pw < n.out; ++pw) out_row[pw] = static_cast<scalar_t>(ws.out_row[pw]);
      }
    }
  });
}

template <typename scalar_t>
void blend_backward_kernel(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, const Dims& n,
    double spatial_scale, int sampling_ratio, bool aligned, TopInterp mode, at::Tensor& grad_bases,
    at::Tensor& grad_attns) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_p = grad.const_data_ptr<scalar_t>();
  const scalar_t* bases_p = bases.const_data_ptr<scalar_t>();
  const scalar_t* attns_p = attns.const_data_ptr<scalar_t>();
  const scalar_t* rois_p = rois.const_data_ptr<scalar_t>();
  scalar_t* grad_attns_p = grad_attns.mutable_data_ptr<scalar_t>();
  const AttentionPlan<acc_t> plan(mode, n);
  const int64_t attn_size = n.channels * n.attn_h * n.attn_w;
  const int64_t bases_size = bases.numel();
  const int64_t plane_size = static_cast<int64_t>(n.height) * n.width;

  // One accumulator of grad_bases per chunk of rois; chunk 0 writes into grad_bases itself
  // when it already has the accumulation dtype.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n.num_rois));
  const bool direct = std::is_same<scalar_t, acc_t>::value;
  const int64_t buffers = direct ? chunks - 1 : chunks;
  std::vector<acc_t> partial(static_cast<size_t>(buffers * bases_size), acc_t(0));
  auto accumulator_of = [&](int64_t chunk) -> acc_t* {
    if (direct && chunk == 0) return reinterpret_cast<acc_t*>(grad_bases.mutable_data_ptr<scalar_t>());
    return partial.data() + (direct ? chunk - 1 : chunk) * bases_size;
  };

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    RoiWorkspace<scalar_t, acc_t> ws(n);
    std::vector<acc_t> grad_crop_row(static_cast<size_t>(n.channels) * n.out);
    std::vector<acc_t> grad_attn_row(static_cast<size_t>(n.channels) * n.out);
    std::vector<acc_t> grad_width_pass(static_cast<size_t>(n.channels) * n.attn_h * n.out);
    std::vector<acc_t> grad_attn(static_cast<size_t>(attn_size));
    std::vector<acc_t> g_row(n.out);
    std::vector<acc_t> grad_line(n.width);  // one base row: the x-scatter of one y sample
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* grad_bases_acc = accumulator_of(chunk);
      const int64_t d_begin = n.num_rois * chunk / chunks;
      const int64_t d_end = n.num_rois * (chunk + 1) / chunks;
      for (int64_t d = d_begin; d < d_end; ++d) {
        const scalar_t* attn = attns_p + d * attn_size;
        ws.load_roi(rois_p + d * 5, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, 0, n.out);
        ws.load_attention(attn, plan);
        const int gh = std::max(ws.geo.grid_h, 0);
        const int gw = std::max(ws.geo.grid_w, 0);
        std::fill(grad_attn.begin(), grad_attn.end(), acc_t(0));
        std::fill(grad_width_pass.begin(), grad_width_pass.end(), acc_t(0));

        for (int ph = 0; ph < n.out; ++ph) {
          ws.compute_row(bases_p, attn, plan, ph);
          ws.blend_row();
          const scalar_t* grad_row = grad_p + (d * n.out + ph) * n.out;
          for (int pw = 0; pw < n.out; ++pw) g_row[pw] = static_cast<acc_t>(grad_row[pw]);
          const acc_t inv_count = acc_t(1) / ws.geo.count;
          for (int64_t k = 0; k < n.channels; ++k) {
            const acc_t* e = ws.exp_row.data() + k * n.out;
            const acc_t* c = ws.crop_row.data() + k * n.out;
            acc_t* gc = grad_crop_row.data() + k * n.out;
            acc_t* ga = grad_attn_row.data() + k * n.out;
            for (int pw = 0; pw < n.out; ++pw) {
              const math::BlendGrads<acc_t> bg = math::blend_grads(g_row[pw], e[pw] * ws.inv_sum_row[pw], c[pw], ws.out_row[pw]);
              gc[pw] = bg.crop * inv_count;
              ga[pw] = bg.attention;
            }
          }

          for (int64_t k = 0; k < n.channels; ++k) {
            // crop: scatter into the (image, k) plane of this chunk's accumulator
            acc_t* plane = grad_bases_acc + (ws.image * n.channels + k) * plane_size;
            const acc_t* gc = grad_crop_row.data() + k * n.out;
            // The x taps are the same for every y sample of the row: scatter along x once
            // into grad_line, then add it to the two base rows with the y weights.
            if (ws.x_end > ws.x_begin) {
              std::fill(grad_line.begin() + ws.x_begin, grad_line.begin() + ws.x_end, acc_t(0));
              if (ws.all_x_valid) {
                for (int pw = 0; pw < n.out; ++pw) {
                  for (int ix = 0; ix < gw; ++ix) {
                    const int i = pw * gw + ix;
                    grad_line[ws.x_lo[i]] += gc[pw] * ws.x_w_lo[i];
                    grad_line[ws.x_hi[i]] += gc[pw] * ws.x_w_hi[i];
                  }
                }
              } else {
                for (int pw = 0; pw < n.out; ++pw) {
                  for (int ix = 0; ix < gw; ++ix) {
                    const AxisTaps<acc_t>& x = ws.x_taps[pw * gw + ix];
                    if (!x.valid) continue;
                    grad_line[x.lo] += gc[pw] * x.w_lo;
                    grad_line[x.hi] += gc[pw] * x.w_hi;
                  }
                }
              }
            }
            for (int iy = 0; iy < gh && ws.x_end > ws.x_begin; ++iy) {
              const AxisTaps<acc_t>& y = ws.y_taps[ph * gh + iy];
              if (!y.valid) continue;
              acc_t* row_lo = plane + static_cast<int64_t>(y.lo) * n.width;
              acc_t* row_hi = plane + static_cast<int64_t>(y.hi) * n.width;
              for (int x = ws.x_begin; x < ws.x_end; ++x) {
                row_lo[x] += grad_line[x] * y.w_lo;
                row_hi[x] += grad_line[x] * y.w_hi;
              }
            }
            // attention: the transpose of the upsample
            const acc_t* ga = grad_attn_row.data() + k * n.out;
            if (mode == TopInterp::Bilinear) {
              const LinearTaps<acc_t>& ty = plan.rows[ph];
              acc_t* top = grad_width_pass.data() + (k * n.attn_h + ty.i0) * n.out;
              acc_t* bottom = grad_width_pass.data() + (k * n.attn_h + ty.i1) * n.out;
              for (int pw = 0; pw < n.out; ++pw) {
                top[pw] += ga[pw] * ty.w0;
                bottom[pw] += ga[pw] * ty.w1;
              }
            } else {
              acc_t* dst = grad_attn.data() + (k * n.attn_h + plan.nearest_rows[ph]) * n.attn_w;
              for (int pw = 0; pw < n.out; ++pw) dst[plan.nearest_cols[pw]] += ga[pw];
            }
          }
        }

        if (mode == TopInterp::Bilinear) {
          for (int64_t km = 0; km < n.channels * n.attn_h; ++km) {
            const acc_t* src = grad_width_pass.data() + km * n.out;
            acc_t* dst = grad_attn.data() + km * n.attn_w;
            for (int pw = 0; pw < n.out; ++pw) {
              const LinearTaps<acc_t>& t = plan.cols[pw];
              dst[t.i0] += src[pw] * t.w0;
              dst[t.i1] += src[pw] * t.w1;
            }
          }
        }
        scalar_t* grad_attn_out = grad_attns_p + d * attn_size;
        for (int64_t i = 0; i < attn_size; ++i) grad_attn_out[i] = static_cast<scalar_t>(grad_attn[i]);
      }
    }
  });

  // Sum the per-chunk accumulators into grad_bases, in parallel over elements.
  scalar_t* grad_bases_p = grad_bases.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, bases_size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t total = direct ? static_cast<acc_t>(grad_bases_p[i]) : acc_t(0);
      for (int64_t b = 0; b < buffers; ++b) total += partial[b * bases_size + i];
      grad_bases_p[i] = static_cast<scalar_t>(total);
    }
  });
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
    blend_forward_kernel<scalar_t>(
        bases_c, attns_c, rois_c, n, spatial_scale, static_cast<int>(sampling_ratio), aligned, mode, output);
  });
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
    blend_backward_kernel<scalar_t>(
        grad_c, bases_c, attns_c, rois_c, n, spatial_scale, static_cast<int>(sampling_ratio), aligned, mode,
        grad_bases, grad_attns);
  });
  return {grad_bases, grad_attns};
}

}  // namespace

TORCH_LIBRARY_IMPL(blendmask, CPU, m) {
  m.impl("blend", &blend_cpu);
  m.impl("blend_backward", &blend_backward_cpu);
}

}  // namespace blendmask
