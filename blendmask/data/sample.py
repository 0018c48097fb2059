"""What the training transforms pass along, shared by :mod:`blendmask.data.transforms`,
:mod:`blendmask.data.jitter` and :mod:`blendmask.data.copy_paste`: the :data:`Sample` type and
:func:`mask_boxes`, the boxes of a sample's masks."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

__all__ = ["Sample", "mask_boxes"]

#: ``(image (3, H, W), target dict)``: what a transform takes and returns.
Sample = Tuple[torch.Tensor, Dict[str, Any]]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``(n, 4)`` xyxy boxes in pixel-edge coordinates of ``(n, H, W)`` masks (zeros when empty)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (n, H), (n, W)
    for i in range(masks.shape[0]):
        ys, xs = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
        if len(ys):
            boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
    return boxes
