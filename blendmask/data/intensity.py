"""The intensity policy: how the pixel values of an image deeper than 8 bits map to ``[0, 1]``.

8-bit images (and bilevel ones) are always divided by 255 (by 1): the policy never touches them,
so models trained on 8-bit data see exactly the inputs they always did. For deeper integer images
(16-bit, 32-bit) and float images, ``input.intensity`` chooses the bounds ``(low, high)`` that map
linearly to 0 and 1 (values outside are clipped):

================  ================================================================================
policy            bounds
================  ================================================================================
``"range"``       the container's range: ``(0, 65535)`` for 16 bits; 32-bit integers in
                  ``[0, 65535]`` likewise, else the image's min and max; floats as they are when
                  in ``[0, 1]``, else the image's min and max
``"percentile"``  the image's own ``input.intensity_percentiles`` (low, high), over every selected
                  channel together (the default, ``(1, 99.8)``, is the normalisation of the
                  CSBDeep/StarDist microscopy tools)
``"window"``      the fixed ``input.intensity_window`` (low, high), the same for every image
================  ================================================================================

The default is ``"percentile"``: a 12-bit camera frame in a 16-bit container (values 0-4095)
fills ``[0, 1]`` instead of ``[0, 0.0625]``, and a single hot pixel does not set the scale. Its
price is that two images of one data set are scaled by their own content; a data set whose
absolute intensities matter takes ``"window"`` (or ``"range"``, the package's rule before the
policy existed). The bounds of an image are computed once over the whole image, so the tiles of
a tiled prediction share one scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..config import InputConfig

__all__ = ["INTENSITY_POLICIES", "IntensityPolicy", "intensity_bounds", "to_unit_range"]

INTENSITY_POLICIES = ("range", "percentile", "window")
_UINT16_MAX = 65535.0


@dataclass(frozen=True)
class IntensityPolicy:
    """``input.intensity`` and its parameters (see the module docstring).

    Args:
        mode: ``"range"``, ``"percentile"`` or ``"window"``.
        percentiles: ``(low, high)`` percentiles in ``[0, 100]``, low < high (``"percentile"``).
        window: ``(low, high)`` pixel values, low < high (``"window"``).
    """

    mode: str = InputConfig.intensity
    percentiles: Tuple[float, float] = InputConfig.intensity_percentiles
    window: Tuple[float, float] = InputConfig.intensity_window

    def __post_init__(self) -> None:
        if self.mode not in INTENSITY_POLICIES:
            raise ValueError(f"input.intensity must be one of {list(INTENSITY_POLICIES)}, got {self.mode!r}")
        if len(self.percentiles) != 2 or not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100.0:
            raise ValueError("input.intensity_percentiles must be (low, high) with 0 <= low < high <= 100, "
                             f"got {tuple(self.percentiles)}")
        if len(self.window) != 2 or not (np.isfinite(self.window).all() and self.window[0] < self.window[1]):
            raise ValueError(f"input.intensity_window must be (low, high) with low < high, got {tuple(self.window)}")
        object.__setattr__(self, "percentiles", tuple(float(v) for v in self.percentiles))
        object.__setattr__(self, "window", tuple(float(v) for v in self.window))

    @classmethod
    def from_config(cls, input_cfg) -> "IntensityPolicy":
        """The policy of a config's ``input`` section."""
        return cls(mode=input_cfg.intensity, percentiles=tuple(input_cfg.intensity_percentiles),
                   window=tuple(input_cfg.intensity_window))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "percentiles": list(self.percentiles), "window": list(self.window)}


def intensity_bounds(pixels: np.ndarray, policy: IntensityPolicy) -> Tuple[float, float]:
    """``(low, high)`` that map to 0 and 1 for ``pixels (H, W, C)`` of any dtype under ``policy``.

    Raises ``ValueError`` for a float image with NaN or infinite pixels."""
    if pixels.dtype == np.bool_:
        return 0.0, 1.0
    if pixels.dtype == np.uint8:
        return 0.0, 255.0
    if pixels.dtype.kind == "f":
        finite = np.isfinite(pixels)
        if not finite.all():
            raise ValueError(f"float image has {int((~finite).sum())} NaN or infinite pixels")
    if policy.mode == "window":
        return policy.window
    if policy.mode == "percentile":
        low, high = _percentiles(pixels, policy.percentiles)
    elif pixels.dtype == np.uint16:
        return 0.0, _UINT16_MAX
    else:
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 1.0)
        if pixels.dtype.kind == "f" and 0.0 <= low and high <= 1.0:
            return 0.0, 1.0
        if pixels.dtype.kind in "iu" and 0.0 <= low and high <= _UINT16_MAX:
            return 0.0, _UINT16_MAX
    return (low, high) if high > low else (low, low + 1.0)


def _percentiles(pixels: np.ndarray, percentiles: Tuple[float, float]) -> Tuple[float, float]:
    """``np.percentile(pixels, percentiles)`` (linear interpolation); 16-bit images through a
    histogram, so that a large image is not copied and sorted."""
    if pixels.size == 0:
        return 0.0, 1.0
    if pixels.dtype != np.uint16:
        low, high = np.percentile(pixels, percentiles)
        return float(low), float(high)
    counts = np.bincount(pixels.reshape(-1), minlength=65536)
    cumulative = np.cumsum(counts)
    result = []
    for q in percentiles:
        rank = q / 100.0 * (pixels.size - 1)
        below, above = int(np.floor(rank)), int(np.ceil(rank))
        value_below = float(np.searchsorted(cumulative, below, side="right"))
        value_above = float(np.searchsorted(cumulative, above, side="right"))
        result.append(value_below + (rank - below) * (value_above - value_below))
    return result[0], result[1]


def to_unit_range(pixels: np.ndarray, bounds: Tuple[float, float]) -> np.ndarray:
    """``pixels (..., C)`` as float32 in ``[0, 1]``: ``(x - low) / (high - low)``, clipped; 8-bit
    and bilevel pixels exactly as ``x / 255`` and ``x``."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    low, high = bounds
    if (low, high) == (0.0, 1.0):
        scaled = pixels.astype(np.float32)
    elif low == 0.0:
        scaled = pixels.astype(np.float32) / np.float32(high)
    else:
        scaled = ((pixels.astype(np.float64) - low) / (high - low)).astype(np.float32)
    return np.clip(scaled, 0.0, 1.0, out=scaled)
