"""The traceable inference graph of a :class:`~blendmask.models.BlendMask`, shared by the ONNX
export and ``torch.export``.

:class:`InferenceGraph` runs the model's eval path on one image that the model's own
:class:`~blendmask.models.transform.ImageTransform` has already resized, normalised and padded,
and stops before the two steps that stay in Python: mapping boxes back to the original image
size and pasting the ``R x R`` masks into it (see :mod:`blendmask.deploy.postprocess`).
It calls the model's own traceable steps: FCOS inference
(:func:`blendmask.models.fcos.inference.fcos_inference_single_image`) and
:meth:`BlendMask.blend_masks <blendmask.models.BlendMask.blend_masks>`.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from blendmask.models import BlendMask
from blendmask.models.fcos.inference import fcos_inference_single_image
from blendmask.ops import blend, blend_reference

__all__ = ["InferenceGraph", "export_program"]


class InferenceGraph(nn.Module):
    """Normalised, padded image -> detections of a BlendMask model, without data-dependent Python.

    Args:
        model: the BlendMask model (its modules are shared, not copied); put it in eval mode.
        reference_blender: blend with :func:`blendmask.ops.blend_reference` (standard ops:
            RoIAlign, resize, softmax, multiply, sum; what ONNX needs) instead of the fused
            :func:`blendmask.ops.blend` (the ``blendmask::blend`` op; what ``torch.export`` keeps).

    ``forward(images, image_size)``:
        images: ``(1, 3, Hp, Wp)`` float image, normalised and zero-padded to a multiple of the
            model's size divisibility, as ``model.transform`` produces it.
        image_size: ``(2,)`` int64 ``[h, w]``, the size of the resized image before padding
            (boxes are clipped to it, as in the eager model).
    Returns:
        ``boxes (n, 4)`` float xyxy in the resized image's pixels, clipped; ``scores (n,)``;
        ``labels (n,)`` int64; ``masks (n, R, R)`` mask probabilities in the boxes; sorted by
        decreasing score, ``n <= post_nms_topk``.
    """

    def __init__(self, model: BlendMask, *, reference_blender: bool):
        super().__init__()
        if not isinstance(model, BlendMask):
            raise TypeError(f"model must be a blendmask.models.BlendMask, got {type(model).__name__}")
        self.model = model
        self.reference_blender = reference_blender

    def forward(self, images: Tensor, image_size: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        fcos = model.proposal_generator
        features = model.backbone(images)
        head = fcos([features[f] for f in model.fcos_in_features])
        top_feats = [model.top_layer(t) for t in head.bbox_towers]
        bases, _ = model.basis_module(features)
        detections = fcos_inference_single_image(
            [x[0] for x in head.logits],
            [x[0] for x in head.reg],
            [x[0] for x in head.ctrness],
            fcos.locations(head.logits),
            fcos.strides,
            [x[0] for x in top_feats],
            image_size=image_size.to(images.dtype),
            score_thresh=fcos.score_thresh,
            thresh_with_ctr=fcos.thresh_with_ctr,
            pre_nms_topk=fcos.pre_nms_topk,
            nms_thresh=fcos.nms_thresh,
            post_nms_topk=fcos.post_nms_topk,
        )
        boxes = detections["boxes"]
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)  # (n, 5), all in image 0
        blender = blend_reference if self.reference_blender else blend
        blended = model.blend_masks(bases, detections["extras"], rois, blender=blender)
        return boxes, detections["scores"], detections["labels"], model.mask_probabilities(blended)


def export_program(model: BlendMask, *, reference_blender: bool = False, max_side: int = 4096) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`InferenceGraph` with dynamic image height and width.

    Args:
        model: the BlendMask model (put in eval mode here).
        reference_blender: see :class:`InferenceGraph`. With ``False`` (the default) the graph
            keeps the fused op as ``torch.ops.blendmask.blend.default``, traced through its fake
            implementation; run the program where the compiled extension is loaded.
        max_side: the largest padded image side the program accepts.
    Returns:
        the exported program; ``program.module()(images, image_size)`` runs it.
    """
    divisor = model.transform.size_divisibility
    if max_side < divisor:
        raise ValueError(f"max_side must be >= the size divisibility {divisor}, got {max_side}")
    graph = InferenceGraph(model.eval(), reference_blender=reference_blender).eval()
    # Any sample works: the shapes are dynamic. Several blocks per side keep every FPN level > 1 cell.
    sample = torch.zeros(1, 3, 4 * divisor, 5 * divisor)
    sample_size = torch.tensor([4 * divisor, 5 * divisor], dtype=torch.int64)
    blocks_h = torch.export.Dim("height_blocks", min=1, max=max_side // divisor)
    blocks_w = torch.export.Dim("width_blocks", min=1, max=max_side // divisor)
    with torch.no_grad():
        return torch.export.export(
            graph, (sample, sample_size), dynamic_shapes=({2: divisor * blocks_h, 3: divisor * blocks_w}, None)
        )
