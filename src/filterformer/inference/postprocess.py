"""Post-processing of binary anomaly maps (ISVL hybrid): closing, hole filling, erosion.

Closing completes large or hollow defects that the map only partly covers (fabric-like
categories); hole filling closes what closing could not; erosion trims the halo a smooth map
leaves around a defect. They are applied in that order, before SegF1 and before export.
Kernels are ellipses of the given odd size; 0 switches a step off.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from filterformer.errors import ConfigError


def _check_size(size: int, name: str) -> None:
    if size < 0 or (size and size % 2 == 0):
        raise ConfigError(f"postprocess {name}={size}: kernel size must be 0 (off) or odd > 0.")


def _kernel(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def postprocess(
    mask: np.ndarray, closing: int = 0, fill_holes: bool = False, erosion: int = 0
) -> np.ndarray:
    """Return the H x W bool mask after closing, hole filling and erosion (in that order).

    Pixels outside the image count as background for closing's dilation and as foreground for
    erosion (OpenCV's defaults), so nothing grows in from or is eaten away at the border.
    """
    _check_size(closing, "closing")
    _check_size(erosion, "erosion")
    out = np.asarray(mask, dtype=np.uint8)
    if closing:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _kernel(closing))
    if fill_holes:
        out = ndimage.binary_fill_holes(out).astype(np.uint8)
    if erosion:
        out = cv2.erode(out, _kernel(erosion))
    return out.astype(bool)
