"""blendmask: BlendMask instance segmentation with a fused C++/CUDA blender op."""
__version__ = "0.1.0"
