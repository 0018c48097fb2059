"""The one image reader of the package: any PIL-readable file as ``Tensor(3, H, W)`` float32 in ``[0, 1]``.

Every mode is scaled by its **real range**, never by clipping to 8 bits (Pillow's
``convert("RGB")`` turns every 16-bit value above 255 into 255, which is how a 16-bit PNG
used to load as an all-white image):

==================================  =============================================================
mode                                rule
==================================  =============================================================
``1`` (bilevel)                     0 or 1
``L``, ``LA``, ``La`` (8-bit gray)  ``/ 255`` (alpha dropped)
``I;16``, ``I;16B``, ``I;16L``...   ``/ 65535`` (a fixed scale, so all images of a data set keep
                                    the same intensity scale; 12-bit camera data appear dark)
``I`` (32-bit signed int)           ``/ 65535`` when every value is in ``[0, 65535]`` (how some
                                    readers deliver 16-bit files), else min-max to ``[0, 1]``
``F`` (32-bit float, e.g. TIFF)     as is when every value is in ``[0, 1]``, else min-max to
                                    ``[0, 1]``; NaN or infinite pixels are an error
anything else (``RGB``, ``RGBA``,   Pillow's ``convert("RGB")`` (alpha dropped, palette
``P``, ``PA``, ``CMYK``, ``YCbCr``) expanded), ``/ 255``
==================================  =============================================================

Min-max of a constant image gives zeros. Gray images are repeated over the three channels. EXIF
orientation is applied first (as detectron2 does). A missing file is a ``FileNotFoundError``;
anything else that goes wrong (not an image, truncated, a decompression bomb by Pillow's
``MAX_IMAGE_PIXELS`` rule, NaN pixels, a size other than the expected one) is a ``ValueError``
whose one-line message names the file.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["read_image", "image_to_array", "uint8_to_unit_float"]

_UINT16_MAX = 65535.0


def read_image(path: str | os.PathLike, *, expected_size: Optional[Tuple[int, int]] = None,
               context: str = "", keep_uint8: bool = False) -> torch.Tensor:
    """Read an image file as ``Tensor(3, H, W)`` float32 RGB in ``[0, 1]`` (rules in the module doc).

    Args:
        path: the image file.
        expected_size: ``(width, height)`` the image must have after EXIF orientation; a file of
            another size is refused before its pixels are decoded.
        context: prefix of every error message (e.g. ``"ann.json: image id 3: "``).
        keep_uint8: an 8-bit image (every mode whose rule is ``/ 255``) comes back as
            ``Tensor(3, H, W)`` uint8 instead, a quarter of the bytes; :func:`uint8_to_unit_float`
            gives exactly the float32 image later (e.g. on the training device). Other modes are
            float32 as usual.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{context}image not found: {path!r}")
    try:
        with Image.open(path) as img:
            if expected_size is not None and tuple(img.size) not in (expected_size, expected_size[::-1]):
                raise _SizeError(img.size)
            img = ImageOps.exif_transpose(img)  # loads the pixels (truncated files fail here)
            img.load()
            array = _uint8_array(img) if keep_uint8 else None
            if array is None:
                array = image_to_array(img)
    except _SizeError as e:
        raise ValueError(f"{context}{path!r} is {e.size[0]}x{e.size[1]} but {expected_size[0]}x"
                         f"{expected_size[1]} was expected") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        message = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{context}cannot read image {path!r}: {message}") from e
    if expected_size is not None and (array.shape[1], array.shape[0]) != tuple(expected_size):
        raise ValueError(f"{context}{path!r} is {array.shape[1]}x{array.shape[0]} after EXIF orientation "
                         f"but {expected_size[0]}x{expected_size[1]} was expected")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


_UINT8_GRAY_MODES = ("L", "LA", "La")


def _uint8_array(img: Image.Image) -> Optional[np.ndarray]:
    """The ``(H, W, 3)`` uint8 pixels of an 8-bit image (the modes scaled by ``/ 255``), else None."""
    mode = img.mode
    if mode == "1" or mode.startswith("I") or mode == "F":
        return None
    if mode in _UINT8_GRAY_MODES:
        return np.repeat(np.asarray(img.getchannel(0), dtype=np.uint8)[:, :, None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def uint8_to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image as float32 in ``[0, 1]`` (``/ 255``, the same values as :func:`read_image`'s
    float path); a float image is returned as is."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


class _SizeError(Exception):
    def __init__(self, size: Tuple[int, int]) -> None:
        super().__init__(size)
        self.size = size


def image_to_array(img: Image.Image) -> np.ndarray:
    """A loaded PIL image as an ``(H, W, 3)`` float32 array in ``[0, 1]`` (rules in the module doc).

    Raises ``ValueError`` for a float image with NaN or infinite pixels.
    """
    mode = img.mode
    if mode == "1":
        gray = np.asarray(img, dtype=np.float32)
    elif mode in ("L", "LA", "La"):
        gray = np.asarray(img.getchannel(0), dtype=np.float32) / 255.0
    elif mode.startswith("I;16"):
        gray = np.asarray(img).astype(np.float32) / _UINT16_MAX
    elif mode == "I":
        values = np.asarray(img)
        if values.size and values.min() >= 0 and values.max() <= _UINT16_MAX:
            gray = values.astype(np.float32) / _UINT16_MAX
        else:
            gray = _min_max(values.astype(np.float64))
    elif mode == "F":
        values = np.asarray(img, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"float image has {int((~np.isfinite(values)).sum())} NaN or infinite pixels")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            gray = _min_max(values.astype(np.float64))
        else:
            gray = values
    else:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(np.ascontiguousarray(gray, dtype=np.float32)[:, :, None], 3, axis=2)


def _min_max(values: np.ndarray) -> np.ndarray:
    """``values`` scaled linearly so min -> 0 and max -> 1 (zeros when constant), float32."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
