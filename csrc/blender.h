// The argument contract of blendmask::blend / blend_backward, written once and shared by the
// op registration (blender.cpp), the Meta kernels and the CPU / CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace blendmask {

/// How the (M, M) attentions are resized to (R, R).
enum class TopInterp { Bilinear, Nearest };

/// Parses ``top_interp`` ("bilinear" or "nearest"); anything else is a clear error.
TopInterp parse_top_interp(c10::string_view top_interp);

/// How the K blended terms are weighted: "softmax" over K of the attentions (the default),
/// or "sigmoid": out = sum_k sigmoid(a[k]) * sigmoid(r[k]) (the paper's one-basis version).
enum class Normalize { Softmax, Sigmoid };

/// Parses ``normalize`` ("softmax" or "sigmoid"); anything else is a clear error.
Normalize parse_normalize(c10::string_view normalize);

/// How the crop samples the bases: "bilinear" (RoIAlign) or "nearest" (the nearest cell of
/// each sample point, RoIPool-style, on the same sampling grid).
enum class BottomInterp { Bilinear, Nearest };

/// Parses ``bottom_interp`` ("bilinear" or "nearest"); anything else is a clear error.
BottomInterp parse_bottom_interp(c10::string_view bottom_interp);

/// Checks ranks, shapes, dtypes, devices and the scalar arguments of blend / blend_backward
/// with messages naming the argument. ``grad`` may be undefined (forward). Shapes may be
/// symbolic (the Meta kernels run it under torch.compile / torch.export): equalities are
/// asserted with SymBool::expect_true, which never specialises an unbacked size.
void check_blend_args(
    const at::Tensor& bases,
    const at::Tensor& attns,
    const at::Tensor& rois,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    c10::string_view top_interp,
    c10::string_view normalize,
    c10::string_view bottom_interp,
    const at::Tensor& grad);

/// Rejects rois (a CPU tensor of the coordinate dtype, float or double) with a NaN/inf value or
/// a batch index that is not an integer in [0, num_images); the predicate is math::roi_problem.
void check_roi_values(const at::Tensor& rois, int64_t num_images);

/// Sizes of one call, in the kernels' own words. Every int here was range-checked by
/// dims_of before narrowing.
struct Dims {
  int64_t num_images;  // N
  int channels;        // K
  int height;          // Hb
  int width;           // Wb
  int64_t num_rois;    // D
  int attn_h;          // Mh
  int attn_w;          // Mw
  int out;             // R
  int sampling_ratio;
  bool aligned;
  bool bilinear;  // top_interp == "bilinear"
  bool sigmoid = false;         // normalize == "sigmoid"
  bool bottom_nearest = false;  // bottom_interp == "nearest"
};

/// The dtype the kernels read rois in: float64 for float64 features, float32 otherwise
/// (at::opmath_type of the feature dtype; the geometry is computed in that type).
at::ScalarType coordinate_dtype(at::ScalarType feature_dtype);

/// Checked, contiguous inputs of one call of a backend (the prologue every backend shares).
struct BlendCall {
  at::Tensor grad;   // (D, R, R) contiguous, or undefined (forward)
  at::Tensor bases;  // (N, K, Hb, Wb) contiguous
  at::Tensor attns;  // (D, K, M, M) contiguous
  at::Tensor rois;   // (D, 5) contiguous, in coordinate_dtype(bases)
  Dims n;
  double spatial_scale;
};

/// Checks the arguments (check_blend_args, that the inputs live on ``device_type``, the int
/// ranges) and returns the contiguous inputs; ``check_values`` also runs check_roi_values (a
/// host loop: the CPU backend; the CUDA backend validates on the device instead).
BlendCall prepare_call(
    const char* name,
    c10::DeviceType device_type,
    const at::Tensor& grad,
    const at::Tensor& bases,
    const at::Tensor& attns,
    const at::Tensor& rois,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned,
    c10::string_view top_interp,
    c10::string_view normalize,
    c10::string_view bottom_interp,
    bool check_values);

}  // namespace blendmask
