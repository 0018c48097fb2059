// Declarations shared by the op registration (blender.cpp) and the CPU / CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>

namespace blendmask {

/// How the (M, M) attentions are resized to (R, R).
enum class TopInterp { Bilinear, Nearest };

/// Parses ``top_interp`` ("bilinear" or "nearest"); anything else is a clear error.
TopInterp parse_top_interp(c10::string_view top_interp);

/// Checks ranks, shapes, dtypes, devices and the scalar arguments of blend / blend_backward
/// with messages naming the argument. ``grad`` may be undefined (forward).
void check_blend_args(
    const at::Tensor& bases,
    const at::Tensor& attns,
    const at::Tensor& rois,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    const at::Tensor& grad);

}  // namespace blendmask
