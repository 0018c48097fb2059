"""Map raw detections of the exported graph back into the original image.

The exported graphs (ONNX and ``torch.export``) stop at boxes in the resized image and
``R x R`` mask probabilities inside the boxes. :func:`postprocess_detections` finishes the job
exactly as the eager model does, with the model's own helpers
(:func:`blendmask.models.transform.postprocess_boxes` and
:func:`blendmask.models.mask_ops.paste_masks_in_image`), so the result has the structure of the
PyTorch model's eval output.

Example::

    boxes, scores, labels, masks = session.run(None, {"images": x, "image_size": size})
    result = postprocess_detections(torch.from_numpy(boxes), torch.from_numpy(scores),
                                    torch.from_numpy(labels), torch.from_numpy(masks),
                                    image_size=(h, w), original_size=(H, W))
    binary = result["masks"] > 0.5   # (n, 1, H, W)
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

from blendmask.models.mask_ops import paste_masks_in_image
from blendmask.models.transform import postprocess_boxes

__all__ = ["postprocess_detections"]


def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    masks: Tensor,
    *,
    image_size: Sequence[int],
    original_size: Sequence[int],
) -> Dict[str, Tensor]:
    """Rescale boxes to the original image and paste the masks into it.

    Args:
        boxes: ``(n, 4)`` xyxy boxes in the resized image of size ``image_size``.
        scores: ``(n,)`` scores.
        labels: ``(n,)`` integer labels.
        masks: ``(n, R, R)`` mask probabilities inside the boxes.
        image_size: ``(h, w)`` of the resized image (before padding).
        original_size: ``(H, W)`` of the image given by the user.
    Returns:
        ``dict(boxes (n, 4), labels (n,) int64, scores (n,), masks (n, 1, H, W))`` with masks as
        probabilities in ``[0, 1]``, zero outside the boxes: the eval output of the model.
    """
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,) or labels.shape != (n,) or masks.dim() != 3 or masks.shape[0] != n:
        raise ValueError(
            "expected boxes (n, 4), scores (n,), labels (n,) and masks (n, R, R) with the same n, got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)} and {tuple(masks.shape)}"
        )
    boxes = postprocess_boxes(boxes, image_size, original_size)
    return {
        "boxes": boxes,
        "labels": labels.to(torch.int64),
        "scores": scores,
        "masks": paste_masks_in_image(masks, boxes, (int(original_size[0]), int(original_size[1]))),
    }
