"""Instance masks kept as polygons: the training targets of polygon annotations.

:class:`PolygonMasks` holds the COCO polygons of ``n`` instances of one image and moves them through
the training pipeline as vertices (flip, crop, resize), so that no ``n x H x W`` mask is built for
them. Its rasterisations are the ones the model needs:

- :meth:`PolygonMasks.crop_and_resize`: the ``R x R`` mask targets, each polygon rasterised directly
  inside its box (detectron2's ``PolygonMasks.crop_and_resize``: vertices shifted by the box's
  ``x0, y0``, scaled by ``R / max(box width, 0.1)`` and ``R / max(box height, 0.1)``, then rasterised by
  pycocotools on an ``R x R`` grid);
- :meth:`PolygonMasks.rasterize`: one instance on the grid of the pixels ``(y * stride, x * stride)``,
  for the basis module's semantic target at its stride.

Coordinates are continuous image coordinates (pixel ``i`` covers ``[i, i + 1)``), as COCO's and
detectron2's. pycocotools sets a pixel when its center lies inside the polygon, which makes a
rasterisation at a stride exactly a subsampling of the full-resolution one (up to pycocotools'
rounding of vertices to 1/5 pixel).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["PolygonMasks", "clip_polygon"]

Polygon = np.ndarray  # (2k,) float64 [x0, y0, x1, y1, ...]


def _decode(rles) -> np.ndarray:
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a NumPy 2 DeprecationWarning on every call; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rles)


def _rasterize(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool: the union of ``polygons`` (each ``(2k,)``, ``k >= 3``) by pycocotools."""
    if not polygons or height <= 0 or width <= 0:
        return np.zeros((max(height, 0), max(width, 0)), dtype=bool)
    return _decode(mask_utils.merge(mask_utils.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons],
                                                           height, width))).astype(bool)


def _area(xy: np.ndarray) -> float:
    """Unsigned shoelace area of a ``(k, 2)`` polygon."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_polygon(polygon: Polygon, x0: float, y0: float, x1: float, y1: float) -> Optional[Polygon]:
    """The part of ``polygon`` ``(2k,)`` inside the window ``[x0, x1] x [y0, y1]`` (Sutherland-Hodgman
    against the window's four edges), or ``None`` when nothing of positive area is left.

    A polygon that leaves and re-enters the window stays one polygon, joined along the window's edge
    by zero-width parts; they cover no pixel center, so it rasterises as the separate pieces would.
    Vertices inside such a part (on a window edge, between two vertices on the same edge) are removed,
    so that the vertices' extent is the extent of the part inside (detectron2's boxes of cropped
    polygons). A concave polygon that wraps around a window corner without covering it is joined
    through that corner (Sutherland-Hodgman's known limit).
    """
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    edges = ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False))
    for axis, bound, keep_above in edges:
        if len(xy) == 0:
            break
        coord = xy[:, axis]
        inside = coord >= bound if keep_above else coord <= bound
        prev, prev_inside = np.roll(xy, 1, axis=0), np.roll(inside, 1)
        crossing = inside != prev_inside
        delta = coord - prev[:, axis]
        t = np.where(crossing, (bound - prev[:, axis]) / np.where(crossing, delta, 1.0), 0.0)
        cut = prev + t[:, None] * (xy - prev)
        cut[crossing, axis] = bound  # exactly on the edge
        # per vertex: the crossing into or out of the window (if any), then the vertex itself (if inside)
        points = np.stack([cut, xy], axis=1).reshape(-1, 2)
        xy = points[np.stack([crossing, inside], axis=1).reshape(-1)]
    while len(xy) >= 3:  # drop the middle vertices of runs along one window edge
        on = np.stack([xy[:, axis] == bound for axis, bound, _ in edges], axis=1)  # (k, 4)
        inner = (on & np.roll(on, 1, axis=0) & np.roll(on, -1, axis=0)).any(axis=1)
        if not inner.any():
            break
        xy = xy[~inner]
    if len(xy) < 3 or _area(xy) <= 0.0:
        return None
    return xy.reshape(-1)


class PolygonMasks:
    """The polygon masks of ``n`` instances of one image.

    Args:
        polygons: per instance, a list of polygons, each a flat sequence ``[x0, y0, x1, y1, ...]``
            of at least 3 vertices in image coordinates (COCO's ``segmentation`` lists).
        image_size: ``(H, W)`` of the image the coordinates refer to.

    An instance may have no polygon left (after a crop): it is then empty (:meth:`nonempty`).
    Indexing with an int list, an int64 or bool tensor, or a slice selects instances.
    """

    def __init__(self, polygons: Iterable[Iterable[Sequence[float]]], image_size: Tuple[int, int]) -> None:
        self.polygons: List[List[Polygon]] = [[np.asarray(p, dtype=np.float64).reshape(-1) for p in inst]
                                              for inst in polygons]
        for i, inst in enumerate(self.polygons):
            for p in inst:
                if p.size < 6 or p.size % 2:
                    raise ValueError(f"PolygonMasks: instance {i} has a polygon of {p.size} coordinates; "
                                     f"a polygon needs an even number, at least 6 (3 vertices)")
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def __len__(self) -> int:
        return len(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self)}, image_size={self.image_size})"

    def __getitem__(self, item: Union[slice, Sequence[int], torch.Tensor]) -> "PolygonMasks":
        if isinstance(item, slice):
            chosen = self.polygons[item]
        else:
            if isinstance(item, torch.Tensor):
                if item.dtype == torch.bool:
                    if item.shape != (len(self),):
                        raise IndexError(f"PolygonMasks: bool index of shape {tuple(item.shape)} for {len(self)} instances")
                    item = item.nonzero().flatten()
                item = item.tolist()
            chosen = [self.polygons[int(i)] for i in item]
        return self._with(chosen, self.image_size)

    def _with(self, polygons: List[List[Polygon]], image_size: Tuple[int, int]) -> "PolygonMasks":
        out = PolygonMasks.__new__(PolygonMasks)
        out.polygons, out.image_size = polygons, (int(image_size[0]), int(image_size[1]))
        return out

    def _map(self, fn, image_size: Tuple[int, int]) -> "PolygonMasks":
        return self._with([[fn(p) for p in inst] for inst in self.polygons], image_size)

    # ------------------------------------------------------------------ geometry
    def hflip(self) -> "PolygonMasks":
        """Mirror left-right in the image's width ``W``: ``x -> W - x`` (as boxes flip)."""
        width = self.image_size[1]

        def flip(p: Polygon) -> Polygon:
            q = p.copy()
            q[0::2] = width - p[0::2]
            return q

        return self._map(flip, self.image_size)

    def resize(self, size: Tuple[int, int]) -> "PolygonMasks":
        """Scale to an image resized to ``size = (h, w)``: ``x * w / W``, ``y * h / H``."""
        sx, sy = size[1] / self.image_size[1], size[0] / self.image_size[0]

        def scale(p: Polygon) -> Polygon:
            q = p.copy()
            q[0::2] *= sx
            q[1::2] *= sy
            return q

        return self._map(scale, size)

    def crop(self, x0: int, y0: int, width: int, height: int) -> "PolygonMasks":
        """The part inside the window ``[x0, x0 + width] x [y0, y0 + height]``, in the window's
        coordinates (:func:`clip_polygon`, then shifted by ``-x0, -y0``); polygons with nothing
        inside are dropped, so an instance may become empty."""
        out = []
        for inst in self.polygons:
            kept = []
            for p in inst:
                clipped = clip_polygon(p, x0, y0, x0 + width, y0 + height)
                if clipped is not None:
                    clipped[0::2] -= x0
                    clipped[1::2] -= y0
                    kept.append(clipped)
            out.append(kept)
        return self._with(out, (height, width))

    def nonempty(self) -> torch.Tensor:
        """``(n,)`` bool: instances with at least one polygon."""
        return torch.tensor([len(inst) > 0 for inst in self.polygons], dtype=torch.bool)

    def bounding_boxes(self) -> torch.Tensor:
        """``(n, 4)`` float32 xyxy: the extent of each instance's vertices (zeros when empty)."""
        boxes = torch.zeros((len(self), 4), dtype=torch.float32)
        for i, inst in enumerate(self.polygons):
            if inst:
                xy = np.concatenate(inst).reshape(-1, 2)
                boxes[i] = torch.from_numpy(np.concatenate([xy.min(0), xy.max(0)]).astype(np.float32))
        return boxes

    # ------------------------------------------------------------------ rasterisation
    def crop_and_resize(self, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """``(n, R, R)`` float32 0/1 mask targets, each instance rasterised inside its box.

        detectron2's convention: the vertices are shifted by the box's ``(x0, y0)`` and scaled by
        ``R / max(w, 0.1)`` horizontally and ``R / max(h, 0.1)`` vertically (``w, h`` the box's
        width and height, computed in float32 as the box), then rasterised on an ``R x R`` grid by
        pycocotools: cell ``(i, j)`` is set when the image point ``(x0 + (j + 0.5) w / R,
        y0 + (i + 0.5) h / R)`` lies inside, the sample points of an aligned RoIAlign.

        Args:
            boxes: ``(n, 4)`` xyxy boxes in this image's coordinates, one per instance.
            size: R.
        """
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != len(self):
            raise ValueError(f"PolygonMasks.crop_and_resize: expected boxes ({len(self)}, 4), got {tuple(boxes.shape)}")
        out = torch.zeros((len(self), size, size), dtype=torch.float32)
        cpu_boxes = boxes.detach().to("cpu", torch.float32).numpy()
        for i, (inst, box) in enumerate(zip(self.polygons, cpu_boxes)):
            w, h = box[2] - box[0], box[3] - box[1]
            ratio_w, ratio_h = size / max(w, np.float32(0.1)), size / max(h, np.float32(0.1))
            local = []
            for p in inst:
                q = p.copy()
                q[0::2] = (q[0::2] - box[0]) * ratio_w
                q[1::2] = (q[1::2] - box[1]) * ratio_h
                local.append(q)
            out[i] = torch.from_numpy(_rasterize(local, size, size).astype(np.float32))
        return out.to(boxes.device)

    def rasterize(self, index: int, stride: int = 1, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Instance ``index`` as a bool mask on the pixels ``(y * stride, x * stride)``: ``(h, w)``,
        by default ``(ceil(H / stride), ceil(W / stride))``. At ``stride`` 1 it is the full-resolution
        mask. Cell ``(i, j)`` is set when the center of pixel ``(i * stride, j * stride)`` is inside:
        the polygons are scaled by ``1 / stride`` and shifted by ``(1 - 1 / stride) / 2``."""
        if stride < 1:
            raise ValueError(f"PolygonMasks.rasterize: stride must be >= 1, got {stride}")
        if size is None:
            size = (math.ceil(self.image_size[0] / stride), math.ceil(self.image_size[1] / stride))
        shift = 0.5 * (1.0 - 1.0 / stride)
        local = [p / stride + shift for p in self.polygons[index]]
        return torch.from_numpy(_rasterize(local, int(size[0]), int(size[1])))

    def to_bitmasks(self) -> torch.Tensor:
        """``(n, H, W)`` uint8 full-resolution masks: this materialises ``n x H x W`` bytes (for
        display, tests and copy-paste, :mod:`blendmask.data.copy_paste`)."""
        out = torch.zeros((len(self), *self.image_size), dtype=torch.uint8)
        for i in range(len(self)):
            out[i] = self.rasterize(i).to(torch.uint8)
        return out
