// Schemas of the blendmask ops and the argument checks shared by every backend.
//
//   blendmask::blend(bases (N,K,Hb,Wb), attns (D,K,M,M), rois (D,5), ...) -> (D,R,R)
//   blendmask::blend_backward(grad (D,R,R), bases, attns, rois, ...) -> (grad_bases, grad_attns)
//
// Kernels attach per dispatch key in cpu/blender_cpu.cpp and cuda/blender_cuda.cu.
#include "blender.h"

#include <torch/library.h>

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

void check_blend_args(
    const at::Tensor& bases,
    const at::Tensor& attns,
    const at::Tensor& rois,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    const at::Tensor& grad) {
  TORCH_CHECK_VALUE(bases.dim() == 4, "blend: bases must be (N, K, Hb, Wb), got shape ", bases.sizes());
  TORCH_CHECK_VALUE(attns.dim() == 4, "blend: attns must be (D, K, M, M), got shape ", attns.sizes());
  TORCH_CHECK_VALUE(
      rois.dim() == 2 && rois.size(1) == 5, "blend: rois must be (D, 5) [batch_idx, x1, y1, x2, y2], got shape ",
      rois.sizes());
  TORCH_CHECK_VALUE(
      attns.size(1) == bases.size(1), "blend: attns has K=", attns.size(1), " channels but bases has K=",
      bases.size(1));
  TORCH_CHECK_VALUE(
      attns.size(0) == rois.size(0), "blend: attns has D=", attns.size(0), " rows but rois has D=", rois.size(0));
  TORCH_CHECK_VALUE(bases.size(1) >= 1, "blend: bases must have K >= 1 channels");
  TORCH_CHECK_VALUE(
      bases.size(2) >= 1 && bases.size(3) >= 1, "blend: bases must have a non-empty map, got shape ", bases.sizes());
  TORCH_CHECK_VALUE(
      attns.size(2) >= 1 && attns.size(3) >= 1, "blend: attns must have M >= 1, got shape ", attns.sizes());
  TORCH_CHECK_VALUE(output_size >= 1, "blend: output_size must be >= 1, got ", output_size);
  TORCH_CHECK_VALUE(sampling_ratio >= 0, "blend: sampling_ratio must be >= 0 (0 = adaptive), got ", sampling_ratio);
  TORCH_CHECK_VALUE(
      spatial_scale > 0 && std::isfinite(spatial_scale), "blend: spatial_scale must be finite and > 0, got ",
      spatial_scale);
  TORCH_CHECK_VALUE(at::isFloatingType(bases.scalar_type()), "blend: bases must be floating point, got ", bases.scalar_type());
  TORCH_CHECK_VALUE(
      attns.scalar_type() == bases.scalar_type() && rois.scalar_type() == bases.scalar_type(),
      "blend: bases, attns and rois must share one dtype, got ", bases.scalar_type(), ", ", attns.scalar_type(),
      " and ", rois.scalar_type());
  TORCH_CHECK_VALUE(
      attns.device() == bases.device() && rois.device() == bases.device(),
      "blend: bases, attns and rois must be on one device, got ", bases.device(), ", ", attns.device(), " and ",
      rois.device());
  if (grad.defined()) {
    TORCH_CHECK_VALUE(
        grad.dim() == 3 && grad.size(0) == rois.size(0) && grad.size(1) == output_size && grad.size(2) == output_size,
        "blend_backward: grad must be (D, R, R) = (", rois.size(0), ", ", output_size, ", ", output_size, "), got ",
        grad.sizes());
    TORCH_CHECK_VALUE(
        grad.scalar_type() == bases.scalar_type() && grad.device() == bases.device(),
        "blend_backward: grad must match bases in dtype and device");
  }
}

TORCH_LIBRARY(blendmask, m) {
  m.def(
      "blend(Tensor bases, Tensor attns, Tensor rois, int output_size, float spatial_scale, int sampling_ratio, "
      "bool aligned, str top_interp) -> Tensor");
  m.def(
      "blend_backward(Tensor grad, Tensor bases, Tensor attns, Tensor rois, int output_size, float spatial_scale, "
      "int sampling_ratio, bool aligned, str top_interp) -> (Tensor, Tensor)");
}

}  // namespace blendmask
