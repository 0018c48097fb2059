// blendmask::winograd_conv3x3: a 3x3, stride-1, padding-1 convolution by Winograd's minimal
// filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
// CVPR 2016), for float32 on the CPU. The inference path (blendmask/models/winograd.py) uses it
// for the 3x3 convolutions of the backbone, FPN, FCOS towers and basis module.
//
//   winograd_conv3x3(input (N, C, H, W), weight_transformed (36, C, O), bias (O,)?) -> (N, O, H, W)
//   (the output in the input's memory format; channels_last input avoids a copy on each side)
//
// The output is tiled in 4x4 tiles; each reads a 6x6 input window (zero outside the image: the
// padding). Per tile, the window is transformed, V = B^T d B (36 vectors of C), the 36 products
// M_ij = V_ij U_ij are 36 matrix products over a block of tiles, (tiles, C) @ (C, O) (ATen's
// bmm, that is MKL/oneDNN's sgemm), and the output tile is Y = A^T M A (+ bias). U = G g G^T is
// computed once, in float64, by the caller (blendmask.models.winograd.transform_weight). That is
// 36 multiplies per 16 outputs and input channel instead of 144: 4x fewer, for a rounding error a
// few times that of the direct convolution (tests/models/test_winograd.py measures both against float64).
//
// Tiles are processed in blocks of kBlockTiles, so the transformed block (V and M, 36 x kBlockTiles
// x C floats each) stays in the cache and the memory used does not grow with the image. With at
// least as many blocks as threads, each thread takes whole blocks (at::parallel_for over blocks,
// single-threaded products); a smaller map takes its blocks in turn, each block's transforms split
// over the threads and its products on sgemm's threads, so that no thread idles on small maps.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace blendmask {
namespace {

constexpr int64_t kTile = 4;  // output tile side (m)
constexpr int64_t kWindow = 6;  // input window side (m + r - 1)
constexpr int64_t kPositions = kWindow * kWindow;
constexpr int64_t kBlockTiles = 64;  // tiles per matrix-product block

// out_i = sum_p B^T[i][p] in_p over n floats, for F(4, 3)'s
// B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
//        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
inline void input_transform_6(const float* const* in, float* const* out, int64_t n) {
  const float* __restrict__ d0 = in[0];
  const float* __restrict__ d1 = in[1];
  const float* __restrict__ d2 = in[2];
  const float* __restrict__ d3 = in[3];
  const float* __restrict__ d4 = in[4];
  const float* __restrict__ d5 = in[5];
  float* __restrict__ o0 = out[0];
  float* __restrict__ o1 = out[1];
  float* __restrict__ o2 = out[2];
  float* __restrict__ o3 = out[3];
  float* __restrict__ o4 = out[4];
  float* __restrict__ o5 = out[5];
  for (int64_t k = 0; k < n; ++k) {
    const float a1 = d1[k], a2 = d2[k], a3 = d3[k], a4 = d4[k];
    const float p = a4 - 4.0f * a2;  // rows 1, 2: +-(4 a1 - a3) + a4 - 4 a2
    const float q = 4.0f * a1 - a3;
    const float r = a4 - a2;  // rows 3, 4: +-2 (a3 - a1) + a4 - a2
    const float s = 2.0f * (a3 - a1);
    o0[k] = 4.0f * d0[k] - 5.0f * a2 + a4;
    o1[k] = p - q;
    o2[k] = p + q;
    o3[k] = r + s;
    o4[k] = r - s;
    o5[k] = 4.0f * a1 - 5.0f * a3 + d5[k];
  }
}

// out_s = sum_i A^T[s][i] in_i (+ bias) over n floats, for F(4, 3)'s
// A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]].
inline void output_transform_6(const float* const* in, float* const* out, const float* bias, int64_t n) {
  const float* __restrict__ m0 = in[0];
  const float* __restrict__ m1 = in[1];
  const float* __restrict__ m2 = in[2];
  const float* __restrict__ m3 = in[3];
  const float* __restrict__ m4 = in[4];
  const float* __restrict__ m5 = in[5];
  float* __restrict__ o0 = out[0];
  float* __restrict__ o1 = out[1];
  float* __restrict__ o2 = out[2];
  float* __restrict__ o3 = out[3];
  for (int64_t k = 0; k < n; ++k) {
    const float b = bias != nullptr ? bias[k] : 0.0f;
    const float sum12 = m1[k] + m2[k], diff12 = m1[k] - m2[k];
    const float sum34 = m3[k] + m4[k], diff34 = m3[k] - m4[k];
    o0[k] = m0[k] + sum12 + sum34 + b;
    o1[k] = diff12 + 2.0f * diff34 + b;
    o2[k] = sum12 + 4.0f * sum34 + b;
    o3[k] = diff12 + 8.0f * diff34 + m5[k] + b;
  }
}

struct Geometry {
  int64_t n, c, h, w, o, tiles_h, tiles_w;
  int64_t tiles() const { return n * tiles_h * tiles_w; }
};

// V[(i*6 + j), slot, :] = (B^T d B)[i][j] of tile `tile`'s window, d read from the NHWC input.
void transform_window(const float* x, const Geometry& g, int64_t tile, int64_t slot, int64_t slots,
                      const float* zeros, float* rows /* 36 x C scratch */, float* v) {
  const int64_t tx = tile % g.tiles_w;
  const int64_t ty = (tile / g.tiles_w) % g.tiles_h;
  const int64_t image = tile / (g.tiles_w * g.tiles_h);
  const int64_t y0 = ty * kTile - 1, x0 = tx * kTile - 1;
  const float* in[kWindow];
  float* out[kWindow];
  for (const auto r : c10::irange(kWindow)) {  // along x: rows[r][j] = sum_q B^T[j][q] d[r][q]
    const int64_t y = y0 + r;
    for (const auto q : c10::irange(kWindow)) {
      const int64_t xx = x0 + q;
      in[q] = (y >= 0 && y < g.h && xx >= 0 && xx < g.w) ? x + ((image * g.h + y) * g.w + xx) * g.c : zeros;
      out[q] = rows + (r * kWindow + q) * g.c;
    }
    input_transform_6(in, out, g.c);
  }
  for (const auto j : c10::irange(kWindow)) {  // along y: V[i][j] = sum_p B^T[i][p] rows[p][j]
    for (const auto p : c10::irange(kWindow)) {
      in[p] = rows + (p * kWindow + j) * g.c;
      out[p] = v + ((p * kWindow + j) * slots + slot) * g.c;
    }
    input_transform_6(in, out, g.c);
  }
}

// Output tile `tile` = A^T M A + bias from M[(i*6 + j), slot, :], written into the NHWC output.
void transform_product(const float* m, const Geometry& g, int64_t tile, int64_t slot, int64_t slots,
                       const float* bias, float* cols /* 6 x 4 x O scratch */, float* discard /* O */,
                       float* y) {
  const int64_t tx = tile % g.tiles_w;
  const int64_t ty = (tile / g.tiles_w) % g.tiles_h;
  const int64_t image = tile / (g.tiles_w * g.tiles_h);
  const float* in[kWindow];
  float* out[kTile];
  for (const auto i : c10::irange(kWindow)) {  // along x: cols[i][s] = sum_j A^T[s][j] M[i][j]
    for (const auto j : c10::irange(kWindow)) in[j] = m + ((i * kWindow + j) * slots + slot) * g.o;
    for (const auto s : c10::irange(kTile)) out[s] = cols + (i * kTile + s) * g.o;
    output_transform_6(in, out, nullptr, g.o);
  }
  for (const auto s : c10::irange(kTile)) {  // along y: Y[r][s] = sum_i A^T[r][i] cols[i][s] + bias
    const int64_t xx = tx * kTile + s;
    for (const auto i : c10::irange(kWindow)) in[i] = cols + (i * kTile + s) * g.o;
    for (const auto r : c10::irange(kTile)) {
      const int64_t yy = ty * kTile + r;
      out[r] = (yy < g.h && xx < g.w) ? y + ((image * g.h + yy) * g.w + xx) * g.o : discard;
    }
    output_transform_6(in, out, bias, g.o);
  }
}

// Block `[first, first + count)` of tiles: windows -> V (36, count, C), V @ U -> M (36, count, O)
// (ATen's bmm), M -> output tiles. With `parallel_tiles` the two transforms are split over the threads
// and the product runs on sgemm's own threads (the caller is then outside any parallel region).
void run_block(const float* x, const at::Tensor& u, const float* bias, float* y, const Geometry& g, int64_t first,
               int64_t count, const at::Tensor& v_storage, const at::Tensor& m_storage, bool parallel_tiles) {
  const at::Tensor v = v_storage.narrow(0, 0, kPositions * count * g.c).view({kPositions, count, g.c});
  at::Tensor m = m_storage.narrow(0, 0, kPositions * count * g.o).view({kPositions, count, g.o});
  float* v_data = v.mutable_data_ptr<float>();
  const float* m_data = m.const_data_ptr<float>();
  const auto windows = [&](int64_t begin, int64_t end) {
    std::vector<float> zeros(g.c, 0.0f), rows(kPositions * g.c);
    for (int64_t slot = begin; slot < end; ++slot) {
      transform_window(x, g, first + slot, slot, count, zeros.data(), rows.data(), v_data);
    }
  };
  const auto products = [&](int64_t begin, int64_t end) {
    std::vector<float> cols(kWindow * kTile * g.o), discard(g.o);
    for (int64_t slot = begin; slot < end; ++slot) {
      transform_product(m_data, g, first + slot, slot, count, bias, cols.data(), discard.data(), y);
    }
  };
  if (parallel_tiles) {
    at::parallel_for(0, count, 1, windows);
  } else {
    windows(0, count);
  }
  at::bmm_out(m, v, u);
  if (parallel_tiles) {
    at::parallel_for(0, count, 1, products);
  } else {
    products(0, count);
  }
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor u = weight.contiguous();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), u.size(2), 0, 0};
  g.tiles_h = (g.h + kTile - 1) / kTile;
  g.tiles_w = (g.w + kTile - 1) / kTile;
  at::Tensor y = at::empty({g.n, g.o, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const int64_t blocks = (g.tiles() + kBlockTiles - 1) / kBlockTiles;
  const float* x_data = x.const_data_ptr<float>();
  const float* b_data = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* y_data = y.mutable_data_ptr<float>();
  const auto block = [&](int64_t index, const at::Tensor& v_storage, const at::Tensor& m_storage, bool parallel_tiles) {
    const int64_t first = index * kBlockTiles;
    run_block(x_data, u, b_data, y_data, g, first, std::min(kBlockTiles, g.tiles() - first), v_storage, m_storage,
              parallel_tiles);
  };
  const auto storage = [&](int64_t channels) { return at::empty({kPositions * kBlockTiles * channels}, x.options()); };
  if (blocks >= at::get_num_threads()) {  // enough blocks for every thread: one block at a time per thread
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      const at::Tensor v_storage = storage(g.c), m_storage = storage(g.o);
      for (int64_t index = begin; index < end; ++index) block(index, v_storage, m_storage, false);
    });
  } else {  // a small map: the blocks in turn, each spread over the threads
    const at::Tensor v_storage = storage(g.c), m_storage = storage(g.o);
    for (int64_t index = 0; index < blocks; ++index) block(index, v_storage, m_storage, true);
  }
  // as conv2d: the output in the input's memory format (the tiles are written channels_last)
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? y : y.contiguous();
}

void check_args(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(input.dim() == 4, "winograd_conv3x3: input must be (N, C, H, W), got shape ", input.sizes());
  TORCH_CHECK_VALUE(
      weight.dim() == 3 && weight.size(0) == kPositions && weight.size(1) == input.size(1),
      "winograd_conv3x3: weight_transformed must be (36, C, O) with C = input channels (", input.size(1), "), got shape ",
      weight.sizes());
  TORCH_CHECK_VALUE(
      input.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
      "winograd_conv3x3: input and weight_transformed must be float32, got ", input.scalar_type(), " and ",
      weight.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(
        bias->dim() == 1 && bias->size(0) == weight.size(2) && bias->scalar_type() == at::kFloat,
        "winograd_conv3x3: bias must be float32 (O,) with O = ", weight.size(2), ", got ", bias->scalar_type(), " ",
        bias->sizes());
  }
}

at::Tensor winograd_conv3x3_checked_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_args(input, weight, bias);
  return winograd_conv3x3_cpu(input, weight, bias);
}

at::Tensor winograd_conv3x3_meta(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_args(input, weight, bias);
  return at::empty_symint({input.sym_size(0), weight.sym_size(2), input.sym_size(2), input.sym_size(3)},
                          input.options().memory_format(input.suggest_memory_format()));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(blendmask, m) {
  m.def("winograd_conv3x3(Tensor input, Tensor weight_transformed, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(blendmask, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_checked_cpu);
}

TORCH_LIBRARY_IMPL(blendmask, Meta, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_meta);
}

}  // namespace blendmask
