"""Deployment of panoptic BlendMask: the fusion stays in Python.

The exported graph (:class:`PanopticInferenceGraph`, ONNX via :func:`export_panoptic_onnx`) is the
instance graph of :class:`~blendmask.deploy.InferenceGraph` plus one output, ``sem_logits (1, C, Hp/4,
Wp/4)``, the semantic head's logits at stride 4 of the padded input. Panoptic fusion is data-dependent
control flow (instances visited in score order, each kept or dropped by its overlap with the ones
before it, stuff kept by area), so it runs in Python after the graph:
:func:`panoptic_postprocess` applies the very code of the eager eval path
(:func:`blendmask.models.blendmask.postprocess_detections`, then
:meth:`PanopticBlendMask.add_panoptic <blendmask.models.PanopticBlendMask.add_panoptic>`), so the
results are the PyTorch model's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

from blendmask.models import PanopticBlendMask
from blendmask.models.blendmask import postprocess_detections
from blendmask.ops import blend, blend_reference

from .graph import InferenceGraph

__all__ = ["PanopticInferenceGraph", "PANOPTIC_OUTPUT_NAMES", "export_panoptic_onnx", "panoptic_postprocess",
           "OnnxPanopticPredictor"]

PANOPTIC_OUTPUT_NAMES = ("boxes", "scores", "labels", "masks", "sem_logits")


class PanopticInferenceGraph(InferenceGraph):
    """:class:`InferenceGraph` of a :class:`PanopticBlendMask`, returning also ``sem_logits (1, C, Hp/4, Wp/4)``."""

    def __init__(self, model: PanopticBlendMask, *, reference_blender: bool):
        if not isinstance(model, PanopticBlendMask):
            raise TypeError(f"model must be a PanopticBlendMask, got {type(model).__name__}")
        super().__init__(model, reference_blender=reference_blender)

    def forward(self, images: Tensor, image_size: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        features, head = model._heads(images)
        blender = blend_reference if self.reference_blender else blend
        det = model._detect_from_heads(features, head, [image_size], blender=blender)[0]
        return det["boxes"], det["scores"], det["labels"], det["masks"], model.sem_seg_head(features)


def panoptic_postprocess(model: PanopticBlendMask, outputs: Sequence[Tensor], *, image_size: Sequence[int],
                         original_size: Sequence[int]) -> Dict[str, Any]:
    """The eager model's eval result of one image from the graph's five ``outputs``."""
    boxes, scores, labels, masks, sem_logits = outputs
    result = postprocess_detections(boxes, scores, labels, masks, image_size=image_size, original_size=original_size)
    return model.add_panoptic(result, sem_logits[0], image_size=image_size, original_size=original_size)


def export_panoptic_onnx(model: PanopticBlendMask, out_path: Union[str, os.PathLike], *, opset: int = 18,
                         max_side: int = 4096) -> Path:
    """Export :class:`PanopticInferenceGraph` (blender in standard ops) to ONNX with dynamic image sizes;
    inputs ``images``, ``image_size`` as :func:`blendmask.deploy.export_onnx`, outputs
    :data:`PANOPTIC_OUTPUT_NAMES`."""
    from .onnx_export import INPUT_NAMES, TRANSFORM_METADATA_KEY, _transform_metadata, check_opset

    check_opset(opset)
    model = model.eval()
    divisor = model.transform.size_divisibility
    graph = PanopticInferenceGraph(model, reference_blender=True).eval()
    sample = torch.zeros(1, 3, 4 * divisor, 5 * divisor)
    sample_size = torch.tensor([4 * divisor, 5 * divisor], dtype=torch.int64)
    blocks_h = torch.export.Dim("height_blocks", min=1, max=max_side // divisor)
    blocks_w = torch.export.Dim("width_blocks", min=1, max=max_side // divisor)
    with torch.no_grad():
        exported = torch.export.export(graph, (sample, sample_size),
                                       dynamic_shapes=({2: divisor * blocks_h, 3: divisor * blocks_w}, None))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(exported, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                                output_names=list(PANOPTIC_OUTPUT_NAMES), verbose=False)
    program.model.metadata_props[TRANSFORM_METADATA_KEY] = _transform_metadata(model)
    program.save(str(out_path))
    return out_path


class OnnxPanopticPredictor:
    """Run a panoptic ONNX file with onnxruntime and finish in Python with ``model``'s own post-processing
    (``model`` supplies the transform, the semantic upsampling and the fusion rules; its weights are not used)."""

    def __init__(self, path: Union[str, os.PathLike], model: PanopticBlendMask, *, num_threads: int = 0):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        outputs = tuple(o.name for o in self.session.get_outputs())
        if outputs != PANOPTIC_OUTPUT_NAMES:
            raise ValueError(f"{path} has outputs {outputs}, expected the panoptic graph's {PANOPTIC_OUTPUT_NAMES}")
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, images: List[Tensor]) -> List[Dict[str, Any]]:
        results = []
        for image in images:
            batch, _ = self.model.transform([image])
            size = batch.image_sizes[0]
            feeds = {"images": batch.tensors.numpy(), "image_size": torch.tensor(size, dtype=torch.int64).numpy()}
            outputs = [torch.from_numpy(x) for x in self.session.run(list(PANOPTIC_OUTPUT_NAMES), feeds)]
            results.append(panoptic_postprocess(self.model, outputs, image_size=size,
                                                original_size=tuple(image.shape[-2:])))
        return results
