"""The validated records of a COCO instance file, held in a few flat numpy arrays.

A COCO train file has about a million annotations. Held as Python dicts and lists, they are
millions of objects whose reference counts forked data-loader workers write to on every read, so
each worker ends up with its own copy of every page it touches. :class:`CocoRecords` holds the
same information in a fixed number of numpy arrays (values plus offsets), whatever the number of
images: a forked worker reads them without writing to them.

Arrays (``I`` images, ``A`` annotations in file order, ``P`` polygons, ``C`` polygon coordinates):

===================  ===============  ================================================================
name                 shape, dtype     meaning
===================  ===============  ================================================================
``image_ids``        (I,) int64       COCO image id
``image_sizes``      (I, 2) int64     ``(height, width)``
``file_names``       (F,) uint8       UTF-8 file names (surrogates passed through), back to back
``file_name_ends``   (I,) int64       end of each file name in ``file_names``
``ann_ids``          (A,) int64       COCO annotation id
``ann_images``       (A,) int64       image **index** (row of ``image_ids``) of each annotation
``ann_categories``   (A,) int64       COCO category id
``ann_boxes``        (A, 4) float64   COCO ``[x, y, w, h]`` as in the file
``ann_areas``        (A,) float64     ``area`` (filled with the mask's pixel area when missing)
``ann_crowd``        (A,) uint8       ``iscrowd`` (0 when missing)
``ann_is_rle``       (A,) uint8       1: an RLE (in ``rle_counts``), 0: polygons
``ann_polygon_ends`` (A,) int64       end of each annotation's polygons in ``polygon_ends``
``polygon_ends``     (P,) int64       end of each polygon's coordinates in ``coordinates``
``coordinates``      (C,) float64     polygon coordinates ``x0, y0, x1, y1, ...``
``rle_counts``       (R,) uint8       compressed RLE ``counts`` strings (uncompressed ones encoded)
``rle_ends``         (A,) int64       end of each annotation's RLE string (empty for polygons)
``categories_json``  (K,) uint8       the ``categories`` list as JSON text
===================  ===============  ================================================================

Item ``k`` of a packed field spans ``[ends[k - 1], ends[k])`` (0 for ``k = 0``).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["CocoRecords", "RECORD_FIELDS"]

#: ``{field: (dtype, trailing shape)}`` of every array of :class:`CocoRecords`.
RECORD_FIELDS: Dict[str, Tuple[str, Tuple[int, ...]]] = {
    "image_ids": ("int64", ()),
    "image_sizes": ("int64", (2,)),
    "file_names": ("uint8", ()),
    "file_name_ends": ("int64", ()),
    "ann_ids": ("int64", ()),
    "ann_images": ("int64", ()),
    "ann_categories": ("int64", ()),
    "ann_boxes": ("float64", (4,)),
    "ann_areas": ("float64", ()),
    "ann_crowd": ("uint8", ()),
    "ann_is_rle": ("uint8", ()),
    "ann_polygon_ends": ("int64", ()),
    "polygon_ends": ("int64", ()),
    "coordinates": ("float64", ()),
    "rle_counts": ("uint8", ()),
    "rle_ends": ("int64", ()),
    "categories_json": ("uint8", ()),
}


def _span(ends: np.ndarray, k: int) -> Tuple[int, int]:
    return (int(ends[k - 1]) if k > 0 else 0), int(ends[k])


class CocoRecords:
    """The records of one validated COCO instance file as flat arrays (fields in the module doc).

    Built by :func:`blendmask.data.coco_build.build_records` from a parsed file, or from saved
    ``arrays`` (:meth:`from_arrays`, which checks their consistency). The instance owns only those arrays.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name in RECORD_FIELDS:
            setattr(self, name, arrays[name])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "CocoRecords":
        """Records from saved arrays; ``ValueError`` (naming the field) when a field is missing, has
        the wrong dtype or shape, or its offsets do not fit the data they index."""
        for name, (dtype, tail) in RECORD_FIELDS.items():
            if name not in arrays:
                raise ValueError(f"field {name!r} is missing")
            value = arrays[name]
            if value.dtype != np.dtype(dtype) or value.shape[1:] != tail:
                raise ValueError(f"field {name!r} is {value.dtype}{list(value.shape)}, expected {dtype} (N, *{list(tail)})")
        num_images, num_anns = len(arrays["image_ids"]), len(arrays["ann_ids"])
        lengths = {"image_sizes": num_images, "file_name_ends": num_images, "ann_images": num_anns,
                   "ann_categories": num_anns, "ann_boxes": num_anns, "ann_areas": num_anns,
                   "ann_crowd": num_anns, "ann_is_rle": num_anns, "ann_polygon_ends": num_anns,
                   "rle_ends": num_anns}
        for name, length in lengths.items():
            if len(arrays[name]) != length:
                raise ValueError(f"field {name!r} has {len(arrays[name])} rows, expected {length}")
        for ends, data in (("file_name_ends", "file_names"), ("ann_polygon_ends", "polygon_ends"),
                           ("polygon_ends", "coordinates"), ("rle_ends", "rle_counts")):
            _check_ends(arrays[ends], len(arrays[data]), ends)
        if num_anns and not (0 <= arrays["ann_images"].min() and arrays["ann_images"].max() < num_images):
            raise ValueError("field 'ann_images' points outside the images")
        return cls(arrays)

    def arrays(self) -> Dict[str, np.ndarray]:
        """Every field by name (the arrays themselves, not copies)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}

    # ------------------------------------------------------------------------- reading
    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_ids)

    def categories(self) -> List[Dict[str, Any]]:
        """The ``categories`` records of the file (a new list)."""
        return json.loads(self.categories_json.tobytes().decode("ascii"))

    def file_name(self, row: int) -> str:
        """The ``file_name`` of image ``row``."""
        start, end = _span(self.file_name_ends, row)
        return self.file_names[start:end].tobytes().decode("utf-8", "surrogatepass")

    def file_name_list(self) -> List[str]:
        """Every image's ``file_name``, in row order (one decode for an ASCII buffer)."""
        data = self.file_names.tobytes()
        ends = self.file_name_ends.tolist()
        starts = [0] + ends[:-1]
        if data.isascii():
            text = data.decode("ascii")
            return [text[a:b] for a, b in zip(starts, ends)]
        return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends)]

    def polygons(self, ann: int) -> List[np.ndarray]:
        """The polygons of annotation ``ann`` as ``(2k,)`` float64 arrays (copies)."""
        first, last = _span(self.ann_polygon_ends, ann)
        out = []
        for p in range(first, last):
            start, end = _span(self.polygon_ends, p)
            out.append(self.coordinates[start:end].copy())
        return out

    def rle(self, ann: int) -> Dict[str, Any]:
        """The RLE of annotation ``ann``: ``{"size": [h, w], "counts": str}``."""
        start, end = _span(self.rle_ends, ann)
        h, w = self.image_sizes[self.ann_images[ann]].tolist()
        return {"size": [h, w], "counts": self.rle_counts[start:end].tobytes().decode("ascii")}

    def segmentation(self, ann: int) -> Any:
        """The COCO ``segmentation`` of annotation ``ann``: a list of coordinate lists or an RLE dict."""
        if self.ann_is_rle[ann]:
            return self.rle(ann)
        return [p.tolist() for p in self.polygons(ann)]

    def to_coco_dict(self) -> Dict[str, Any]:
        """A COCO dict of the records (what pycocotools' ``COCO``/``COCOeval`` need): images with
        ``id, file_name, width, height``; annotations with ``id, image_id, category_id, bbox,
        area, iscrowd, segmentation``; the categories as in the file."""
        heights, widths = self.image_sizes[:, 0].tolist(), self.image_sizes[:, 1].tolist()
        image_ids = self.image_ids.tolist()
        images = [{"id": image_ids[r], "file_name": self.file_name(r), "width": widths[r], "height": heights[r]}
                  for r in range(self.num_images)]
        ann_ids, rows = self.ann_ids.tolist(), self.ann_images.tolist()
        cats, boxes = self.ann_categories.tolist(), self.ann_boxes.tolist()
        areas, crowd = self.ann_areas.tolist(), self.ann_crowd.tolist()
        annotations = [{"id": ann_ids[k], "image_id": image_ids[rows[k]], "category_id": cats[k], "bbox": boxes[k],
                        "area": areas[k], "iscrowd": crowd[k], "segmentation": self.segmentation(k)}
                       for k in range(self.num_annotations)]
        return {"images": images, "annotations": annotations, "categories": self.categories()}


def _check_ends(ends: np.ndarray, total: int, name: str) -> None:
    if len(ends) and (ends[0] < 0 or np.any(np.diff(ends) < 0) or ends[-1] != total):
        raise ValueError(f"field {name!r} is not a non-decreasing list of offsets ending at {total}")
    if not len(ends) and total:
        raise ValueError(f"field {name!r} is empty but indexes {total} items")


def first_error_row(mask: np.ndarray) -> Optional[int]:
    """The first ``True`` row of a boolean ``mask``, or None."""
    rows = np.flatnonzero(mask)
    return int(rows[0]) if rows.size else None
