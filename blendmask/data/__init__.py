"""Data: the COCO-format dataset, training transforms, loaders and the synthetic shapes set."""
from .coco import CocoInstanceDataset, load_coco_json, resolve_split
from .copy_paste import CopyPasteDataset
from .jitter import LargeScaleJitter
from .images import DecodedImage, ImageReading, decode_image, read_image
from .intensity import IntensityPolicy
from .loader import (
    InferenceSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
    collate,
)
from .shapes import SHAPE_CLASSES, make_shapes
from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "CocoInstanceDataset",
    "CopyPasteDataset",
    "LargeScaleJitter",
    "load_coco_json",
    "resolve_split",
    "read_image",
    "decode_image",
    "DecodedImage",
    "ImageReading",
    "IntensityPolicy",
    "InferenceSampler",
    "TrainingSampler",
    "build_test_loader",
    "build_train_loader",
    "collate",
    "SHAPE_CLASSES",
    "make_shapes",
    "Compose",
    "RandomHorizontalFlip",
]
