"""COCO-format instance segmentation dataset.

``CocoInstanceDataset(ann_file, image_dir)[i]`` returns ``(image, target)`` in the package
conventions (README, "Conventions shared across the package"):

- ``image``: ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]``;
- ``target``: ``dict(boxes=(n, 4) float32 xyxy pixels, labels=(n,) int64 in [0, C),
  masks, image_id=int)``; ``masks`` is a :class:`blendmask.polygons.PolygonMasks` when every
  annotation of the image is a polygon (with ``mask_format="polygon"``, the default, as
  detectron2's ``INPUT.MASK_FORMAT``), else ``(n, H, W)`` uint8 bitmasks.

Rules (documented choices):

- **Validation happens at construction**, so a bad file fails before training starts. Every
  record, number, polygon, box and RLE is checked (rules and limits in
  :mod:`blendmask.data.coco_checks`) before pycocotools rasterises anything. Every error is a
  one-line ``ValueError`` (``FileNotFoundError`` for a missing file) whose message names the
  annotation file and the offending record (image id / annotation id and its image file).
- **Missing ``area`` and ``iscrowd``** are filled when the file is read, as COCO's own ground
  truth has them (``area`` = pixel area of the mask, ``iscrowd`` = 0), so COCOeval and every
  other consumer of :attr:`CocoInstanceDataset.coco` sees them.
- **Category ids** are mapped to contiguous labels in increasing id order;
  ``category_ids[label]`` maps back for results.
- **Crowd annotations** (``iscrowd=1``) are validated but dropped from the training targets, as
  detectron2 does; COCOeval handles crowd regions itself from the ground-truth file.
- **Images without (non-crowd) annotations** are kept (empty targets) unless ``keep_empty=False``.
- **Boxes** (COCO ``[x, y, w, h]``) must have ``w, h >= 0`` and lie inside the image up to
  ``box_tolerance`` pixels (COCO rounding pushes some boxes a fraction of a pixel outside). Boxes
  within the tolerance are clipped to the image; boxes further out are an error. Instances whose
  clipped box has zero width or height are dropped from the targets (they cannot be learned).
- **Masks**: polygons (each with at least 3 points), compressed RLE (``counts`` string) and
  uncompressed RLE (``counts`` list) via pycocotools. An RLE's ``size`` must equal the image's.
  Polygons stay polygons (the transforms move their vertices and the model rasterises them inside
  their boxes, so no ``n x H x W`` mask is built); an image with any RLE annotation, or
  ``mask_format="bitmask"``, gets all its masks decoded to bitmasks.
- **Missing image files** are an error at construction. **Unreadable or wrongly sized image files
  fail clearly** (``ValueError`` naming the annotation file, the image id and the image file)
  when loaded: skipping them silently would change the data order and hide a corrupt data set.
- Images are read by :func:`blendmask.data.read_image` under the dataset's ``reading`` (8-bit
  images / 255, deeper ones by the intensity policy, EXIF orientation applied, RGB).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..polygons import PolygonMasks
from .coco_checks import check_coco, fill_coco_defaults, segmentation_to_rle
from .coco_index import load_coco_records
from .coco_records import CocoRecords, first_error_row
from .images import ImageReading, read_image
from .json_files import read_json_file
from .paths import contained_path, files_in

__all__ = ["CocoInstanceDataset", "MASK_FORMATS", "load_coco_json", "resolve_split"]

#: ``mask_format`` values: keep polygon annotations as polygons, or decode every mask to a bitmask.
MASK_FORMATS = ("polygon", "bitmask")

logger = logging.getLogger(__name__)
Target = Dict[str, Any]
Transform = Callable[[torch.Tensor, Target], Tuple[torch.Tensor, Target]]


def load_coco_json(ann_file: str | os.PathLike) -> COCO:
    """Read and validate a COCO annotation file into a pycocotools ``COCO`` object holding the
    whole file (every field kept; for training, :func:`blendmask.data.coco_index.load_coco_records`
    is the reader).

    Raises ``FileNotFoundError`` if the file is missing and a one-line ``ValueError`` naming the file
    (and line/column, or the record) if it is not valid JSON or breaks a rule of
    :func:`blendmask.data.coco_checks.check_coco`. Missing ``area``/``iscrowd`` fields are filled
    (:func:`blendmask.data.coco_checks.fill_coco_defaults`).
    """
    ann_file = os.fspath(ann_file)
    data = read_json_file(ann_file, what="COCO annotation file")
    check_coco(data, ann_file)
    filled = fill_coco_defaults(data)
    if filled:
        logger.info("%s: %s", ann_file, filled)
    return _coco_of_dict(data)


def coco_of_records(records: CocoRecords) -> COCO:
    """A pycocotools ``COCO`` ground truth of ``records`` (what COCOeval needs)."""
    return _coco_of_dict(records.to_coco_dict())


def _coco_of_dict(data: Dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


DATA_LAYOUT = ("a data directory (DIR/annotations/instances_{train,val}.json, images in DIR/{train,val}/) "
               "or a COCO JSON file")


def check_json_data_file(data: str | os.PathLike) -> None:
    """Refuse a ``--data`` file that is not JSON (an image, an archive...) in one line saying what
    is expected, before any parser reports its bytes. A JSON file starts with ``{`` after an
    optional UTF-8 byte-order mark and white space."""
    with open(data, "rb") as handle:
        head = handle.read(4096)
    if not head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        raise ValueError(f"--data {os.fspath(data)!r} is not a COCO JSON file (it does not start with '{{'): "
                         f"--data expects {DATA_LAYOUT}")


def resolve_split(data: str | os.PathLike, split: str) -> Tuple[str, str]:
    """Find ``(ann_file, image_dir)`` for ``split`` ("train" or "val") of a data argument.

    ``data`` is either

    - a **directory in the synthetic layout**: ``DIR/annotations/instances_{split}.json`` with the
      images in ``DIR/{split}/``; or
    - a **COCO JSON file**, used for whichever split is asked. Its image directory is the first of
      these candidates that holds the first image record's ``file_name``: ``images/`` next to the
      JSON, ``../NAME/`` when the JSON is ``instances_NAME.json`` (the COCO 2017 layout
      ``annotations/instances_val2017.json`` + ``val2017/``), and the JSON's own directory.
      A JSON without images resolves to the first existing candidate.

    Raises ``ValueError`` for a bad ``split`` and ``FileNotFoundError`` naming the paths tried.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = os.fspath(data)
    if os.path.isdir(data):
        ann_file = os.path.join(data, "annotations", f"instances_{split}.json")
        image_dir = os.path.join(data, split)
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(
                f"data directory {data!r} has no {split} annotations: expected {ann_file!r} "
                "(layout: DIR/annotations/instances_{train,val}.json, images in DIR/{train,val}/)"
            )
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"data directory {data!r} has no {split} image directory {image_dir!r}")
        return ann_file, image_dir
    if not os.path.isfile(data):
        raise FileNotFoundError(f"--data {data!r} is neither a directory nor a COCO JSON file")
    check_json_data_file(data)
    json_dir = os.path.dirname(os.path.abspath(data))
    candidates = [os.path.join(json_dir, "images")]
    stem = os.path.splitext(os.path.basename(data))[0]
    if stem.startswith("instances_"):
        candidates.append(os.path.join(os.path.dirname(json_dir), stem[len("instances_"):]))
    candidates.append(json_dir)
    first_file = _first_image_file_name(data)
    for cand in candidates:
        if os.path.isdir(cand) and (first_file is None or os.path.isfile(os.path.join(cand, first_file))):
            return data, cand
    what = f"image {first_file!r}" if first_file is not None else "an existing directory"
    raise FileNotFoundError(f"cannot find the image directory for {data!r}: none of {candidates} holds {what}")


def _first_image_file_name(ann_file: str) -> Optional[str]:
    records = load_coco_records(ann_file)  # kept for the dataset: the file is parsed once
    return records.file_name(0) if records.num_images else None


class CocoInstanceDataset(torch.utils.data.Dataset):
    """A COCO instance-segmentation annotation file plus its image directory.

    Args:
        ann_file: path of the COCO JSON.
        image_dir: directory the images' ``file_name`` entries are relative to.
        transforms: optional callable ``(image, target) -> (image, target)`` applied to every
            sample (training augmentation, see :mod:`blendmask.data.transforms`).
        keep_empty: keep images without non-crowd annotations (default True, needed for
            evaluation and harmless for training); False drops them.
        box_tolerance: how far (pixels) a box may stick out of its image before it is an error.
        mask_format: ``"polygon"`` (default): an image whose annotations are all polygons gets
            :class:`~blendmask.polygons.PolygonMasks`; ``"bitmask"``: ``(n, H, W)`` uint8 always.
        uint8_images: return 8-bit images as uint8 ``(3, H, W)`` (a quarter of the bytes through
            a loader worker's queue; :func:`blendmask.data.images.uint8_to_unit_float` makes the
            float image on the training device). Default False: float32 in ``[0, 1]``.
        records: the file's :class:`~blendmask.data.coco_records.CocoRecords` when the caller
            already has them (:func:`blendmask.engine.defaults.load_dataset` does, through the process's records index); default: read ``ann_file``.
        allow_outside: accept ``file_name``s that lead outside ``image_dir`` (refused by default,
            see :mod:`blendmask.data.paths`).
        reading: how image files are read (page, channels, pixel limit, intensity policy; a
            config's ``ImageReading.from_config(cfg.input)``).

    The dataset holds its records in flat numpy arrays (:mod:`blendmask.data.coco_records`), a
    fixed number of Python objects whatever the number of images, so forked loader workers share
    them without copying.

    Attributes:
        ann_file, image_dir: the paths given.
        records: the file's :class:`~blendmask.data.coco_records.CocoRecords`.
        coco: the pycocotools ``COCO`` ground truth (for COCOeval), built on first access.
        category_ids: ``category_ids[label]`` is the COCO category id of contiguous ``label``.
        class_names: category names in label order.
        num_classes: ``len(category_ids)``.
        image_ids: COCO image id of each dataset index (a new list on each access).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        transforms: Optional[Transform] = None,
        keep_empty: bool = True,
        box_tolerance: float = 2.0,
        mask_format: str = "polygon",
        uint8_images: bool = False,
        records: Optional[CocoRecords] = None,
        reading: ImageReading = ImageReading(),
        allow_outside: bool = False,
    ) -> None:
        self.ann_file = os.fspath(ann_file)
        self.allow_outside = allow_outside
        self.image_dir = os.fspath(image_dir)
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"image directory not found: {self.image_dir!r} (for {self.ann_file})")
        if box_tolerance < 0:
            raise ValueError(f"box_tolerance must be >= 0, got {box_tolerance}")
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        self.mask_format = mask_format
        self.uint8_images = bool(uint8_images)
        self.reading = reading
        self.transforms = transforms
        self.box_tolerance = float(box_tolerance)
        self.records = records if records is not None else load_coco_records(self.ann_file)
        self._coco: Optional[COCO] = None

        categories = {cat["id"]: cat["name"] for cat in self.records.categories()}
        self.category_ids: List[int] = sorted(categories)
        self.class_names: List[str] = [categories[c] for c in self.category_ids]
        self.num_classes = len(self.category_ids)

        self._check_image_files()
        trainable = self._trainable_annotations()
        # per image row, its trainable annotations (in file order), grouped by image
        order = trainable[np.argsort(self.records.ann_images[trainable], kind="stable")]
        counts = np.bincount(self.records.ann_images[order], minlength=self.records.num_images)
        self._ann_order = order
        self._ann_ends = np.cumsum(counts)
        self._rows = np.arange(self.records.num_images) if keep_empty else np.flatnonzero(counts)
        labels = np.searchsorted(np.asarray(self.category_ids, dtype=np.int64), self.records.ann_categories)
        self._ann_labels = labels.astype(np.int64)

    @property
    def image_ids(self) -> List[int]:
        return self.records.image_ids[self._rows].tolist()

    @property
    def coco(self) -> COCO:
        if self._coco is None:
            self._coco = coco_of_records(self.records)
        return self._coco

    # ----------------------------------------------------------------------------- validation
    def _err(self, what: str) -> ValueError:
        return ValueError(f"{self.ann_file}: {what}")

    def _where(self, ann: int) -> str:
        rec = self.records
        row = int(rec.ann_images[ann])
        return f"annotation id {int(rec.ann_ids[ann])} (image id {int(rec.image_ids[row])}, {rec.file_name(row)!r})"

    def _check_image_files(self) -> None:
        """Every image's ``file_name`` stays inside ``image_dir`` and names a file there. The
        directory is listed once; a listed name is taken as found once one listed name passed
        :func:`contained_path` (it accepts all of them or none); any other name is checked alone."""
        rec = self.records
        listed = files_in(self.image_dir)
        listed_contained = False
        for row, name in enumerate(rec.file_name_list()):
            if listed_contained and name in listed:
                continue
            path = contained_path(self.image_dir, name, where=f"{self.ann_file}: image id {int(rec.image_ids[row])}",
                                  allow_outside=self.allow_outside)
            try:
                found = os.path.isfile(path)
            except ValueError:  # e.g. a lone surrogate the file system cannot encode
                raise self._err(f"image id {int(rec.image_ids[row])}: file_name {name!r} is not a valid path") from None
            if not found:
                raise FileNotFoundError(f"{self.ann_file}: image id {int(rec.image_ids[row])}: "
                                        f"image file {path!r} not found")
            listed_contained = listed_contained or name in listed

    def _trainable_annotations(self) -> np.ndarray:
        """Apply the box policy to the (already validated) annotations: every box must lie inside
        its image up to the tolerance; return the indices of the trainable (non-crowd, non-empty
        clipped box) annotations, in file order."""
        rec, tol = self.records, self.box_tolerance
        x, y, bw, bh = rec.ann_boxes.T
        h, w = rec.image_sizes[rec.ann_images].T.astype(np.float64)
        bad = first_error_row((x < -tol) | (y < -tol) | (x + bw > w + tol) | (y + bh > h + tol))
        if bad is not None:
            raise self._err(f"{self._where(bad)}: bbox {rec.ann_boxes[bad].tolist()} lies outside the "
                            f"{int(w[bad])}x{int(h[bad])} image by more than {tol} px")
        x0, x1 = np.minimum(np.maximum(x, 0.0), w), np.minimum(np.maximum(x + bw, 0.0), w)
        y0, y1 = np.minimum(np.maximum(y, 0.0), h), np.minimum(np.maximum(y + bh, 0.0), h)
        return np.flatnonzero((rec.ann_crowd == 0) & (x1 > x0) & (y1 > y0))

    # ----------------------------------------------------------------------------- loading
    def __len__(self) -> int:
        return len(self._rows)

    def image_id(self, index: int) -> int:
        """COCO image id of dataset ``index``."""
        return int(self.records.image_ids[self._rows[index]])

    def image_size(self, index: int) -> Tuple[int, int]:
        """``(height, width)`` of dataset ``index`` as annotated."""
        h, w = self.records.image_sizes[self._rows[index]].tolist()
        return h, w

    def image_path(self, index: int) -> str:
        """Path of the image file of dataset ``index``."""
        return os.path.join(self.image_dir, self.records.file_name(int(self._rows[index])))

    def load_image(self, index: int) -> torch.Tensor:
        """Read image ``index`` as ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]`` (uint8 for an
        8-bit file with ``uint8_images``).

        Raises ``ValueError`` naming the files and the image id if the file cannot be read or its
        size differs from the annotation's (checked before its pixels are decoded)."""
        h, w = self.image_size(index)
        return read_image(self.image_path(index), expected_size=(w, h),
                          context=f"{self.ann_file}: image id {self.image_id(index)}: ",
                          keep_uint8=self.uint8_images, reading=self.reading)

    def _annotations_of(self, index: int) -> np.ndarray:
        row = int(self._rows[index])
        start = int(self._ann_ends[row - 1]) if row > 0 else 0
        return self._ann_order[start:int(self._ann_ends[row])]

    def image_categories(self) -> List[np.ndarray]:
        """The COCO category ids of each dataset index's training instances (for repeat factors)."""
        return [self.records.ann_categories[self._annotations_of(i)] for i in range(len(self))]

    def load_target(self, index: int) -> Target:
        """Build the target dict of dataset ``index`` (no transforms applied)."""
        rec = self.records
        anns = self._annotations_of(index)
        h, w = self.image_size(index)
        xywh = rec.ann_boxes[anns]
        boxes = torch.from_numpy(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)).float()
        labels = torch.from_numpy(self._ann_labels[anns])
        try:
            if self.mask_format == "polygon" and anns.size and not rec.ann_is_rle[anns].any():
                masks = PolygonMasks([rec.polygons(int(k)) for k in anns], (h, w))
            else:
                masks = _decode_segmentations([rec.segmentation(int(k)) for k in anns], h, w)
        except ValueError as e:  # cannot happen after validation; if it does, name the records
            ids = rec.ann_ids[anns].tolist()
            raise self._err(f"image id {self.image_id(index)}: annotations {ids}: cannot decode the "
                            f"segmentations: {e}") from e
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        return {"boxes": boxes, "labels": labels, "masks": masks, "image_id": self.image_id(index)}

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Target]:
        image, target = self.load_image(index), self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(ann_file={self.ann_file!r}, image_dir={self.image_dir!r}, "
            f"images={len(self)}, classes={self.class_names})"
        )


def _decode_segmentations(segs: Sequence[Any], h: int, w: int) -> torch.Tensor:
    """Decode validated segmentations into ``(n, h, w)`` uint8 masks."""
    if not segs:
        return torch.zeros((0, h, w), dtype=torch.uint8)
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a NumPy 2 DeprecationWarning on every call; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        masks = mask_utils.decode([segmentation_to_rle(seg, h, w) for seg in segs])  # (h, w, n) Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
