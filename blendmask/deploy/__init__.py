"""Deployment of BlendMask.

- :func:`export_onnx` writes the whole inference graph (backbone, FCOS, decoding + NMS, basis
  module, blender in standard ops) to ONNX; :class:`OnnxPredictor` runs it with onnxruntime and
  returns what the PyTorch model returns.
- :class:`InferenceGraph` is the traceable inference path shared by the ONNX export and
  :func:`export_program` (``torch.export``, which keeps the fused ``blendmask::blend`` op).
- :func:`postprocess_detections` maps the graphs' raw outputs back into the original image.
"""
from .graph import InferenceGraph, export_program
from .onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx
from blendmask.models.blendmask import postprocess_detections
from .predictor import OnnxPredictor

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "InferenceGraph",
    "OnnxPredictor",
    "export_onnx",
    "export_program",
    "postprocess_detections",
]
