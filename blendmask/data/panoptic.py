"""COCO panoptic data, read directly: a JSON with ``segments_info`` plus PNG segment maps.

The format (cocodataset.org, "panoptic segmentation"): ``images`` as in COCO; ``annotations`` with one
record per image, ``{"image_id", "file_name" (the PNG), "segments_info": [{"id", "category_id",
"iscrowd", "bbox", "area"}, ...]}``; ``categories`` with ``isthing`` 1 (things) or 0 (stuff). A PNG
stores segment ids as RGB: ``id = R + 256 G + 256^2 B``; id 0 is void (unlabeled).

``CocoPanopticDataset(json_file, image_dir, png_dir)[i]`` returns ``(image, target)``:

- ``image``: ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]`` (read as the instance dataset does);
- ``target``: the instance targets of the thing segments, as :class:`~blendmask.data.CocoInstanceDataset`'s
  (``boxes (n, 4)`` xyxy, the tight boxes of the masks; ``labels (n,)`` in ``[0, num_classes)`` over the
  thing categories; ``masks (n, H, W)`` uint8; crowd segments left out), plus ``sem_seg (H, W)`` int64,
  the semantic target computed on the fly as detectron2's "panoptic_separated" data: 0 for every thing
  pixel (crowd included), ``1 + k`` for the ``k``-th stuff category (increasing ids), ``ignore_value``
  (255) for void; and ``image_id``.

Checks: the JSON, the categories, the records and the files exist at construction (``ValueError`` /
``FileNotFoundError`` naming the file and the record); the PNG content when a sample is loaded
(``ValueError`` naming the PNG and the segment: a segment id of ``segments_info`` absent from the PNG,
an id in the PNG that ``segments_info`` lacks, a PNG whose size differs from the image's). Giving an
instance JSON where panoptic data are expected (or the reverse, see :func:`detect_format`) is a
one-line ``ValueError`` saying which format was found.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .coco import check_json_data_file
from .coco_index import json_file_format, load_panoptic_json
from .json_files import coco_json_format
from .images import ImageReading, read_image
from .paths import contained_path

__all__ = ["CocoPanopticDataset", "PanopticFormatError", "detect_format", "resolve_panoptic_split",
           "rgb_to_id", "id_to_rgb", "VOID"]

VOID = 0
Target = Dict[str, Any]
Transform = Callable[[torch.Tensor, Target], Tuple[torch.Tensor, Target]]


class PanopticFormatError(ValueError):
    """A data file is of the other COCO format (instances where panoptic is expected, or the reverse)."""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H, W)`` int64 segment ids (``R + 256 G + 256^2 B``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``(H, W)`` int segment ids -> ``(H, W, 3)`` uint8 (inverse of :func:`rgb_to_id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


def detect_format(data: str | os.PathLike) -> str:
    """``"panoptic"`` or ``"instances"`` for a ``--data`` argument (a directory or a JSON file).

    A directory is panoptic when it holds ``annotations/panoptic_train.json`` or
    ``annotations/panoptic_val.json``; a JSON file by its records (``segments_info`` vs
    ``segmentation``/``bbox``; a file without annotations by its categories' ``isthing``).
    """
    data = os.fspath(data)
    if os.path.isdir(data):
        panoptic = [os.path.join(data, "annotations", f"panoptic_{s}.json") for s in ("train", "val")]
        return "panoptic" if any(os.path.isfile(p) for p in panoptic) else "instances"
    if not os.path.isfile(data):
        raise FileNotFoundError(f"--data {data!r} is neither a directory nor a COCO JSON file")
    check_json_data_file(data)
    return json_file_format(data)


def resolve_panoptic_split(data: str | os.PathLike, split: str) -> Tuple[str, str, str]:
    """``(json_file, image_dir, png_dir)`` of ``split`` ("train" or "val") of a panoptic ``--data``.

    - a directory: ``DIR/annotations/panoptic_{split}.json``, PNGs in ``DIR/annotations/panoptic_{split}/``,
      images in ``DIR/{split}/`` (the layout ``blendmask make-shapes --panoptic`` writes);
    - a JSON file ``.../annotations/panoptic_NAME.json`` (COCO 2017: ``panoptic_val2017.json``): PNGs in
      the folder of the same stem next to it, images in ``../NAME/`` (else ``images/`` next to the JSON).

    Raises ``FileNotFoundError`` naming the paths tried.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = os.fspath(data)
    if os.path.isdir(data):
        json_file = os.path.join(data, "annotations", f"panoptic_{split}.json")
        if not os.path.isfile(json_file):
            instances = os.path.join(data, "annotations", f"instances_{split}.json")
            found = f"; it holds COCO instance annotations ({instances})" if os.path.isfile(instances) else ""
            raise FileNotFoundError(f"data directory {data!r} has no panoptic {split} annotations: expected "
                                    f"{json_file!r}{found}")
        folders = (os.path.join(data, split), os.path.join(data, "annotations", f"panoptic_{split}"))
    else:
        if not os.path.isfile(data):
            raise FileNotFoundError(f"--data {data!r} is neither a directory nor a COCO panoptic JSON file")
        json_file = data
        json_dir = os.path.dirname(os.path.abspath(data))
        stem = os.path.splitext(os.path.basename(data))[0]
        name = stem[len("panoptic_"):] if stem.startswith("panoptic_") else stem
        image_dir = os.path.join(os.path.dirname(json_dir), name)
        if not os.path.isdir(image_dir):
            image_dir = os.path.join(json_dir, "images")
        folders = (image_dir, os.path.join(json_dir, stem))
    for folder, what in zip(folders, ("image", "PNG")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"panoptic {split} data of {data!r}: {what} directory {folder!r} not found")
    return json_file, folders[0], folders[1]


class CocoPanopticDataset(torch.utils.data.Dataset):
    """A COCO panoptic JSON, its image directory and its PNG directory (see the module docstring).

    Args:
        json_file: the panoptic JSON.
        image_dir: directory of the images (``images[].file_name``).
        png_dir: directory of the PNG segment maps (``annotations[].file_name``).
        transforms: optional ``(image, target) -> (image, target)`` (they must handle ``sem_seg``:
            :mod:`blendmask.data.transforms` does).
        ignore_value: semantic label of void pixels (255).
        reading: how image files are read (as :class:`~blendmask.data.CocoInstanceDataset`'s).
        allow_outside: accept ``file_name``s that lead outside ``image_dir`` / ``png_dir`` (refused
            by default, see :mod:`blendmask.data.paths`).

    Attributes:
        category_ids / class_names / num_classes: the thing categories (labels ``0..num_classes-1``).
        stuff_category_ids / stuff_names / num_stuff_classes: the stuff categories (semantic ``1..S``).
        categories: ``{category id: record}`` of all categories; image_ids; json_file, image_dir, png_dir.
    """

    def __init__(self, json_file: str | os.PathLike, image_dir: str | os.PathLike, png_dir: str | os.PathLike, *,
                 transforms: Optional[Transform] = None, ignore_value: int = 255,
                 reading: ImageReading = ImageReading(), allow_outside: bool = False) -> None:
        self.json_file, self.image_dir, self.png_dir = os.fspath(json_file), os.fspath(image_dir), os.fspath(png_dir)
        self.allow_outside = allow_outside
        self.transforms = transforms
        self.reading = reading
        self.ignore_value = int(ignore_value)
        data = load_panoptic_json(self.json_file)  # shared with the format check: read only
        found = coco_json_format(data)
        if found == "instances":
            raise PanopticFormatError(f"{self.json_file} is a COCO instances file (annotations with 'segmentation'/"
                                      "'bbox'), but COCO panoptic data ('segments_info' + PNGs) are expected here")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{self.json_file}: missing or non-list top-level key {key!r}")
        for folder, what in ((self.image_dir, "image"), (self.png_dir, "PNG")):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"{what} directory not found: {folder!r} (for {self.json_file})")
        self.categories = self._check_categories(data["categories"])
        things = sorted(c for c, rec in self.categories.items() if rec["isthing"])
        stuff = sorted(c for c, rec in self.categories.items() if not rec["isthing"])
        if not things or not stuff:
            raise ValueError(f"{self.json_file}: panoptic BlendMask needs thing and stuff categories, found "
                             f"{len(things)} thing and {len(stuff)} stuff categories")
        self.category_ids: List[int] = things
        self.class_names: List[str] = [self.categories[c]["name"] for c in things]
        self.num_classes = len(things)
        self.stuff_category_ids: List[int] = stuff
        self.stuff_names: List[str] = [self.categories[c]["name"] for c in stuff]
        self.num_stuff_classes = len(stuff)
        self._label_of = {c: i for i, c in enumerate(things)}
        self._semantic_of = {c: 0 for c in things}
        self._semantic_of.update({c: 1 + i for i, c in enumerate(stuff)})
        images = self._check_images(data["images"])
        self._records = self._check_annotations(data["annotations"], images)
        self.image_ids: List[int] = [info["id"] for info, _ in self._records]

    # ----------------------------------------------------------------------------- validation
    def _err(self, what: str) -> ValueError:
        return ValueError(f"{self.json_file}: {what}")

    def _check_categories(self, records: Sequence[Any]) -> Dict[int, Dict[str, Any]]:
        out: Dict[int, Dict[str, Any]] = {}
        for rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), int) or "name" not in rec:
                raise self._err(f"category record {rec!r:.120} needs an integer 'id' and a 'name'")
            if rec.get("isthing") not in (0, 1, True, False):
                raise self._err(f"category id {rec['id']} ({rec['name']}): 'isthing' must be 0 or 1, "
                                f"got {rec.get('isthing')!r}")
            if rec["id"] in out:
                raise self._err(f"duplicate category id {rec['id']}")
            out[rec["id"]] = {"name": str(rec["name"]), "isthing": bool(rec["isthing"])}
        if not out:
            raise self._err("'categories' is empty")
        return out

    def _check_images(self, records: Sequence[Any]) -> Dict[int, Dict[str, Any]]:
        images: Dict[int, Dict[str, Any]] = {}
        for rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), int):
                raise self._err(f"image record {rec!r:.120} needs an integer 'id'")
            iid = rec["id"]
            if iid in images:
                raise self._err(f"duplicate image id {iid}")
            if not isinstance(rec.get("file_name"), str):
                raise self._err(f"image id {iid}: missing string 'file_name'")
            for key in ("width", "height"):
                if not isinstance(rec.get(key), int) or rec[key] <= 0:
                    raise self._err(f"image id {iid} ({rec['file_name']}): '{key}' must be a positive integer")
            path = contained_path(self.image_dir, rec["file_name"], where=f"{self.json_file}: image id {iid}",
                                  allow_outside=self.allow_outside)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{self.json_file}: image id {iid}: image file {path!r} not found")
            images[iid] = rec
        return images

    def _check_annotations(self, records: Sequence[Any], images: Dict[int, Dict[str, Any]]):
        by_image: Dict[int, Dict[str, Any]] = {}
        for rec in records:
            if not isinstance(rec, dict) or "image_id" not in rec:
                raise self._err(f"annotation record {rec!r:.120} lacks 'image_id'")
            iid = rec["image_id"]
            where = f"annotation of image id {iid!r}"
            if iid not in images:
                raise self._err(f"{where}: image_id is not in 'images'")
            if iid in by_image:
                raise self._err(f"{where}: more than one annotation record for this image")
            if not isinstance(rec.get("file_name"), str):
                raise self._err(f"{where}: missing string 'file_name' (the PNG)")
            png = contained_path(self.png_dir, rec["file_name"], where=f"{self.json_file}: {where}",
                                 what="PNG directory", allow_outside=self.allow_outside)
            if not os.path.isfile(png):
                raise FileNotFoundError(f"{self.json_file}: {where}: PNG {png!r} not found")
            segments = rec.get("segments_info")
            if not isinstance(segments, list):
                raise self._err(f"{where}: 'segments_info' must be a list")
            seen = set()
            for seg in segments:
                if not isinstance(seg, dict) or not isinstance(seg.get("id"), int) or seg["id"] <= 0:
                    raise self._err(f"{where} ({rec['file_name']}): segment {seg!r:.80} needs a positive integer 'id'")
                if seg["id"] in seen:
                    raise self._err(f"{where} ({rec['file_name']}): duplicate segment id {seg['id']}")
                seen.add(seg["id"])
                if seg.get("category_id") not in self.categories:
                    raise self._err(f"{where} ({rec['file_name']}): segment id {seg['id']}: category_id "
                                    f"{seg.get('category_id')!r} is not in 'categories' (known ids: "
                                    f"{sorted(self.categories)})")
            by_image[iid] = rec
        # Images without a panoptic record are all void: kept (empty targets, ignored semantics).
        return [(info, by_image.get(iid, {"file_name": None, "segments_info": []})) for iid, info in images.items()]

    # ----------------------------------------------------------------------------- loading
    def __len__(self) -> int:
        return len(self._records)

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, self._records[index][0]["file_name"])

    def png_path(self, index: int) -> Optional[str]:
        name = self._records[index][1]["file_name"]
        return os.path.join(self.png_dir, name) if name is not None else None

    def load_image(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``Tensor(3, H, W)`` float32 RGB in [0, 1], read as the instance dataset
        does (:func:`blendmask.data.read_image`); a wrong size or an unreadable file is a ``ValueError``
        naming the JSON file and image id."""
        info = self._records[index][0]
        return read_image(self.image_path(index), reading=self.reading, expected_size=(info["width"], info["height"]),
                          context=f"{self.json_file}: image id {info['id']}: ")

    def segments(self, index: int) -> List[Dict[str, Any]]:
        """The ``segments_info`` of dataset ``index``."""
        return list(self._records[index][1]["segments_info"])

    def load_id_map(self, index: int) -> np.ndarray:
        """The checked ``(H, W)`` int64 segment-id map of dataset ``index`` (zeros when it has no PNG)."""
        info, rec = self._records[index]
        h, w = info["height"], info["width"]
        png = self.png_path(index)
        if png is None:
            return np.zeros((h, w), dtype=np.int64)
        try:
            with Image.open(png) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception as e:  # PIL raises several types for corrupt files
            raise ValueError(f"{self.json_file}: image id {info['id']}: cannot read PNG {png!r}: {e}") from e
        if array.shape[:2] != (h, w):
            raise ValueError(f"{self.json_file}: image id {info['id']}: PNG {png!r} is {array.shape[1]}x"
                             f"{array.shape[0]} but the image is {w}x{h}")
        ids = rgb_to_id(array)
        present = set(np.unique(ids).tolist()) - {VOID}
        listed = {seg["id"] for seg in rec["segments_info"]}
        for seg in rec["segments_info"]:
            if seg["id"] not in present:
                raise ValueError(f"{png}: segment id {seg['id']} (category {seg['category_id']}) of segments_info "
                                 f"is not in the PNG (image id {info['id']})")
        extra = sorted(present - listed)
        if extra:
            raise ValueError(f"{png}: segment id {extra[0]} is in the PNG but not in segments_info "
                             f"(image id {info['id']}; listed ids {sorted(listed)})")
        return ids

    def load_target(self, index: int) -> Target:
        """The instance + semantic target of dataset ``index`` (no transforms applied)."""
        info, rec = self._records[index]
        ids = torch.from_numpy(self.load_id_map(index))
        sem = torch.full(ids.shape, self.ignore_value, dtype=torch.int64)
        masks, labels = [], []
        for seg in rec["segments_info"]:
            mask = ids == seg["id"]
            sem[mask] = self._semantic_of[seg["category_id"]]
            if self.categories[seg["category_id"]]["isthing"] and not seg.get("iscrowd", 0):
                masks.append(mask)
                labels.append(self._label_of[seg["category_id"]])
        h, w = ids.shape
        mask_tensor = torch.stack(masks).to(torch.uint8) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        return {"boxes": _tight_boxes(mask_tensor), "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": mask_tensor, "sem_seg": sem, "image_id": int(info["id"])}

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Target]:
        image, target = self.load_image(index), self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(json_file={self.json_file!r}, images={len(self)}, things={self.class_names}, "
                f"stuff={self.stuff_names})")


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(n, 4)`` float32 xyxy pixel-edge boxes of non-empty ``(n, H, W)`` masks."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for i, mask in enumerate(masks):
        ys = torch.nonzero(mask.any(dim=1)).flatten()
        xs = torch.nonzero(mask.any(dim=0)).flatten()
        boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes
