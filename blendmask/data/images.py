"""The one image reader of the package: an image file as its native pixels, then as
``Tensor(3, H, W)`` float32 in ``[0, 1]`` under the intensity policy.

Reading happens in two steps, so that a large image stays in its own dtype (``uint8`` for an
8-bit image) until a region of it is needed in float (a tile, in tiled prediction):

1. :func:`decode_image` decodes the file to a :class:`DecodedImage`: ``pixels (H, W, C)`` in the
   file's own dtype with ``C`` 1 (gray) or 3 (RGB), and the intensity bounds of the image under
   the policy (:mod:`blendmask.data.intensity`, computed once over the whole image);
2. :meth:`DecodedImage.to_tensor` maps the whole image or a region to float ``[0, 1]``.

:func:`read_image` does both. Decoding, by file kind:

==================================  =============================================================
file / Pillow mode                  pixels
==================================  =============================================================
TIFF (gray or RGB: multi-page,      ``tifffile``: page ``input.image_page``, its samples as
multi-channel, 16-bit, float)       channels (other TIFFs, e.g. palette, as Pillow's modes)
``1`` (bilevel)                     bool
``L``, ``LA``, ``La`` (8-bit gray)  uint8 (alpha dropped)
``I;16``, ``I;16B``, ``I;16L``...   uint16
``I`` (32-bit signed int)           int32
``F`` (32-bit float)                float32; NaN or infinite pixels are an error
anything else (``RGB``, ``RGBA``,   Pillow's ``convert("RGB")`` (alpha dropped, palette
``P``, ``PA``, ``CMYK``, ``YCbCr``) expanded), uint8
==================================  =============================================================

``input.image_channels`` picks channels: one index (shown as gray) or three (as RGB); left empty,
an image of 1 or 3 channels is taken as it is, of 4 channels its first three (RGB of RGBA), and
any other count is an error that names the setting. Gray images are repeated over the three
channels. EXIF orientation is applied to Pillow images (as detectron2 does).

A missing file is a ``FileNotFoundError``; anything else that goes wrong (not an image, a corrupt
or truncated file, a page or channel that does not exist, NaN pixels, a size other than the
expected one, more pixels than ``input.max_image_pixels``, the decompression-bomb guard) is a
``ValueError`` whose one-line message names the file.
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

from ..config import InputConfig
from .intensity import IntensityPolicy, intensity_bounds, to_unit_range

__all__ = ["ImageReading", "DecodedImage", "decode_image", "read_image", "check_image_header", "is_tiff_file",
           "uint8_to_unit_float"]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageReading:
    """How image files are read: the config's ``input.intensity*``, ``input.image_page``,
    ``input.image_channels`` and ``input.max_image_pixels`` (see the module docstring).

    Args:
        intensity: the intensity policy of images deeper than 8 bits.
        page: the page of a multi-page TIFF (0: the first).
        channels: channel indices to keep, 1 or 3 of them; empty: as the module docstring says.
        max_pixels: files with more pixels are refused before they are decoded.
    """

    intensity: IntensityPolicy = field(default_factory=IntensityPolicy)
    page: int = 0
    channels: Tuple[int, ...] = ()
    max_pixels: int = InputConfig.max_image_pixels

    def __post_init__(self) -> None:
        if self.page < 0:
            raise ValueError(f"input.image_page must be >= 0, got {self.page}")
        if len(self.channels) not in (0, 1, 3) or any(c < 0 for c in self.channels):
            raise ValueError("input.image_channels must be empty or 1 or 3 channel indices >= 0, "
                             f"got {tuple(self.channels)}")
        if self.max_pixels < 1:
            raise ValueError(f"input.max_image_pixels must be >= 1, got {self.max_pixels}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    @classmethod
    def from_config(cls, input_cfg) -> "ImageReading":
        """The reading rules of a config's ``input`` section."""
        return cls(intensity=IntensityPolicy.from_config(input_cfg), page=input_cfg.image_page,
                   channels=tuple(input_cfg.image_channels), max_pixels=input_cfg.max_image_pixels)

    def to_dict(self) -> dict:
        """JSON-friendly form (the exported model's metadata)."""
        return {"intensity": self.intensity.to_dict(), "page": self.page, "channels": list(self.channels),
                "max_pixels": self.max_pixels}

    @classmethod
    def from_dict(cls, data: dict) -> "ImageReading":
        """Inverse of :meth:`to_dict`."""
        policy = data["intensity"]
        return cls(intensity=IntensityPolicy(mode=policy["mode"], percentiles=tuple(policy["percentiles"]),
                                             window=tuple(policy["window"])),
                   page=data["page"], channels=tuple(data["channels"]), max_pixels=data["max_pixels"])


@dataclass
class DecodedImage:
    """An image in its own dtype: ``pixels (H, W, C)``, C 1 or 3, and the intensity ``bounds``
    ``(low, high)`` that map to 0 and 1."""

    pixels: np.ndarray
    bounds: Tuple[float, float]

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_8bit(self) -> bool:
        """Whether the pixels are uint8 mapped by ``/ 255`` (the rule of every 8-bit image)."""
        return self.pixels.dtype == np.uint8

    def to_uint8_tensor(self) -> torch.Tensor:
        """The 8-bit image as ``Tensor(3, H, W)`` uint8; :func:`uint8_to_unit_float` gives the
        same values as :meth:`to_tensor`."""
        if not self.is_8bit:
            raise ValueError("to_uint8_tensor: the image is not 8-bit")
        pixels = self.pixels if self.pixels.shape[2] == 3 else np.repeat(self.pixels, 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()

    def to_picture(self, y0: int = 0, y1: Optional[int] = None, x0: int = 0, x1: Optional[int] = None) -> Image.Image:
        """Rows ``y0:y1`` and columns ``x0:x1`` (default: all) as an RGB PIL picture, for drawing:
        8-bit pixels as they are (no float copy), deeper ones mapped to ``[0, 1]`` by the bounds
        and rounded to 8 bits."""
        region = self.pixels[y0:y1, x0:x1]
        if region.dtype != np.uint8:
            region = (to_unit_range(region, self.bounds) * 255.0 + 0.5).astype(np.uint8)
        if region.shape[2] == 1:
            region = np.repeat(region, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(region), mode="RGB")

    def to_tensor(self, y0: int = 0, y1: Optional[int] = None, x0: int = 0, x1: Optional[int] = None) -> torch.Tensor:
        """Rows ``y0:y1`` and columns ``x0:x1`` (default: all) as ``Tensor(3, h, w)`` float32 in ``[0, 1]``."""
        region = to_unit_range(self.pixels[y0:y1, x0:x1], self.bounds)
        if region.shape[2] == 1:
            region = np.repeat(region, 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike, *, reading: ImageReading = ImageReading(),
               expected_size: Optional[Tuple[int, int]] = None, context: str = "",
               keep_uint8: bool = False) -> torch.Tensor:
    """Read an image file as ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]`` (rules in the module doc).

    Args:
        path: the image file.
        reading: page, channels, pixel limit and intensity policy.
        expected_size: ``(width, height)`` the image must have after EXIF orientation; a file of
            another size is refused before its pixels are decoded.
        context: prefix of every error message (e.g. ``"ann.json: image id 3: "``).
        keep_uint8: an 8-bit image comes back as ``Tensor(3, H, W)`` uint8 (a quarter of the bytes
            through a loader worker's queue; :func:`uint8_to_unit_float` makes the float image on
            the training device); deeper images are float32 as always.
    """
    decoded = decode_image(path, reading=reading, expected_size=expected_size, context=context)
    return decoded.to_uint8_tensor() if keep_uint8 and decoded.is_8bit else decoded.to_tensor()


def uint8_to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image as float32 in ``[0, 1]`` (``/ 255``, the same values as :func:`read_image`'s
    float path); a float image is returned as is."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


def decode_image(path: str | os.PathLike, *, reading: ImageReading = ImageReading(),
                 expected_size: Optional[Tuple[int, int]] = None, context: str = "") -> DecodedImage:
    """Decode an image file to its native pixels and intensity bounds (arguments as :func:`read_image`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{context}image not found: {path!r}")
    try:
        pixels = (_decode_tiff if is_tiff_file(path) else _decode_pil)(path, reading, expected_size)
        pixels = _select_channels(pixels, reading.channels)
        bounds = intensity_bounds(pixels, reading.intensity)
    except _ReadError as e:
        raise ValueError(f"{context}{path!r} {e}") from None
    except Exception as e:  # the decoders raise many types (OSError, SyntaxError, ValueError, ...) for bad files
        message = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{context}cannot read image {path!r}: {message}") from e
    if expected_size is not None and (pixels.shape[1], pixels.shape[0]) != tuple(expected_size):
        raise ValueError(f"{context}{path!r} is {pixels.shape[1]}x{pixels.shape[0]} after EXIF orientation "
                         f"but {expected_size[0]}x{expected_size[1]} was expected")
    return DecodedImage(pixels=pixels, bounds=bounds)


def check_image_header(path: str | os.PathLike, *, reading: ImageReading = ImageReading(), context: str = "") -> None:
    """Refuse from its header alone (nothing decoded), in one line naming it, a file that is not an
    image or has more pixels than ``reading.max_pixels``: the checks :func:`decode_image` makes
    first, cheap enough to run over every input before any work. TIFF files pass here (tifffile,
    which :func:`decode_image` uses for them, opens TIFFs that Pillow cannot)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{context}image not found: {path!r}")
    if is_tiff_file(path):
        return
    try:
        with _open_pil(path) as img:
            _check_size(img.size[0], img.size[1], reading, None)
    except _ReadError as e:
        raise ValueError(f"{context}{path!r} {e}") from None
    except Exception as e:  # Pillow raises many types for a file that is not an image
        message = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{context}cannot read image {path!r}: {message}") from e


def is_tiff_file(path: str | os.PathLike) -> bool:
    """Whether the file starts with a TIFF (or BigTIFF) signature."""
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


class _ReadError(Exception):
    """A refusal whose message follows the file name."""


def _check_size(width: int, height: int, reading: ImageReading, expected_size: Optional[Tuple[int, int]]) -> None:
    if width * height > reading.max_pixels:
        raise _ReadError(f"has {width}x{height} = {width * height} pixels, over the limit of {reading.max_pixels} "
                         "(a decompression bomb guard): raise input.max_image_pixels to read it")
    if expected_size is not None and (width, height) not in (tuple(expected_size), tuple(expected_size)[::-1]):
        raise _ReadError(f"is {width}x{height} but {expected_size[0]}x{expected_size[1]} was expected")


def _open_pil(path: str) -> Image.Image:
    """``Image.open`` (the header only) with Pillow's own pixel limit off: ours applies instead."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _decode_pil(path: str, reading: ImageReading, expected_size) -> np.ndarray:
    with _open_pil(path) as img:
        _check_size(img.size[0], img.size[1], reading, expected_size)
        frames = getattr(img, "n_frames", 1)
        if reading.page >= frames:
            raise _ReadError(f"has {frames} page(s): input.image_page={reading.page} does not exist")
        if reading.page:
            img.seek(reading.page)
        img = ImageOps.exif_transpose(img)  # loads the pixels (truncated files fail here)
        img.load()
        return _pil_pixels(img)


def _pil_pixels(img: Image.Image) -> np.ndarray:
    """A loaded PIL image's pixels as ``(H, W, C)`` in the dtype of its mode (module docstring)."""
    mode = img.mode
    if mode == "1":
        gray = np.asarray(img, dtype=np.bool_)
    elif mode in ("L", "LA", "La"):
        gray = np.asarray(img.getchannel(0), dtype=np.uint8)
    elif mode.startswith("I;16"):
        gray = np.asarray(img).astype(np.uint16)
    elif mode == "I":
        gray = np.asarray(img, dtype=np.int32)
    elif mode == "F":
        gray = np.asarray(img, dtype=np.float32)
    else:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    return gray[:, :, None]


def _decode_tiff(path: str, reading: ImageReading, expected_size) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        if reading.page >= len(pages):
            raise _ReadError(f"has {len(pages)} page(s): input.image_page={reading.page} does not exist")
        page = pages[reading.page]
        if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            return _decode_pil(path, reading, expected_size)  # palette, inverted gray, CMYK...: Pillow's rules
        _check_size(int(page.imagewidth), int(page.imagelength), reading, expected_size)
        axes = page.axes
        if set(axes) - set("YXS") or not {"Y", "X"} <= set(axes):
            raise _ReadError(f"page {reading.page} has axes {axes!r}; only 2-D pages (with samples) are read")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tifffile reports some corrupt data by a warning
            pixels = page.asarray()
    order = [axes.index(a) for a in "YX"] + ([axes.index("S")] if "S" in axes else [])
    pixels = np.transpose(pixels, order)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype.byteorder not in ("=", "|"):
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    if pixels.dtype.kind == "f" and pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    return pixels


def _select_channels(pixels: np.ndarray, channels: Tuple[int, ...]) -> np.ndarray:
    count = pixels.shape[2]
    if channels:
        missing = [c for c in channels if c >= count]
        if missing:
            raise _ReadError(f"has {count} channel(s): input.image_channels={list(channels)} names channel "
                             f"{missing[0]}, which does not exist")
        return pixels[:, :, list(channels)]
    if count in (1, 3):
        return pixels
    if count == 4:
        return pixels[:, :, :3]
    raise _ReadError(f"has {count} channels: choose 1 or 3 of them with input.image_channels")
