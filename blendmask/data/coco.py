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
- Images are read by :func:`blendmask.data.read_image` (every bit depth scaled by its real range,
  EXIF orientation applied, RGB).
"""
from __future__ import annotations

import contextlib
import io
import json
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
from .images import read_image
from .paths import contained_path

__all__ = ["CocoInstanceDataset", "MASK_FORMATS", "load_coco_json", "resolve_split"]

#: ``mask_format`` values: keep polygon annotations as polygons, or decode every mask to a bitmask.
MASK_FORMATS = ("polygon", "bitmask")

logger = logging.getLogger(__name__)
Target = Dict[str, Any]
Transform = Callable[[torch.Tensor, Target], Tuple[torch.Tensor, Target]]


def read_json_file(path: str | os.PathLike, *, what: str = "annotation file") -> Any:
    """The parsed JSON of ``path``: the one reader of the package's annotation files. A missing
    file is a ``FileNotFoundError`` naming ``what``; broken JSON (line and column), a file that is
    not UTF-8, an integer too long to convert or nesting too deep is a one-line ``ValueError``
    naming the file. A UTF-8 byte-order mark is accepted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path!r}")
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise ValueError(f"{path}: not valid JSON: {' '.join(str(e).split())}") from e
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None


def load_coco_json(ann_file: str | os.PathLike) -> COCO:
    """Read and validate a COCO annotation file into a pycocotools ``COCO`` object.

    This is the one path by which the package reads COCO ground truth. Raises
    ``FileNotFoundError`` if the file is missing and a one-line ``ValueError`` naming the file
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
    images = load_coco_json(ann_file).dataset["images"]
    return images[0]["file_name"] if images else None


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
        allow_outside: accept ``file_name``s that lead outside ``image_dir`` (refused by default,
            see :mod:`blendmask.data.paths`).

    Attributes:
        ann_file, image_dir: the paths given.
        coco: the pycocotools ``COCO`` object (ground truth for COCOeval).
        category_ids: ``category_ids[label]`` is the COCO category id of contiguous ``label``.
        class_names: category names in label order.
        num_classes: ``len(category_ids)``.
        image_ids: COCO image id of each dataset index.
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
        self.transforms = transforms
        self.box_tolerance = float(box_tolerance)
        self.coco = load_coco_json(self.ann_file)

        categories = {cat["id"]: cat["name"] for cat in self.coco.dataset["categories"]}
        self.category_ids: List[int] = sorted(categories)
        self.class_names: List[str] = [categories[c] for c in self.category_ids]
        self.num_classes = len(self.category_ids)
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids)}

        images = {rec["id"]: rec for rec in self.coco.dataset["images"]}
        self._check_image_files(images)
        per_image = self._trainable_annotations(self.coco.dataset["annotations"], images)
        self._records: List[Tuple[Dict[str, Any], List[Dict[str, Any]]]] = []
        for image_id, info in images.items():
            anns = per_image.get(image_id, [])
            if anns or keep_empty:
                self._records.append((info, anns))
        self.image_ids: List[int] = [info["id"] for info, _ in self._records]

    # ----------------------------------------------------------------------------- validation
    def _err(self, what: str) -> ValueError:
        return ValueError(f"{self.ann_file}: {what}")

    def _check_image_files(self, images: Dict[int, Dict[str, Any]]) -> None:
        for iid, rec in images.items():
            path = contained_path(self.image_dir, rec["file_name"], where=f"{self.ann_file}: image id {iid}",
                                  allow_outside=self.allow_outside)
            try:
                found = os.path.isfile(path)
            except ValueError:  # e.g. a lone surrogate the file system cannot encode
                raise self._err(f"image id {iid}: file_name {rec['file_name']!r} is not a valid path") from None
            if not found:
                raise FileNotFoundError(f"{self.ann_file}: image id {iid}: image file {path!r} not found")

    def _trainable_annotations(
        self, anns: Sequence[Dict[str, Any]], images: Dict[int, Dict[str, Any]]
    ) -> Dict[int, List[Dict[str, Any]]]:
        """Apply the box policy to the (already validated) annotations; return the trainable
        (non-crowd, non-empty box) ones per image id."""
        per_image: Dict[int, List[Dict[str, Any]]] = {}
        for ann in anns:
            info = images[ann["image_id"]]
            where = f"annotation id {ann['id']} (image id {info['id']}, {info['file_name']!r})"
            box = self._check_box(ann["bbox"], info, where)
            if ann["iscrowd"]:
                continue
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # zero-area after clipping: nothing to learn
            per_image.setdefault(info["id"], []).append(ann)
        return per_image

    def _check_box(self, bbox: List[float], info: Dict[str, Any], where: str) -> Tuple[float, float, float, float]:
        """A validated COCO ``[x, y, w, h]`` box inside the image up to the tolerance, clipped, as xyxy."""
        x, y, bw, bh = (float(v) for v in bbox)
        w, h, tol = info["width"], info["height"], self.box_tolerance
        if x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
            raise self._err(
                f"{where}: bbox {bbox} lies outside the {w}x{h} image by more than {tol} px"
            )
        return (min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h))

    # ----------------------------------------------------------------------------- loading
    def __len__(self) -> int:
        return len(self._records)

    def image_path(self, index: int) -> str:
        """Path of the image file of dataset ``index``."""
        return os.path.join(self.image_dir, self._records[index][0]["file_name"])

    def load_image(self, index: int) -> torch.Tensor:
        """Read image ``index`` as ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]``.

        Raises ``ValueError`` naming the files and the image id if the file cannot be read or its
        size differs from the annotation's (checked before its pixels are decoded)."""
        info = self._records[index][0]
        return read_image(self.image_path(index), expected_size=(info["width"], info["height"]),
                          context=f"{self.ann_file}: image id {info['id']}: ")

    def load_target(self, index: int) -> Target:
        """Build the target dict of dataset ``index`` (no transforms applied)."""
        info, anns = self._records[index]
        h, w = info["height"], info["width"]
        boxes = torch.zeros((len(anns), 4), dtype=torch.float32)
        labels = torch.zeros((len(anns),), dtype=torch.int64)
        for i, ann in enumerate(anns):
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            boxes[i] = torch.tensor([x, y, x + bw, y + bh])
            labels[i] = self._label_of[ann["category_id"]]
        segmentations = [ann["segmentation"] for ann in anns]
        try:
            if self.mask_format == "polygon" and anns and all(isinstance(seg, list) for seg in segmentations):
                masks = PolygonMasks(segmentations, (h, w))
            else:
                masks = _decode_segmentations(segmentations, h, w)
        except ValueError as e:  # cannot happen after validation; if it does, name the records
            ids = [ann["id"] for ann in anns]
            raise self._err(f"image id {info['id']}: annotations {ids}: cannot decode the segmentations: {e}") from e
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        return {"boxes": boxes, "labels": labels, "masks": masks, "image_id": int(info["id"])}

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
