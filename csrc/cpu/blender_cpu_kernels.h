// CPU kernels of blendmask::blend and blendmask::blend_backward, compiled once per
// instruction set: blender_cpu.cpp includes this header for the baseline ISA of the build,
// blender_cpu_avx2.cpp for AVX2+FMA (x86-64, chosen at run time when the CPU has them).
// The includer defines BLENDMASK_CPU_ISA (the namespace of this copy) and includes ATen,
// <algorithm>, <vector>, blender.h and blender_math.h first, so only the functions
// defined here take the ISA of the copy.
//
// Work is split into rois (and, for the forward with few rois, into row blocks of a roi).
// Per roi the sample coordinates of the crop (separable: one list of y taps, one of x taps)
// are computed once and kept; the attention upsample taps depend only on (M, R) and are
// computed once per call. One output row of R pixels is then produced for all K at a
// time from small per-thread row buffers (K x R), so the inner loops run over contiguous
// memory and nothing of size D x K x R x R is ever allocated.
//
// Both normalize modes and both bottom samplings share this code: "sigmoid" changes only the
// per-pixel blend (blend_row, the per-pixel grads), "nearest" only the taps (math::sample_taps
// gives both taps of a sample its nearest cell, weights 1 and 0).
//
// Along x, taps are kept in pair form (PairTaps: cells i and i + 1, weights summed onto one
// cell where a sample has one), so a row is read with one 64-bit load per sample in the AVX2
// copy (gather_pairs) and written back with one run accumulator (PairRunAccumulator). In
// AdelaiDet's setting (softmax, one y sample per bin, bilinear attentions) the backward
// sends each pixel's grads straight into the lines and attention rows it came from
// (blend_grads_scatter_row); other settings go through K x R row buffers.
//
// The backward recomputes the forward row by row. Its gradient w.r.t. attns belongs to one
// roi, so the thread owning the roi writes it. Its gradient w.r.t. bases is a scatter that
// rois can share. It runs in two passes per group of rois: the rois in parallel, each
// keeping the gradient of its horizontal lines (one per base row it samples), then the base
// rows in parallel, each adding the lines of the group's rois in roi order. No thread owns a
// copy of grad_bases, and every element sums its terms in the same order whatever the thread
// count, so the result is bit-for-bit the same at any number of threads.
#ifndef BLENDMASK_CPU_ISA
#error "define BLENDMASK_CPU_ISA before including blender_cpu_kernels.h"
#endif

#ifndef BLENDMASK_PREFETCH
#if defined(__GNUC__) || defined(__clang__)
#define BLENDMASK_PREFETCH(address) __builtin_prefetch(address)
#else
#define BLENDMASK_PREFETCH(address) ((void)(address))
#endif
#endif

namespace blendmask {
namespace cpu {


namespace BLENDMASK_CPU_ISA {
namespace {

using math::AxisTaps;
using math::LinearTaps;
using math::RoiGeometry;

/// Adds pairs of values into ``row[index]`` and ``row[index + 1]`` (the two taps of a linear
/// interpolation), summing runs of equal consecutive indices in registers first.
/// Interpolation taps are monotonic, so upsampling hits one index several times in a row;
/// adding each value to memory would chain every add on the previous store. When the index
/// steps by one, the pending sum of the high cell carries on as the next low one, so every
/// cell is written once per line. Taps are in PairTaps form; ``row[index + 1]`` is written
/// only inside the row of ``width`` cells.
template <typename acc_t>
struct PairRunAccumulator {
  acc_t* row;
  int width;
  int index = -1;
  acc_t lo = acc_t(0);
  acc_t hi = acc_t(0);

  PairRunAccumulator(acc_t* row_, int width_) : row(row_), width(width_) {}

  void add(int i, acc_t value_lo, acc_t value_hi) {
    if (i != index) {
      if (index >= 0 && i == index + 1) {  // the next cell: its pending high sum goes on as the low one
        row[index] += lo;
        lo = hi;
        hi = acc_t(0);
      } else {
        flush();
      }
      index = i;
    }
    lo += value_lo;
    hi += value_hi;
  }

  void flush() {
    if (index >= 0) {
      row[index] += lo;
      if (index + 1 < width) row[index + 1] += hi;
    }
    index = -1;
    lo = hi = acc_t(0);
  }
};

/// Linear-interpolation taps along one axis of ``length`` cells, in pair form: tap i reads
/// cells index[i] and index[i] + step with weights w_lo[i] and w_hi[i]; step is 1 unless the
/// axis is one cell long, so both cells always lie on the axis. A tap on one cell (clamped at
/// the border, nearest sampling, or invalid with weights 0) puts its whole weight on it: at
/// the last cell as the high one of the pair (index = length - 2), else as the low one.
/// gather_pairs reads and PairRunAccumulator writes taps of this form.
template <typename acc_t>
struct PairTaps {
  std::vector<int> index;
  std::vector<acc_t> w_lo, w_hi;
  int step = 1;

  void resize(size_t count, int length) {
    index.resize(count);
    w_lo.resize(count);
    w_hi.resize(count);
    step = length > 1 ? 1 : 0;
  }

  /// Tap i from cells lo <= hi <= lo + 1 with weights wl and wh.
  void set(size_t i, int lo, int hi, acc_t wl, acc_t wh, int length) {
    if (hi == lo) {
      wl += wh;
      wh = acc_t(0);
      if (lo + 1 >= length && lo > 0) {
        --lo;
        std::swap(wl, wh);
      }
    }
    index[i] = lo;
    w_lo[i] = wl;
    w_hi[i] = wh;
  }
};

/// The upsample taps of the attentions; the same for every roi.
template <typename acc_t>
struct AttentionPlan {
  TopInterp mode;
  std::vector<LinearTaps<acc_t>> rows;  // bilinear, per output row
  PairTaps<acc_t> col_taps;             // bilinear, per output column
  std::vector<int> nearest_rows;        // nearest, per output row
  std::vector<int> nearest_cols;        // nearest, per output column

  AttentionPlan(TopInterp mode_, const Dims& n) : mode(mode_) {
    if (mode == TopInterp::Bilinear) {
      rows.resize(n.out);
      for (int p = 0; p < n.out; ++p) rows[p] = math::upsample_linear_taps<acc_t>(p, n.attn_h, n.out);
      col_taps.resize(n.out, n.attn_w);
      for (int p = 0; p < n.out; ++p) {
        const LinearTaps<acc_t> t = math::upsample_linear_taps<acc_t>(p, n.attn_w, n.out);
        col_taps.set(p, t.i0, t.i1, t.w0, t.w1, n.attn_w);
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
/// The first k sets sum and acc; e is stored with ``keep_weights`` only (the backward).
template <bool keep_weights, typename acc_t>
void softmax_blend_accumulate(
    const acc_t* __restrict a, const acc_t* __restrict max, const acc_t* __restrict crop, acc_t* __restrict e,
    acc_t* __restrict sum, acc_t* __restrict acc, bool first, int r) {
  if (first) {
    for (int pw = 0; pw < r; ++pw) {
      const acc_t v = math::exp_of(a[pw] - max[pw]);
      if constexpr (keep_weights) e[pw] = v;
      sum[pw] = v;
      acc[pw] = v * crop[pw];
    }
  } else {
    for (int pw = 0; pw < r; ++pw) {
      const acc_t v = math::exp_of(a[pw] - max[pw]);
      if constexpr (keep_weights) e[pw] = v;
      sum[pw] += v;
      acc[pw] += v * crop[pw];
    }
  }
}

/// One k of the row-wise sigmoid blend: e = sigmoid(a), acc += e * sigmoid(crop).
template <typename acc_t>
void sigmoid_blend_accumulate(
    const acc_t* __restrict a, const acc_t* __restrict crop, acc_t* __restrict e, acc_t* __restrict acc, int r) {
  for (int pw = 0; pw < r; ++pw) {
    const acc_t v = math::sigmoid_of(a[pw]);
    e[pw] = v;
    acc[pw] += v * math::sigmoid_of(crop[pw]);
  }
}

/// dst[pw] += w_lo * src_lo[pw] + w_hi * src_hi[pw] over R pixels.
template <typename acc_t>
void add_blended_rows(
    const acc_t* __restrict src_lo, const acc_t* __restrict src_hi, acc_t w_lo, acc_t w_hi, acc_t* __restrict dst, int r) {
  for (int pw = 0; pw < r; ++pw) dst[pw] += w_lo * src_lo[pw] + w_hi * src_hi[pw];
}

/// dst[pw] = (w_lo * src_lo[pw] + w_hi * src_hi[pw]) * scale over R pixels.
template <typename acc_t>
void blend_rows_scaled(
    const acc_t* __restrict src_lo, const acc_t* __restrict src_hi, acc_t w_lo, acc_t w_hi, acc_t scale,
    acc_t* __restrict dst, int r) {
  for (int pw = 0; pw < r; ++pw) dst[pw] = (w_lo * src_lo[pw] + w_hi * src_hi[pw]) * scale;
}

/// The running max over K of the upsampled attentions: max[pw] = a[pw] for the first k,
/// max(max[pw], a[pw]) after.
template <typename acc_t>
void update_max(const acc_t* __restrict a, acc_t* __restrict max, bool first, int r) {
  if (first) {
    std::copy(a, a + r, max);
  } else {
    for (int pw = 0; pw < r; ++pw) max[pw] = std::max(max[pw], a[pw]);
  }
}

/// a[pw] = top[pw] * w0 + bottom[pw] * w1 over R pixels (the height pass of the bilinear
/// attention upsample), with update_max in the same loop.
template <typename acc_t>
void upsample_row_and_max(
    const acc_t* __restrict top, const acc_t* __restrict bottom, acc_t w0, acc_t w1, acc_t* __restrict a,
    acc_t* __restrict max, bool first, int r) {
  if (first) {
    for (int pw = 0; pw < r; ++pw) max[pw] = a[pw] = top[pw] * w0 + bottom[pw] * w1;
  } else {
    for (int pw = 0; pw < r; ++pw) {
      const acc_t v = top[pw] * w0 + bottom[pw] * w1;
      a[pw] = v;
      max[pw] = std::max(max[pw], v);
    }
  }
}

/// dst[pw] = row[lo] * w_lo + row[lo + step] * w_hi over R pixels, with the pair taps
/// [offset, offset + R) of ``taps``, or dst[pw] += that with ``accumulate``: one row (of the
/// bases, or of an attention) interpolated along x. The AVX2 copy loads each tap pair as one
/// 64-bit load, half the loads of a gather of both taps.
template <typename scalar_t, typename acc_t>
void gather_pairs(
    const scalar_t* __restrict row, const PairTaps<acc_t>& taps, int64_t offset, bool accumulate, acc_t* __restrict dst,
    int r) {
  const int* __restrict lo = taps.index.data() + offset;
  const acc_t* __restrict w_lo = taps.w_lo.data() + offset;
  const acc_t* __restrict w_hi = taps.w_hi.data() + offset;
  const int step = taps.step;
  int pw = 0;
#if defined(BLENDMASK_CPU_PAIR_LOADS)
  if constexpr (std::is_same<scalar_t, float>::value && std::is_same<acc_t, float>::value) {
    if (step == 1) {
      // __m128i and __m64 are may-alias types: these loads read the floats without punning them
      auto pair = [&](int i) { return _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + lo[i]))); };
      auto pairs = [&](int i) {  // (row[lo[i]], row[lo[i] + 1], row[lo[i + 1]], row[lo[i + 1] + 1])
        return _mm_loadh_pi(pair(i), reinterpret_cast<const __m64*>(row + lo[i + 1]));
      };
      for (; pw + 8 <= r; pw += 8) {
        const __m256 a = _mm256_insertf128_ps(_mm256_castps128_ps256(pairs(pw)), pairs(pw + 4), 1);
        const __m256 b = _mm256_insertf128_ps(_mm256_castps128_ps256(pairs(pw + 2)), pairs(pw + 6), 1);
        const __m256 left = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));   // row[lo[pw..pw+8)]
        const __m256 right = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));  // row[lo[pw..pw+8) + 1]
        __m256 v = _mm256_fmadd_ps(left, _mm256_loadu_ps(w_lo + pw), _mm256_mul_ps(right, _mm256_loadu_ps(w_hi + pw)));
        if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(dst + pw), v);
        _mm256_storeu_ps(dst + pw, v);
      }
    }
  }
#endif
  for (; pw < r; ++pw) {
    const acc_t v = static_cast<acc_t>(row[lo[pw]]) * w_lo[pw] + static_cast<acc_t>(row[lo[pw] + step]) * w_hi[pw];
    dst[pw] = accumulate ? dst[pw] + v : v;
  }
}

/// Per-pixel backward of one k over R pixels (math::blend_grads):
/// grad_crop = g * s * scale, grad_attn = g * s * (crop - out) with s = e * inv_sum.
template <typename acc_t>
void blend_grads_row(
    const acc_t* __restrict g, const acc_t* __restrict e, const acc_t* __restrict inv_sum, const acc_t* __restrict crop,
    const acc_t* __restrict out, acc_t crop_scale, acc_t* __restrict grad_crop, acc_t* __restrict grad_attn, int r) {
  for (int pw = 0; pw < r; ++pw) {
    const math::BlendGrads<acc_t> bg = math::blend_grads(g[pw], e[pw] * inv_sum[pw], crop[pw], out[pw]);
    grad_crop[pw] = bg.crop * crop_scale;
    grad_attn[pw] = bg.attention;
  }
}

/// The whole per-pixel backward of one k over R pixels in "softmax" mode, for a row whose
/// crop has one y sample and whose attentions are bilinear (AdelaiDet's setting): the grads
/// of blend_grads_row go straight into the two lines of the y sample and the two width-pass
/// rows of the attention taps, without a row buffer in between. The four destinations are
/// distinct (the caller points an unused one at a scratch row with weight 0).
template <typename acc_t>
void blend_grads_scatter_row(
    const acc_t* __restrict g, const acc_t* __restrict e, const acc_t* __restrict inv_sum, const acc_t* __restrict crop,
    const acc_t* __restrict out, acc_t crop_scale, acc_t y_w_lo, acc_t y_w_hi, acc_t* __restrict line_lo,
    acc_t* __restrict line_hi, acc_t a_w0, acc_t a_w1, acc_t* __restrict attn_top, acc_t* __restrict attn_bottom,
    int r) {
  for (int pw = 0; pw < r; ++pw) {
    const math::BlendGrads<acc_t> bg = math::blend_grads(g[pw], e[pw] * inv_sum[pw], crop[pw], out[pw]);
    const acc_t gc = bg.crop * crop_scale;
    line_lo[pw] += gc * y_w_lo;
    line_hi[pw] += gc * y_w_hi;
    attn_top[pw] += bg.attention * a_w0;
    attn_bottom[pw] += bg.attention * a_w1;
  }
}

/// Per-pixel backward of one k over R pixels in "sigmoid" mode (math::sigmoid_blend_grads),
/// with e = sigmoid(a) from the forward.
template <typename acc_t>
void sigmoid_blend_grads_row(
    const acc_t* __restrict g, const acc_t* __restrict e, const acc_t* __restrict crop, acc_t crop_scale,
    acc_t* __restrict grad_crop, acc_t* __restrict grad_attn, int r) {
  for (int pw = 0; pw < r; ++pw) {
    const math::BlendGrads<acc_t> bg = math::sigmoid_blend_grads(g[pw], e[pw], math::sigmoid_of(crop[pw]));
    grad_crop[pw] = bg.crop * crop_scale;
    grad_attn[pw] = bg.attention;
  }
}

/// dst_lo[pw] += g[pw] * w_lo and dst_hi[pw] += g[pw] * w_hi over R pixels.
template <typename acc_t>
void scatter_rows(const acc_t* __restrict g, acc_t w_lo, acc_t w_hi, acc_t* __restrict dst_lo, acc_t* __restrict dst_hi, int r) {
  for (int pw = 0; pw < r; ++pw) {
    dst_lo[pw] += g[pw] * w_lo;
    dst_hi[pw] += g[pw] * w_hi;
  }
}

/// Per-thread state for one roi at a time: its crop taps and the row buffers.
template <typename scalar_t, typename acc_t>
struct RoiWorkspace {
  const Dims& n;
  RoiGeometry<acc_t> geo{};
  int64_t image = 0;
  std::vector<AxisTaps<acc_t>> y_taps;  // (R * grid_h)
  PairTaps<acc_t> x_taps;               // (grid_w * R), sample-major; an invalid sample has weights 0
  std::vector<acc_t> width_pass;        // (K, Mh, R): attentions interpolated along x only
  std::vector<acc_t> attn_row;          // (K, R): upsampled attentions of the current row
  std::vector<acc_t> crop_row;          // (K, R): crops of the current row
  std::vector<acc_t> exp_row;           // (K, R): exp(a[k] - max_k a) of the current row
  std::vector<acc_t> max_row;           // (R): max_k a[k]
  std::vector<acc_t> inv_sum_row;       // (R): 1 / sum_k exp(a[k] - max)
  std::vector<acc_t> out_row;           // (R): the blended values
  // The crop is evaluated separably, x first: every base row the roi samples ("slot") is
  // interpolated at the R x positions once (horizontal), then each output row blends the
  // two slots of its y samples, vectorised over the R pixels. The backward runs the
  // transpose: output rows scatter into per-slot lines, the lines into the base rows.
  // Same taps and weights as math::bilinear_sample; the products are grouped as
  // w_y * (w_x * v) instead of (w_y * w_x) * v, a rounding-level difference.
  std::vector<int> row_slot;            // (Hb): slot of a base row, -1 when unused
  std::vector<int> slot_rows;           // (slots): the base row of each slot
  std::vector<int> y_slot_lo, y_slot_hi;  // (R * grid_h): slots of y_taps[i].lo / .hi
  std::vector<acc_t> horizontal;        // (K, slots, R)

  explicit RoiWorkspace(const Dims& dims)
      : n(dims),
        width_pass(static_cast<size_t>(dims.channels) * dims.attn_h * dims.out),
        attn_row(static_cast<size_t>(dims.channels) * dims.out),
        crop_row(static_cast<size_t>(dims.channels) * dims.out),
        exp_row(static_cast<size_t>(dims.channels) * dims.out),
        max_row(dims.out),
        inv_sum_row(dims.out),
        out_row(dims.out),
        row_slot(dims.height, -1) {}

  /// Caches the crop taps of roi ``roi`` (5 values) for output rows [row_begin, row_end).
  void load_roi(const acc_t* roi, acc_t spatial_scale, int sampling_ratio, bool aligned, int row_begin, int row_end) {
    image = static_cast<int64_t>(roi[0]);
    geo = math::roi_geometry<acc_t>(
        roi[1], roi[2], roi[3], roi[4], spatial_scale, n.out, sampling_ratio, aligned);
    const int gh = std::max(geo.grid_h, 0);
    const int gw = std::max(geo.grid_w, 0);
    y_taps.resize(static_cast<size_t>(n.out) * gh);
    x_taps.resize(static_cast<size_t>(n.out) * gw, n.width);
    for (int ph = row_begin; ph < row_end; ++ph) {
      for (int iy = 0; iy < gh; ++iy) {
        y_taps[ph * gh + iy] = math::sample_taps(
            math::sample_coord(geo.start_h, geo.bin_h, ph, iy, geo.grid_h), n.height, n.bottom_nearest);
      }
    }
    for (int pw = 0; pw < n.out; ++pw) {
      for (int ix = 0; ix < gw; ++ix) {
        const AxisTaps<acc_t> x =
            math::sample_taps(math::sample_coord(geo.start_w, geo.bin_w, pw, ix, geo.grid_w), n.width, n.bottom_nearest);
        // axis_taps gives 0, 0 and zero weights to an invalid sample
        x_taps.set(ix * n.out + pw, x.lo, x.hi, x.valid ? x.w_lo : acc_t(0), x.valid ? x.w_hi : acc_t(0), n.width);
      }
    }
    for (int row : slot_rows) row_slot[row] = -1;
    slot_rows.clear();
    y_slot_lo.resize(y_taps.size());
    y_slot_hi.resize(y_taps.size());
    auto slot_of = [&](int row) {
      if (row_slot[row] < 0) {
        row_slot[row] = static_cast<int>(slot_rows.size());
        slot_rows.push_back(row);
      }
      return row_slot[row];
    };
    for (int i = row_begin * gh; i < row_end * gh; ++i) {
      if (!y_taps[i].valid) continue;
      y_slot_lo[i] = slot_of(y_taps[i].lo);
      y_slot_hi[i] = slot_of(y_taps[i].hi);
    }
  }

  int num_slots() const {
    return static_cast<int>(slot_rows.size());
  }

  /// horizontal (K, slots, R): every sampled base row interpolated at the R x positions
  /// (sum over the x samples of a bin).
  void load_crops(const scalar_t* bases) {
    const int gw = std::max(geo.grid_w, 0);
    const int64_t plane_size = static_cast<int64_t>(n.height) * n.width;
    horizontal.resize(static_cast<size_t>(n.channels) * num_slots() * n.out);
    // the cells the x taps read in a row, prefetched a few rows ahead: each row is a new
    // cache line or two, and the loads of one row cannot start before their indices
    const std::vector<int>& x_index = x_taps.index;
    const int first_cell = gw > 0 ? *std::min_element(x_index.begin(), x_index.end()) : 0;
    const int last_cell = gw > 0 ? *std::max_element(x_index.begin(), x_index.end()) + x_taps.step : 0;
    constexpr int kPrefetchRows = 4;
    constexpr int kLineElements = 64 / sizeof(scalar_t);
    for (int64_t k = 0; k < n.channels; ++k) {
      const scalar_t* plane = bases + (image * n.channels + k) * plane_size;
      for (int slot = 0; slot < num_slots(); ++slot) {
        const scalar_t* row = plane + static_cast<int64_t>(slot_rows[slot]) * n.width;
        if (slot + kPrefetchRows < num_slots()) {
          const scalar_t* ahead = plane + static_cast<int64_t>(slot_rows[slot + kPrefetchRows]) * n.width;
          for (int c = first_cell; c <= last_cell; c += kLineElements) BLENDMASK_PREFETCH(ahead + c);
          BLENDMASK_PREFETCH(ahead + last_cell);
        }
        acc_t* dst = horizontal.data() + (k * num_slots() + slot) * n.out;
        if (gw == 0) std::fill(dst, dst + n.out, acc_t(0));
        for (int ix = 0; ix < gw; ++ix) {
          const int64_t t = static_cast<int64_t>(ix) * n.out;
          gather_pairs(row, x_taps, t, ix > 0, dst, n.out);
        }
      }
    }
  }

  /// Interpolates the roi's attentions (K, Mh, Mw) along x: width_pass (K, Mh, R).
  void load_attention(const scalar_t* attn, const AttentionPlan<acc_t>& plan) {
    if (plan.mode != TopInterp::Bilinear) return;
    for (int64_t km = 0; km < n.channels * n.attn_h; ++km) {
      gather_pairs(attn + km * n.attn_w, plan.col_taps, 0, false, width_pass.data() + km * n.out, n.out);
    }
  }

  /// Fills attn_row and crop_row (K, R) and max_row (R, the max over K of attn_row) for output
  /// row ``ph`` (after load_roi, load_attention, load_crops).
  void compute_row(const scalar_t* attn, const AttentionPlan<acc_t>& plan, int ph) {
    const int gh = std::max(geo.grid_h, 0);
    for (int64_t k = 0; k < n.channels; ++k) {
      acc_t* arow = attn_row.data() + k * n.out;
      if (plan.mode == TopInterp::Bilinear) {
        const LinearTaps<acc_t>& ty = plan.rows[ph];
        const acc_t* top = width_pass.data() + (k * n.attn_h + ty.i0) * n.out;
        const acc_t* bottom = width_pass.data() + (k * n.attn_h + ty.i1) * n.out;
        upsample_row_and_max(top, bottom, ty.w0, ty.w1, arow, max_row.data(), k == 0, n.out);
      } else {
        const scalar_t* src = attn + (k * n.attn_h + plan.nearest_rows[ph]) * n.attn_w;
        for (int pw = 0; pw < n.out; ++pw) arow[pw] = static_cast<acc_t>(src[plan.nearest_cols[pw]]);
        update_max(arow, max_row.data(), k == 0, n.out);
      }

      acc_t* crow = crop_row.data() + k * n.out;
      const acc_t* hk = horizontal.data() + k * num_slots() * n.out;
      const acc_t inv_count = acc_t(1) / geo.count;
      if (gh == 1 && y_taps[ph].valid) {
        const AxisTaps<acc_t>& y = y_taps[ph];
        blend_rows_scaled(hk + y_slot_lo[ph] * n.out, hk + y_slot_hi[ph] * n.out, y.w_lo, y.w_hi, inv_count, crow, n.out);
        continue;
      }
      std::fill(crow, crow + n.out, acc_t(0));
      for (int iy = 0; iy < gh; ++iy) {
        const int i = ph * gh + iy;
        const AxisTaps<acc_t>& y = y_taps[i];
        if (!y.valid) continue;
        add_blended_rows(hk + y_slot_lo[i] * n.out, hk + y_slot_hi[i] * n.out, y.w_lo, y.w_hi, crow, n.out);
      }
      for (int pw = 0; pw < n.out; ++pw) crow[pw] *= inv_count;
    }
  }

  /// Softmax over K and the blend for the whole current row: max_row, exp_row, inv_sum_row
  /// and out_row. The same arithmetic as math::SoftmaxBlend, arranged with the pixel loop
  /// innermost so that it vectorises (exp included, see math::exp_vectorizable). In
  /// "sigmoid" mode: exp_row holds sigmoid(a[k]) and out_row sum_k sigmoid(a[k]) sigmoid(r[k]).
  /// In "softmax" mode exp_row is written with ``keep_weights`` only (the backward needs it, the
  /// forward not); the "sigmoid" mode always writes it.
  void blend_row(bool keep_weights) {
    const int r = n.out;
    if (n.sigmoid) {
      acc_t* acc = out_row.data();
      std::fill(acc, acc + r, acc_t(0));
      for (int64_t k = 0; k < n.channels; ++k) {
        sigmoid_blend_accumulate(attn_row.data() + k * r, crop_row.data() + k * r, exp_row.data() + k * r, acc, r);
      }
      return;
    }
    const acc_t* mx = max_row.data();  // from compute_row
    acc_t* sum = inv_sum_row.data();
    acc_t* acc = out_row.data();
    for (int64_t k = 0; k < n.channels; ++k) {
      const acc_t* a = attn_row.data() + k * r;
      const acc_t* crop = crop_row.data() + k * r;
      if (keep_weights) {
        softmax_blend_accumulate<true>(a, mx, crop, exp_row.data() + k * r, sum, acc, k == 0, r);
      } else {
        softmax_blend_accumulate<false>(a, mx, crop, exp_row.data() + k * r, sum, acc, k == 0, r);
      }
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
void blend_forward_kernel(const BlendCall& call, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& n = call.n;
  const double spatial_scale = call.spatial_scale;
  const int sampling_ratio = n.sampling_ratio;
  const bool aligned = n.aligned;
  const TopInterp mode = n.bilinear ? TopInterp::Bilinear : TopInterp::Nearest;
  const scalar_t* bases_p = call.bases.const_data_ptr<scalar_t>();
  const scalar_t* attns_p = call.attns.const_data_ptr<scalar_t>();
  const acc_t* rois_p = call.rois.const_data_ptr<acc_t>();
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
      ws.load_crops(bases_p);
      for (int ph = row_begin; ph < row_end; ++ph) {
        ws.compute_row(attn, plan, ph);
        ws.blend_row(false);
        scalar_t* out_row = out_p + (d * n.out + ph) * n.out;
        for (int pw = 0; pw < n.out; ++pw) out_row[pw] = static_cast<scalar_t>(ws.out_row[pw]);
      }
    }
  });
}

/// About how many base rows a roi samples (at most 2 per sample row, and the map's height).
template <typename acc_t>
double sampled_base_rows(const RoiGeometry<acc_t>& geo, const Dims& n) {
  const double sample_rows = static_cast<double>(n.out) * std::max(geo.grid_h, 0);
  const double height = std::abs(static_cast<double>(geo.bin_h) * n.out);
  return std::min({2.0 * sample_rows, height + 2.0, static_cast<double>(n.height)});
}

/// Splits the rois [0, count) of ``rois`` into ``chunks`` consecutive runs of about equal
/// backward work (returns the chunks + 1 bounds). A roi costs K x R x R for its pixels plus
/// K x R per base row it samples (at most 2 per sample row), so tall boxes cost up to three
/// times as much as short ones; an even split by count would leave one thread waiting.
template <typename acc_t>
std::vector<int64_t> balanced_roi_chunks(
    const acc_t* rois, int64_t count, const Dims& n, acc_t spatial_scale, int sampling_ratio, bool aligned,
    int64_t chunks) {
  std::vector<double> prefix(count + 1, 0.0);
  for (int64_t d = 0; d < count; ++d) {
    const acc_t* roi = rois + d * 5;
    const RoiGeometry<acc_t> geo =
        math::roi_geometry<acc_t>(roi[1], roi[2], roi[3], roi[4], spatial_scale, n.out, sampling_ratio, aligned);
    prefix[d + 1] = prefix[d] + static_cast<double>(n.out) * (n.out + sampled_base_rows(geo, n));
  }
  std::vector<int64_t> bounds(chunks + 1, count);
  bounds[0] = 0;
  int64_t d = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const double target = prefix[count] * static_cast<double>(c) / static_cast<double>(chunks);
    while (d < count && prefix[d + 1] <= target) ++d;
    bounds[c] = d;
  }
  return bounds;
}

/// What the first backward pass keeps of one roi for the second: the gradient of its
/// horizontal lines (the transpose of RoiWorkspace::horizontal) and the x taps that spread
/// them over the base rows.
template <typename acc_t>
struct RoiLineGrads {
  int64_t image = 0;
  int grid_w = 0;
  std::vector<int> slot_rows;         // (slots): the base row of each line
  std::vector<acc_t> lines;           // (K, slots, R)
  PairTaps<acc_t> x_taps;             // (grid_w * R): RoiWorkspace::x_taps
};

/// The end of the backward group of rois that starts at ``begin``: rois are added while
/// their line gradients (K x base rows x R each) fit in ``budget`` elements, which bounds the
/// memory the backward holds at once whatever the thread count.
template <typename acc_t>
int64_t backward_group_end(
    const acc_t* rois, int64_t begin, const Dims& n, acc_t spatial_scale, int sampling_ratio, bool aligned,
    double budget) {
  double used = 0;
  int64_t end = begin;
  while (end < n.num_rois) {
    const acc_t* roi = rois + end * 5;
    const RoiGeometry<acc_t> geo =
        math::roi_geometry<acc_t>(roi[1], roi[2], roi[3], roi[4], spatial_scale, n.out, sampling_ratio, aligned);
    used += static_cast<double>(n.channels) * n.out * sampled_base_rows(geo, n);
    if (used > budget && end > begin) break;
    ++end;
  }
  return end;
}

/// Elements of line gradients one backward group may hold (1 MiB of float): the extra
/// memory of the backward, whatever the thread count and the size of bases.
constexpr double kBackwardGroupBudget = 1 << 18;

template <typename scalar_t>
void blend_backward_kernel(const BlendCall& call, at::Tensor& grad_bases, at::Tensor& grad_attns) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& n = call.n;
  const double spatial_scale = call.spatial_scale;
  const int sampling_ratio = n.sampling_ratio;
  const bool aligned = n.aligned;
  const TopInterp mode = n.bilinear ? TopInterp::Bilinear : TopInterp::Nearest;
  const scalar_t* grad_p = call.grad.const_data_ptr<scalar_t>();
  const scalar_t* bases_p = call.bases.const_data_ptr<scalar_t>();
  const scalar_t* attns_p = call.attns.const_data_ptr<scalar_t>();
  const acc_t* rois_p = call.rois.const_data_ptr<acc_t>();
  scalar_t* grad_attns_p = grad_attns.mutable_data_ptr<scalar_t>();
  const AttentionPlan<acc_t> plan(mode, n);
  const int64_t attn_size = n.channels * n.attn_h * n.attn_w;
  const int64_t bases_size = call.bases.numel();

  // grad_bases is accumulated in acc_t: in place when it has that dtype, else in one
  // bases-sized buffer (one, whatever the thread count).
  const bool direct = std::is_same<scalar_t, acc_t>::value;
  std::vector<acc_t> widened(direct ? 0 : static_cast<size_t>(bases_size), acc_t(0));
  acc_t* grad_bases_acc = direct ? reinterpret_cast<acc_t*>(grad_bases.mutable_data_ptr<scalar_t>()) : widened.data();

  // Rois are processed in groups. Pass 1 (parallel over the group's rois) recomputes each
  // roi's forward and keeps its line gradients; pass 2 (parallel over base rows) adds the
  // lines into the rows, every row taking its rois in roi order. Each element of grad_bases
  // so sums its terms in one fixed order whatever the thread count (bit-for-bit
  // deterministic), with no per-thread copy of grad_bases: the extra memory is one group's
  // lines, K x (base rows a roi samples) x R per roi, about kBackwardGroupBudget elements.
  std::vector<RoiLineGrads<acc_t>> group;
  const int64_t row_keys = n.num_images * n.height;
  std::vector<int64_t> row_start;   // (row_keys + 1): CSR offsets of each (image, base row)
  std::vector<int64_t> row_lines;   // (entries): roi index in group * 2^31 + slot, roi order

  for (int64_t g0 = 0, g1 = 0; g0 < n.num_rois; g0 = g1) {
    g1 = backward_group_end(rois_p, g0, n, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, kBackwardGroupBudget);
    const int64_t count = g1 - g0;
    if (static_cast<int64_t>(group.size()) < count) group.resize(static_cast<size_t>(count));
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
    const std::vector<int64_t> chunk_bounds = balanced_roi_chunks(
        rois_p + g0 * 5, count, n, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, chunks);

    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      RoiWorkspace<scalar_t, acc_t> ws(n);
      std::vector<acc_t> grad_crop_row(static_cast<size_t>(n.channels) * n.out);
      std::vector<acc_t> grad_attn_row(static_cast<size_t>(n.channels) * n.out);
      std::vector<acc_t> grad_width_pass(static_cast<size_t>(n.channels) * n.attn_h * n.out);
      std::vector<acc_t> grad_attn(static_cast<size_t>(attn_size));
      std::vector<acc_t> g_row(n.out);
      std::vector<acc_t> scratch(3 * static_cast<size_t>(n.out));  // sink rows of blend_grads_scatter_row
      for (int64_t local = chunk_bounds[chunk_begin]; local < chunk_bounds[chunk_end]; ++local) {
        const int64_t d = g0 + local;
        RoiLineGrads<acc_t>& out = group[local];
        const scalar_t* attn = attns_p + d * attn_size;
        ws.load_roi(rois_p + d * 5, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, 0, n.out);
        ws.load_attention(attn, plan);
        ws.load_crops(bases_p);
        const int gh = std::max(ws.geo.grid_h, 0);
        const int slots = ws.num_slots();
        const bool fused_rows = !n.sigmoid && mode == TopInterp::Bilinear && gh == 1;
        std::vector<acc_t>& grad_horizontal = out.lines;  // (K, slots, R): transpose of ws.horizontal
        grad_horizontal.assign(static_cast<size_t>(n.channels) * slots * n.out, acc_t(0));
        std::fill(grad_attn.begin(), grad_attn.end(), acc_t(0));
        std::fill(grad_width_pass.begin(), grad_width_pass.end(), acc_t(0));

        for (int ph = 0; ph < n.out; ++ph) {
          ws.compute_row(attn, plan, ph);
          ws.blend_row(true);
          const scalar_t* grad_row = grad_p + (d * n.out + ph) * n.out;
          for (int pw = 0; pw < n.out; ++pw) g_row[pw] = static_cast<acc_t>(grad_row[pw]);
          const acc_t inv_count = acc_t(1) / ws.geo.count;
          if (fused_rows) {
            // one y sample, bilinear attentions: blend_grads_scatter_row; an invalid sample
            // or a clamped tap pair sends its share to the scratch row with weight 0
            const AxisTaps<acc_t>& y = ws.y_taps[ph];
            const LinearTaps<acc_t>& ty = plan.rows[ph];
            const bool y_pair = y.valid && ws.y_slot_lo[ph] != ws.y_slot_hi[ph];
            const bool a_pair = ty.i0 != ty.i1;
            const acc_t y_w_lo = y.valid ? (y_pair ? y.w_lo : y.w_lo + y.w_hi) : acc_t(0);
            const acc_t y_w_hi = y_pair ? y.w_hi : acc_t(0);
            const acc_t a_w0 = a_pair ? ty.w0 : ty.w0 + ty.w1;
            const acc_t a_w1 = a_pair ? ty.w1 : acc_t(0);
            for (int64_t k = 0; k < n.channels; ++k) {
              acc_t* ghk = grad_horizontal.data() + k * slots * n.out;
              acc_t* line_lo = y.valid ? ghk + ws.y_slot_lo[ph] * n.out : scratch.data();
              acc_t* line_hi = y_pair ? ghk + ws.y_slot_hi[ph] * n.out : scratch.data() + n.out;
              acc_t* top = grad_width_pass.data() + (k * n.attn_h + ty.i0) * n.out;
              acc_t* bottom = a_pair ? grad_width_pass.data() + (k * n.attn_h + ty.i1) * n.out : scratch.data() + 2 * n.out;
              blend_grads_scatter_row(
                  g_row.data(), ws.exp_row.data() + k * n.out, ws.inv_sum_row.data(), ws.crop_row.data() + k * n.out,
                  ws.out_row.data(), inv_count, y_w_lo, y_w_hi, line_lo, line_hi, a_w0, a_w1, top, bottom, n.out);
            }
            continue;
          }
          for (int64_t k = 0; k < n.channels; ++k) {
            const acc_t* e = ws.exp_row.data() + k * n.out;
            const acc_t* c = ws.crop_row.data() + k * n.out;
            acc_t* gc = grad_crop_row.data() + k * n.out;
            acc_t* ga = grad_attn_row.data() + k * n.out;
            if (n.sigmoid) {
              sigmoid_blend_grads_row(g_row.data(), e, c, inv_count, gc, ga, n.out);
            } else {
              blend_grads_row(g_row.data(), e, ws.inv_sum_row.data(), c, ws.out_row.data(), inv_count, gc, ga, n.out);
            }
          }

          for (int64_t k = 0; k < n.channels; ++k) {
            // crop: scatter the row into the slots of its y samples
            const acc_t* gc = grad_crop_row.data() + k * n.out;
            acc_t* ghk = grad_horizontal.data() + k * slots * n.out;
            for (int iy = 0; iy < gh; ++iy) {
              const int i = ph * gh + iy;
              const AxisTaps<acc_t>& y = ws.y_taps[i];
              if (!y.valid) continue;
              acc_t* lo = ghk + ws.y_slot_lo[i] * n.out;
              acc_t* hi = ghk + ws.y_slot_hi[i] * n.out;
              if (lo == hi) {  // clamped at the last row: w_hi == 0
                for (int pw = 0; pw < n.out; ++pw) lo[pw] += gc[pw] * (y.w_lo + y.w_hi);
              } else {
                scatter_rows(gc, y.w_lo, y.w_hi, lo, hi, n.out);
              }
            }
            // attention: the transpose of the upsample
            const acc_t* ga = grad_attn_row.data() + k * n.out;
            if (mode == TopInterp::Bilinear) {
              const LinearTaps<acc_t>& ty = plan.rows[ph];
              acc_t* top = grad_width_pass.data() + (k * n.attn_h + ty.i0) * n.out;
              acc_t* bottom = grad_width_pass.data() + (k * n.attn_h + ty.i1) * n.out;
              if (top == bottom) {  // the last attention row: both taps on it
                for (int pw = 0; pw < n.out; ++pw) top[pw] = (top[pw] + ga[pw] * ty.w0) + ga[pw] * ty.w1;
              } else {
                scatter_rows(ga, ty.w0, ty.w1, top, bottom, n.out);
              }
            } else {
              acc_t* dst = grad_attn.data() + (k * n.attn_h + plan.nearest_rows[ph]) * n.attn_w;
              for (int pw = 0; pw < n.out; ++pw) dst[plan.nearest_cols[pw]] += ga[pw];
            }
          }
        }

        out.image = ws.image;
        out.grid_w = std::max(ws.geo.grid_w, 0);
        out.slot_rows = ws.slot_rows;
        out.x_taps = ws.x_taps;
        if (mode == TopInterp::Bilinear) {
          for (int64_t km = 0; km < n.channels * n.attn_h; ++km) {
            const acc_t* src = grad_width_pass.data() + km * n.out;
            acc_t* dst = grad_attn.data() + km * n.attn_w;
            PairRunAccumulator<acc_t> to_row(dst, n.attn_w);
            for (int pw = 0; pw < n.out; ++pw) {
              to_row.add(plan.col_taps.index[pw], src[pw] * plan.col_taps.w_lo[pw], src[pw] * plan.col_taps.w_hi[pw]);
            }
            to_row.flush();
          }
        }
        scalar_t* grad_attn_out = grad_attns_p + d * attn_size;
        for (int64_t i = 0; i < attn_size; ++i) grad_attn_out[i] = static_cast<scalar_t>(grad_attn[i]);
      }
    });

    // Pass 2: index the lines by (image, base row), in roi order (a stable counting sort).
    row_start.assign(static_cast<size_t>(row_keys + 1), 0);
    for (int64_t local = 0; local < count; ++local) {
      for (int row : group[local].slot_rows) ++row_start[group[local].image * n.height + row + 1];
    }
    for (int64_t key = 0; key < row_keys; ++key) row_start[key + 1] += row_start[key];
    row_lines.resize(static_cast<size_t>(row_start[row_keys]));
    {
      std::vector<int64_t> fill(row_start.begin(), row_start.end() - 1);
      for (int64_t local = 0; local < count; ++local) {
        const RoiLineGrads<acc_t>& roi = group[local];
        for (int slot = 0; slot < static_cast<int>(roi.slot_rows.size()); ++slot) {
          row_lines[fill[roi.image * n.height + roi.slot_rows[slot]]++] = (local << 31) | slot;
        }
      }
    }
    // ... and spread every line over its base row (the x transpose), rows in parallel.
    at::parallel_for(0, row_keys, 1, [&](int64_t key_begin, int64_t key_end) {
      for (int64_t key = key_begin; key < key_end; ++key) {
        if (row_start[key] == row_start[key + 1]) continue;
        const int64_t image = key / n.height;
        const int64_t base_row = key % n.height;
        for (int64_t k = 0; k < n.channels; ++k) {
          acc_t* row = grad_bases_acc + ((image * n.channels + k) * n.height + base_row) * n.width;
          for (int64_t e = row_start[key]; e < row_start[key + 1]; ++e) {
            const RoiLineGrads<acc_t>& roi = group[row_lines[e] >> 31];
            const int64_t slot = row_lines[e] & ((int64_t(1) << 31) - 1);
            const int64_t slots = static_cast<int64_t>(roi.slot_rows.size());
            const acc_t* src = roi.lines.data() + (k * slots + slot) * n.out;
            for (int ix = 0; ix < roi.grid_w; ++ix) {
              const int64_t t = static_cast<int64_t>(ix) * n.out;
              const int* index = roi.x_taps.index.data() + t;
              const acc_t* w_lo = roi.x_taps.w_lo.data() + t;
              const acc_t* w_hi = roi.x_taps.w_hi.data() + t;
              PairRunAccumulator<acc_t> to_row(row, n.width);
              for (int pw = 0; pw < n.out; ++pw) to_row.add(index[pw], src[pw] * w_lo[pw], src[pw] * w_hi[pw]);
              to_row.flush();
            }
          }
        }
      }
    });
  }

  if (!direct) {
    scalar_t* grad_bases_p = grad_bases.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, bases_size, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) grad_bases_p[i] = static_cast<scalar_t>(widened[i]);
    });
  }
}

}  // namespace

/// Forward kernel of this ISA: fills ``output`` (D, R, R) from a prepared call.
void blend_forward(const BlendCall& call, at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.bases.scalar_type(), "blend_cpu", [&] {
    blend_forward_kernel<scalar_t>(call, output);
  });
}

/// Backward kernel of this ISA: fills the zero-initialised ``grad_bases`` and ``grad_attns``.
void blend_backward(const BlendCall& call, at::Tensor& grad_bases, at::Tensor& grad_attns) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.bases.scalar_type(), "blend_backward_cpu", [&] {
    blend_backward_kernel<scalar_t>(call, grad_bases, grad_attns);
  });
}

}  // namespace BLENDMASK_CPU_ISA
}  // namespace cpu
}  // namespace blendmask
