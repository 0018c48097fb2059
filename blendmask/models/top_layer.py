"""BlendMask's top layer, evaluated only at the locations whose attentions are read.

The top layer is a 3x3 convolution from the FCOS box tower to ``K*M*M`` attention logits per
location (AdelaiDet's ``top_layer``). AdelaiDet runs it densely over every FPN location, then
reads it at a few of them: the FCOS positives in training, the detections left after the NMS in
inference. At 784 output channels (K = 4, M = 14) that dense convolution is three times the work
of a 256-channel tower convolution.

:meth:`TopLayer.at` computes the same convolution at the given locations only: each location's
3x3 neighbourhood of tower features (zero outside the map, the convolution's padding) is
gathered into one row and multiplied by the weight, ``(P, 9*C) @ (9*C, K*M*M)``. It is the dense
output at those locations up to float summation order, in value and in gradient (it is built
from differentiable standard ops: a gather, a mask and ``F.linear``; tests/models/test_top_layer.py).
The module is still an ``nn.Conv2d`` with AdelaiDet's parameter names, so checkpoints load as
they are, and ``top_layer(x)`` is the dense map.

Determinism: the gather is an embedding lookup (``F.embedding(rows, table)``). Its CPU backward
gives each table row to one thread, which adds that row's gradients in the order of ``rows``: the
same bits at any thread count. Indexing (``table[rows]``) gives the same values, but its backward,
``index_put_(accumulate=True)``, runs with atomic float adds when it has at least 32768 elements
and more than one thread (PyTorch lists it among its nondeterministic CPU operations): the rows
repeat (neighbourhoods overlap), so their sums follow the threads' timing and two trainings with
one seed drift apart. ``index_select`` would be deterministic too; the embedding's backward is no
slower than indexing's (benchmarks/bench_top_layer_gather.py, docs/notes/hostile-input.md).

Locations are indexed as :func:`~blendmask.models.fcos.fcos.flatten_levels` orders them: image-major, then level, then
position (``y * Wl + x``), which is the order of the FCOS targets and of
:func:`~blendmask.models.fcos.fcos.FCOS.predict`'s ``locations``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fcos.fcos import flatten_levels

__all__ = ["TopLayer", "neighbour_indices"]


def neighbour_indices(level_sizes: Sequence[Tuple[int, int]], device: torch.device) -> Tensor:
    """``(L, 9)`` int64: for each of the ``L = sum_l Hl * Wl`` locations of one image (level-major,
    then ``y * Wl + x``) the indices of its 3x3 neighbours ``(dy, dx)`` in row-major order, in the
    same numbering, or -1 for a neighbour outside its level's map."""
    offsets = torch.arange(-1, 2, device=device)
    dy = offsets.repeat_interleave(3)  # (9,) -1 -1 -1 0 0 0 1 1 1
    dx = offsets.repeat(3)  # (9,) -1 0 1 -1 0 1 -1 0 1
    tables: List[Tensor] = []
    start = 0
    for h, w in level_sizes:
        yy = torch.arange(h, device=device)[:, None, None] + dy  # (h, 1, 9)
        xx = torch.arange(w, device=device)[None, :, None] + dx  # (1, w, 9)
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)  # (h, w, 9)
        index = start + yy * w + xx
        tables.append(torch.where(inside, index, torch.full_like(index, -1)).reshape(-1, 9))
        start = start + h * w
    return torch.cat(tables)


class TopLayer(nn.Conv2d):
    """The 3x3 top layer ``in_channels -> num_bases * attn_size**2`` (see the module docstring).

    Args:
        in_channels: box-tower channels.
        out_channels: ``K * M * M``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, 0.0)

    def at(self, towers: Sequence[Tensor], locations: Tensor) -> Tensor:
        """The top layer's output at ``locations`` only.

        Args:
            towers: per FPN level the ``(N, C, Hl, Wl)`` box-tower features.
            locations: ``(P,)`` int64 indices into ``flatten_levels(towers)``
                (:func:`~blendmask.models.fcos.fcos.flatten_levels`).
        Returns:
            ``(P, out_channels)``: ``self(towers[l])[n, :, y, x]`` for each location ``(n, l, y, x)``.
        """
        sizes = [(t.shape[-2], t.shape[-1]) for t in towers]
        per_image = sum(h * w for h, w in sizes)
        table = flatten_levels(towers)  # (N * L, C)
        image = torch.div(locations, per_image, rounding_mode="floor")
        neighbours = neighbour_indices(sizes, locations.device)[locations - image * per_image]  # (P, 9)
        inside = neighbours >= 0
        rows = torch.where(inside, neighbours + (image * per_image)[:, None], torch.zeros_like(neighbours))
        taps = 9 * table.shape[1]
        # an embedding lookup, not table[rows]: rows repeat, and indexing's CPU backward adds repeats
        # with atomics on > 1 thread (module doc, Determinism)
        patches = F.embedding(rows.reshape(-1), table).reshape(locations.shape[0], 9, table.shape[1])
        patches = patches * inside[:, :, None].to(patches.dtype)  # the convolution's zero padding
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, taps)  # [o, (dy*3+dx)*C + c]
        return F.linear(patches.reshape(locations.shape[0], taps), weight, self.bias)
