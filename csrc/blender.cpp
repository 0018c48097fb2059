// Schemas of the blendmask ops, their argument contract (checked once, here, for every
// backend and the Meta kernels) and the prologue the backends share.
//
//   blendmask::blend(bases (N,K,Hb,Wb), attns (D,K,M,M), rois (D,5), ..., normalize, bottom_interp) -> (D,R,R)
//   blendmask::blend_backward(grad (D,R,R), bases, attns, rois, ...) -> (grad_bases, grad_attns)
//
// Kernels attach per dispatch key in cpu/blender_cpu.cpp and cuda/blender_cuda.cu.
#include "blender.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "blender_math.h"

#if defined(BLENDMASK_PYTHON_MODULE)
#include <Python.h>

extern "C" {
// An empty ``blendmask._C`` module: importing it loads this library, whose static
// TORCH_LIBRARY initialisers register the ops with the dispatcher.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

namespace blendmask {

TopInterp parse_top_interp(c10::string_view top_interp) {
  if (top_interp == "bilinear") return TopInterp::Bilinear;
  if (top_interp == "nearest") return TopInterp::Nearest;
  TORCH_CHECK_VALUE(false, "blend: top_interp must be 'bilinear' or 'nearest', got '", std::string(top_interp), "'");
}

Normalize parse_normalize(c10::string_view normalize) {
  if (normalize == "softmax") return Normalize::Softmax;
  if (normalize == "sigmoid") return Normalize::Sigmoid;
  TORCH_CHECK_VALUE(false, "blend: normalize must be 'softmax' or 'sigmoid', got '", std::string(normalize), "'");
}

BottomInterp parse_bottom_interp(c10::string_view bottom_interp) {
  if (bottom_interp == "bilinear") return BottomInterp::Bilinear;
  if (bottom_interp == "nearest") return BottomInterp::Nearest;
  TORCH_CHECK_VALUE(
      false, "blend: bottom_interp must be 'bilinear' or 'nearest', got '", std::string(bottom_interp), "'");
}

namespace {

/// ``cond`` as a bool: the value for concrete sizes, an asserted (deferred) fact for symbolic ones.
bool holds(const c10::SymBool& cond) {
  return cond.expect_true(__FILE__, __LINE__);
}

/// Narrows ``value`` to int after checking it fits, so that an integer beyond 32 bits is refused, not wrapped.
int checked_int(int64_t value, const char* what) {
  TORCH_CHECK_VALUE(
      value >= 0 && value <= std::numeric_limits<int>::max(), "blend: ", what, " must be in [0, ",
      std::numeric_limits<int>::max(), "], got ", value);
  return static_cast<int>(value);
}

}  // namespace

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
    const at::Tensor& grad) {
  TORCH_CHECK_VALUE(bases.dim() == 4, "blend: bases must be (N, K, Hb, Wb), got shape ", bases.sym_sizes());
  TORCH_CHECK_VALUE(attns.dim() == 4, "blend: attns must be (D, K, M, M), got shape ", attns.sym_sizes());
  TORCH_CHECK_VALUE(
      rois.dim() == 2 && holds(rois.sym_size(1).sym_eq(5)),
      "blend: rois must be (D, 5) [batch_idx, x1, y1, x2, y2], got shape ", rois.sym_sizes());
  TORCH_CHECK_VALUE(
      holds(attns.sym_size(1).sym_eq(bases.sym_size(1))), "blend: attns has K=", attns.sym_size(1),
      " channels but bases has K=", bases.sym_size(1));
  TORCH_CHECK_VALUE(
      holds(attns.sym_size(0).sym_eq(rois.sym_size(0))), "blend: attns has D=", attns.sym_size(0),
      " rows but rois has D=", rois.sym_size(0));
  TORCH_CHECK_VALUE(holds(bases.sym_size(1).sym_ge(1)), "blend: bases must have K >= 1 channels");
  TORCH_CHECK_VALUE(
      holds(bases.sym_size(2).sym_ge(1)) && holds(bases.sym_size(3).sym_ge(1)),
      "blend: bases must have a non-empty map, got shape ", bases.sym_sizes());
  TORCH_CHECK_VALUE(
      holds(attns.sym_size(2).sym_ge(1)) && holds(attns.sym_size(3).sym_ge(1)),
      "blend: attns must have M >= 1, got shape ", attns.sym_sizes());
  TORCH_CHECK_VALUE(output_size >= 1, "blend: output_size must be >= 1, got ", output_size);
  TORCH_CHECK_VALUE(sampling_ratio >= 0, "blend: sampling_ratio must be >= 0 (0 = adaptive), got ", sampling_ratio);
  TORCH_CHECK_VALUE(
      spatial_scale > 0 && std::isfinite(spatial_scale), "blend: spatial_scale must be finite and > 0, got ",
      spatial_scale);
  parse_top_interp(top_interp);
  parse_normalize(normalize);
  parse_bottom_interp(bottom_interp);
  TORCH_CHECK_VALUE(at::isFloatingType(bases.scalar_type()), "blend: bases must be floating point, got ", bases.scalar_type());
  TORCH_CHECK_VALUE(
      attns.scalar_type() == bases.scalar_type(), "blend: bases and attns must share one dtype, got ",
      bases.scalar_type(), " and ", attns.scalar_type());
  TORCH_CHECK_VALUE(
      at::isFloatingType(rois.scalar_type()),
      "blend: rois must be floating point (float32 or float64 coordinates, whatever the dtype of bases), got ",
      rois.scalar_type());
  TORCH_CHECK_VALUE(
      attns.device() == bases.device() && rois.device() == bases.device(),
      "blend: bases, attns and rois must be on one device, got ", bases.device(), ", ", attns.device(), " and ",
      rois.device());
  if (grad.defined()) {
    TORCH_CHECK_VALUE(
        grad.dim() == 3 && holds(grad.sym_size(0).sym_eq(rois.sym_size(0))) && holds(grad.sym_size(1).sym_eq(output_size)) &&
            holds(grad.sym_size(2).sym_eq(output_size)),
        "blend_backward: grad must be (D, R, R) = (", rois.sym_size(0), ", ", output_size, ", ", output_size, "), got ",
        grad.sym_sizes());
    TORCH_CHECK_VALUE(
        grad.scalar_type() == bases.scalar_type() && grad.device() == bases.device(),
        "blend_backward: grad must match bases in dtype and device");
  }
}

void check_roi_values(const at::Tensor& rois, int64_t num_images) {
  TORCH_INTERNAL_ASSERT(rois.device().is_cpu() && rois.is_contiguous());
  AT_DISPATCH_FLOATING_TYPES(rois.scalar_type(), "check_roi_values", [&] {
    const scalar_t* r = rois.const_data_ptr<scalar_t>();
    for (int64_t d = 0; d < rois.size(0); ++d) {
      const scalar_t* roi = r + d * 5;
      switch (math::roi_problem(roi, num_images)) {
        case math::RoiProblem::NonFinite:
          for (int j = 0; j < 5; ++j) {
            TORCH_CHECK_VALUE(
                math::is_finite(roi[j]), "blend: rois[", d, "] has a non-finite value (", static_cast<double>(roi[j]),
                ")");
          }
          break;
        case math::RoiProblem::BatchIndex:
          TORCH_CHECK_VALUE(
              false, "blend: rois[", d, "] has batch index ", static_cast<double>(roi[0]), " out of range for ",
              num_images, " images");
        case math::RoiProblem::None:
          break;
      }
    }
  });
}

at::ScalarType coordinate_dtype(at::ScalarType feature_dtype) {
  return feature_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

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
    bool check_values) {
  check_blend_args(
      bases, attns, rois, output_size, spatial_scale, sampling_ratio, top_interp, normalize, bottom_interp, grad);
  TORCH_CHECK(bases.device().type() == device_type, name, ": expected ", device_type, " tensors, got ", bases.device());
  BlendCall call;
  call.n = Dims{
      bases.size(0),
      checked_int(bases.size(1), "K (bases.size(1))"),
      checked_int(bases.size(2), "Hb (bases.size(2))"),
      checked_int(bases.size(3), "Wb (bases.size(3))"),
      rois.size(0),
      checked_int(attns.size(2), "M (attns.size(2))"),
      checked_int(attns.size(3), "M (attns.size(3))"),
      checked_int(output_size, "output_size"),
      checked_int(sampling_ratio, "sampling_ratio"),
      aligned,
      parse_top_interp(top_interp) == TopInterp::Bilinear,
      parse_normalize(normalize) == Normalize::Sigmoid,
      parse_bottom_interp(bottom_interp) == BottomInterp::Nearest};
  // Per-roi products the kernels form in int: K * Mh * Mw and R * R (checked in double, which
  // cannot overflow here).
  const double attn_size = static_cast<double>(call.n.channels) * call.n.attn_h * call.n.attn_w;
  const double pixels = static_cast<double>(call.n.out) * call.n.out;
  TORCH_CHECK_VALUE(
      attn_size <= std::numeric_limits<int>::max(), "blend: one roi's attentions (K * M * M = ", attn_size,
      ") must have at most ", std::numeric_limits<int>::max(), " elements");
  TORCH_CHECK_VALUE(
      pixels <= std::numeric_limits<int>::max(), "blend: output_size ** 2 (", pixels, ") must be at most ",
      std::numeric_limits<int>::max());
  call.spatial_scale = spatial_scale;
  call.bases = bases.contiguous();
  call.attns = attns.contiguous();
  call.rois = rois.to(coordinate_dtype(bases.scalar_type())).contiguous();
  if (grad.defined()) call.grad = grad.contiguous();
  if (check_values && call.n.num_rois > 0) check_roi_values(call.rois.to(at::kCPU), call.n.num_images);
  return call;
}

namespace {

// Meta kernels: the same contract on shapes only (FakeTensor runs them under torch.compile
// and torch.export, with symbolic sizes).
at::Tensor blend_meta(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, int64_t output_size,
    double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  check_blend_args(
      bases, attns, rois, output_size, spatial_scale, sampling_ratio, top_interp, normalize, bottom_interp,
      at::Tensor());
  return at::empty_symint({rois.sym_size(0), output_size, output_size}, bases.options());
}

std::tuple<at::Tensor, at::Tensor> blend_backward_meta(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois,
    int64_t output_size, double spatial_scale, int64_t sampling_ratio, bool aligned, c10::string_view top_interp,
    c10::string_view normalize, c10::string_view bottom_interp) {
  check_blend_args(
      bases, attns, rois, output_size, spatial_scale, sampling_ratio, top_interp, normalize, bottom_interp, grad);
  return {at::empty_symint(bases.sym_sizes(), bases.options()), at::empty_symint(attns.sym_sizes(), attns.options())};
}

/// blendmask::check_blend_inputs: the op's contract (arguments and roi values) as an op of
/// its own, for callers that do not run the op (blend_reference). Every device; roi values
/// are read on the host (one synchronisation on CUDA), except for meta tensors.
void check_blend_inputs(
    const at::Tensor& bases, const at::Tensor& attns, const at::Tensor& rois, int64_t output_size,
    double spatial_scale, int64_t sampling_ratio, c10::string_view top_interp, c10::string_view normalize,
    c10::string_view bottom_interp) {
  check_blend_args(
      bases, attns, rois, output_size, spatial_scale, sampling_ratio, top_interp, normalize, bottom_interp,
      at::Tensor());
  if (rois.is_meta() || rois.size(0) == 0) return;
  check_roi_values(rois.to(at::kCPU, coordinate_dtype(bases.scalar_type())).contiguous(), bases.size(0));
}

}  // namespace

TORCH_LIBRARY(blendmask, m) {
  m.def(
      "blend(Tensor bases, Tensor attns, Tensor rois, int output_size, float spatial_scale, int sampling_ratio, "
      "bool aligned, str top_interp, str normalize=\"softmax\", str bottom_interp=\"bilinear\") -> Tensor");
  m.def(
      "blend_backward(Tensor grad, Tensor bases, Tensor attns, Tensor rois, int output_size, float spatial_scale, "
      "int sampling_ratio, bool aligned, str top_interp, str normalize=\"softmax\", str bottom_interp=\"bilinear\") "
      "-> (Tensor, Tensor)");
  m.def(
      "check_blend_inputs(Tensor bases, Tensor attns, Tensor rois, int output_size, float spatial_scale, "
      "int sampling_ratio, str top_interp, str normalize=\"softmax\", str bottom_interp=\"bilinear\") -> ()");
  m.impl("check_blend_inputs", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(check_blend_inputs));
}

TORCH_LIBRARY_IMPL(blendmask, Meta, m) {
  m.impl("blend", &blend_meta);
  m.impl("blend_backward", &blend_backward_meta);
}

}  // namespace blendmask
