"""Input builders shared by the blender op tests (tests/ops/)."""
from __future__ import annotations

import torch
from torch import Tensor

SPATIAL_SCALE = 0.25  # stride-4 bases: image pixels = 4 x base pixels


def random_rois(
    num_rois: int, num_images: int, image_h: float, image_w: float, *, dtype=torch.float32, generator=None,
    outside: float = 0.25,
) -> Tensor:
    """``(D, 5)`` rois ``[b, x1, y1, x2, y2]`` in image pixels; boxes may extend ``outside``
    (fraction of the image) beyond every border. The batch index cycles so every image is used."""
    lo_x, hi_x = -outside * image_w, (1 + outside) * image_w
    lo_y, hi_y = -outside * image_h, (1 + outside) * image_h
    u = torch.rand(num_rois, 4, generator=generator, dtype=torch.float64)
    xs = torch.sort(lo_x + u[:, 0:2] * (hi_x - lo_x), dim=1).values
    ys = torch.sort(lo_y + u[:, 2:4] * (hi_y - lo_y), dim=1).values
    batch = torch.arange(num_rois, dtype=torch.float64) % num_images
    rois = torch.stack([batch, xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1)
    return rois.to(dtype)


def make_inputs(
    *, n: int = 2, k: int = 4, h: int = 24, w: int = 32, d: int = 6, m: int = 7, dtype=torch.float64, seed: int = 0,
    attn_scale: float = 2.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random ``bases (n, k, h, w)``, ``attns (d, k, m, m)`` and ``rois (d, 5)`` for images of
    ``4h x 4w`` pixels (``spatial_scale = 0.25``)."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(n, k, h, w, generator=g, dtype=torch.float64).to(dtype)
    attns = (attn_scale * torch.randn(d, k, m, m, generator=g, dtype=torch.float64)).to(dtype)
    rois = random_rois(d, n, 4.0 * h, 4.0 * w, dtype=dtype, generator=g)
    return bases, attns, rois


def special_rois(num_images: int, image_h: float, image_w: float, *, dtype=torch.float64) -> Tensor:
    """Boxes partly outside, fully outside, zero-area, inverted, sub-pixel and whole-image."""
    boxes = [
        [0, -30.0, -20.0, 0.6 * image_w, 0.5 * image_h],  # partly outside (top-left)
        [num_images - 1, 0.5 * image_w, 0.4 * image_h, image_w + 40.0, image_h + 25.0],  # partly outside (bottom-right)
        [0, -200.0, -150.0, -120.0, -90.0],  # fully outside
        [num_images - 1, image_w + 50.0, 10.0, image_w + 90.0, 40.0],  # fully outside, right
        [0, 0.3 * image_w, 0.3 * image_h, 0.3 * image_w, 0.3 * image_h],  # zero area
        [num_images - 1, 0.2 * image_w, 0.25 * image_h, 0.2 * image_w, 0.7 * image_h],  # zero width
        [0, 0.7 * image_w, 0.6 * image_h, 0.2 * image_w, 0.1 * image_h],  # inverted
        [num_images - 1, 10.3, 7.9, 11.1, 8.4],  # sub-pixel
        [0, 0.0, 0.0, image_w, image_h],  # whole image
    ]
    return torch.tensor(boxes, dtype=dtype)
