"""COCO-format instance segmentation dataset.

``CocoInstanceDataset(ann_file, image_dir)[i]`` returns ``(image, target)`` in the package
conventions (README, "Conventions shared across the package"):

- ``image``: ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]``;
- ``target``: ``dict(boxes=(n, 4) float32 xyxy pixels, labels=(n,) int64 in [0, C),
  masks=(n, H, W) uint8, image_id=int)``.

Rules (documented choices):

- **Validation happens at construction**, so a bad file fails before training starts. Every
  error is a ``ValueError`` (``FileNotFoundError`` for a missing file) whose message names the
  annotation file and the offending record (image id / annotation id / category id).
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
- **Missing image files** are an error at construction. **Unreadable or wrongly sized image files
  fail clearly** (``RuntimeError`` naming the file and the image id) when loaded: skipping them
  silently would change the data order and hide a corrupt data set.
- Images are read with PIL, EXIF orientation applied (as detectron2 does), converted to RGB.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

__all__ = ["CocoInstanceDataset", "load_coco_json", "resolve_split"]

Target = Dict[str, Any]
_REQUIRED_KEYS = {
    "images": ("id",),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id",),
}
Transform = Callable[[torch.Tensor, Target], Tuple[torch.Tensor, Target]]


def load_coco_json(ann_file: str | os.PathLike) -> COCO:
    """Read a COCO annotation file into a pycocotools ``COCO`` object with clear errors.

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the file (and
    line/column, or the record) if it is not valid JSON, lacks the ``images``/``annotations``/
    ``categories`` lists, or has a record without the id fields pycocotools indexes by.
    """
    ann_file = os.fspath(ann_file)
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file!r}")
    try:
        with open(ann_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ann_file}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{ann_file}: not a UTF-8 text file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: top level must be a JSON object, got {type(data).__name__}")
    for key, required in _REQUIRED_KEYS.items():
        records = data.get(key)
        if not isinstance(records, list):
            raise ValueError(f"{ann_file}: missing or non-list top-level key {key!r}")
        for rec in records:  # pycocotools' createIndex would fail with a bare KeyError
            missing = [k for k in required if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise ValueError(f"{ann_file}: {key[:-1]} record {rec!r:.120} lacks {missing}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


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
    if not images:
        return None
    name = images[0].get("file_name") if isinstance(images[0], dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{ann_file}: image record {images[0]!r} has no string 'file_name'")
    return name


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
    ) -> None:
        self.ann_file = os.fspath(ann_file)
        self.image_dir = os.fspath(image_dir)
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"image directory not found: {self.image_dir!r} (for {self.ann_file})")
        if box_tolerance < 0:
            raise ValueError(f"box_tolerance must be >= 0, got {box_tolerance}")
        self.transforms = transforms
        self.box_tolerance = float(box_tolerance)
        self.coco = load_coco_json(self.ann_file)

        categories = self._check_categories(self.coco.dataset["categories"])
        self.category_ids: List[int] = sorted(categories)
        self.class_names: List[str] = [categories[c] for c in self.category_ids]
        self.num_classes = len(self.category_ids)
        self._label_of = {cid: label for label, cid in enumerate(self.category_ids)}

        images = self._check_images(self.coco.dataset["images"])
        per_image = self._check_annotations(self.coco.dataset["annotations"], images)
        self._records: List[Tuple[Dict[str, Any], List[Dict[str, Any]]]] = []
        for image_id, info in images.items():
            anns = per_image.get(image_id, [])
            if anns or keep_empty:
                self._records.append((info, anns))
        self.image_ids: List[int] = [info["id"] for info, _ in self._records]

    # ----------------------------------------------------------------------------- validation
    def _err(self, what: str) -> ValueError:
        return ValueError(f"{self.ann_file}: {what}")

    def _check_categories(self, cats: Sequence[Any]) -> Dict[int, str]:
        out: Dict[int, str] = {}
        for cat in cats:
            if not isinstance(cat["id"], int) or "name" not in cat:
                raise self._err(f"category record {cat!r} needs an integer 'id' and a 'name'")
            if cat["id"] in out:
                raise self._err(f"duplicate category id {cat['id']}")
            out[cat["id"]] = str(cat["name"])
        if not out:
            raise self._err("'categories' is empty")
        return out

    def _check_images(self, records: Sequence[Any]) -> Dict[int, Dict[str, Any]]:
        images: Dict[int, Dict[str, Any]] = {}
        for rec in records:
            if not isinstance(rec["id"], int):
                raise self._err(f"image record {rec!r} needs an integer 'id'")
            iid = rec["id"]
            if iid in images:
                raise self._err(f"duplicate image id {iid}")
            if not isinstance(rec.get("file_name"), str):
                raise self._err(f"image id {iid}: missing string 'file_name'")
            for key in ("width", "height"):
                if not isinstance(rec.get(key), int) or rec[key] <= 0:
                    raise self._err(f"image id {iid} ({rec['file_name']}): '{key}' must be a positive integer")
            path = os.path.join(self.image_dir, rec["file_name"])
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{self.ann_file}: image id {iid}: image file {path!r} not found"
                )
            images[iid] = rec
        return images

    def _check_annotations(
        self, anns: Sequence[Any], images: Dict[int, Dict[str, Any]]
    ) -> Dict[int, List[Dict[str, Any]]]:
        """Validate every annotation; return the trainable (non-crowd) ones per image id."""
        per_image: Dict[int, List[Dict[str, Any]]] = {}
        seen_ids = set()
        for ann in anns:
            where = f"annotation id {ann['id']}"
            if ann["id"] in seen_ids:
                raise self._err(f"duplicate annotation id {ann['id']}")
            seen_ids.add(ann["id"])
            iid = ann.get("image_id")
            if iid not in images:
                raise self._err(f"{where}: image_id {iid!r} is not in 'images'")
            if ann.get("category_id") not in self._label_of:
                raise self._err(
                    f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' "
                    f"(known ids: {self.category_ids})"
                )
            info = images[iid]
            where = f"{where} (image id {iid}, {info['file_name']})"
            self._check_segmentation(ann.get("segmentation"), info, where)
            box = self._check_box(ann.get("bbox"), info, where)
            if ann.get("iscrowd", 0):
                continue
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # zero-area after clipping: nothing to learn
            per_image.setdefault(iid, []).append(ann)
        return per_image

    def _check_segmentation(self, seg: Any, info: Dict[str, Any], where: str) -> None:
        h, w = info["height"], info["width"]
        if isinstance(seg, list):
            if not seg:
                raise self._err(f"{where}: empty polygon list in 'segmentation'")
            for poly in seg:
                if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
                    raise self._err(f"{where}: polygon must be a flat list of numbers, got {poly!r:.80}")
                if len(poly) % 2 != 0:
                    raise self._err(f"{where}: polygon has an odd number of coordinates ({len(poly)})")
                if len(poly) < 6:
                    raise self._err(f"{where}: polygon has {len(poly) // 2} points; at least 3 are needed")
        elif isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, list) and len(size) == 2):
                raise self._err(f"{where}: RLE needs 'size' = [height, width], got {size!r}")
            if list(size) != [h, w]:
                raise self._err(f"{where}: RLE size {size} differs from the image size [{h}, {w}]")
            if isinstance(counts, list):
                if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                    raise self._err(
                        f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                        f"height*width = {h * w}"
                    )
            elif not isinstance(counts, (str, bytes)):
                raise self._err(f"{where}: RLE 'counts' must be a string or a list, got {type(counts).__name__}")
        else:
            raise self._err(f"{where}: 'segmentation' must be a polygon list or an RLE dict, got {seg!r:.80}")

    def _check_box(self, bbox: Any, info: Dict[str, Any], where: str) -> Tuple[float, float, float, float]:
        """Validate a COCO ``[x, y, w, h]`` box; return it clipped to the image as xyxy."""
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise self._err(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        x, y, bw, bh = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw < 0 or bh < 0:
            raise self._err(f"{where}: bbox {bbox} must be finite with non-negative width and height")
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
        """Read image ``index`` as ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]``."""
        info = self._records[index][0]
        path = self.image_path(index)
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
        except Exception as e:  # PIL raises several types for corrupt files
            raise RuntimeError(f"{self.ann_file}: image id {info['id']}: cannot read image {path!r}: {e}") from e
        if img.size != (info["width"], info["height"]):
            raise RuntimeError(
                f"{self.ann_file}: image id {info['id']}: {path!r} is {img.size[0]}x{img.size[1]} "
                f"but the annotation says {info['width']}x{info['height']}"
            )
        array = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)

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
        masks = _decode_segmentations([ann["segmentation"] for ann in anns], h, w)
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


def _to_rle(seg: Any, h: int, w: int) -> Dict[str, Any]:
    """A validated COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, h, w)
    return seg


def _decode_segmentations(segs: Sequence[Any], h: int, w: int) -> torch.Tensor:
    """Decode validated segmentations into ``(n, h, w)`` uint8 masks."""
    if not segs:
        return torch.zeros((0, h, w), dtype=torch.uint8)
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a NumPy 2 DeprecationWarning on every call; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        masks = mask_utils.decode([_to_rle(seg, h, w) for seg in segs])  # (h, w, n) Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
