"""Deployment: ONNX export of the whole inference graph, the onnxruntime predictor, and the
traceable inference graph shared by ONNX export and ``torch.export``."""
