"""Map raw detections of the exported graph back into the original image.

The exported graphs (ONNX and ``torch.export``) stop at boxes in the resized image and
``R x R`` mask probabilities inside the boxes. :func:`postprocess_detections` finishes the job
with the very function the eager model's eval path uses
(:func:`blendmask.models.blendmask.postprocess_detections`, re-exported here), so the result is
the PyTorch model's eval output.

Example::

    boxes, scores, labels, masks = session.run(None, {"images": x, "image_size": size})
    result = postprocess_detections(torch.from_numpy(boxes), torch.from_numpy(scores),
                                    torch.from_numpy(labels), torch.from_numpy(masks),
                                    image_size=(h, w), original_size=(H, W))
    binary = result["masks"] > 0.5   # (n, 1, H, W)
"""
from __future__ import annotations

from blendmask.models.blendmask import postprocess_detections

__all__ = ["postprocess_detections"]
