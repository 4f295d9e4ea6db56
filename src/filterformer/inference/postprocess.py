"""Post-processing of binary maps (ISVL hybrid §3.1.1 and code): foreground, closing, erosion.

Closing completes large or hollow defects that the map only partly covers (fabric-like
categories); hole filling closes what closing could not; if the two whiten more than
``fill_guard`` of the image, the mask before them is kept (ISVL hybrid code: "> 95 % white").
Erosion trims the halo a smooth map leaves around a defect. The foreground mask (ISVL hybrid
code, walnuts on the mixed split) keeps only pixels of the brighter of two HSV colour clusters.
Order: foreground, closing, hole filling, erosion. Every size is in original-image pixels (masks
are at the image's original size); 0 switches a step off. ``kernel`` is ``ellipse`` (odd sizes)
or ``rect`` (any size: the ISVL hybrid code's 80 x 80, 10 x 10 and 15 x 15 rectangles).

A category's ``postprocess`` block may hold ``splits: {<split>: {...}}``: settings that replace
the block's own on that split only (``settings_for_split``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from filterformer.errors import ConfigError

KERNELS = ("ellipse", "rect")
SPLIT_KEY = "splits"


def _check_size(size: int, name: str, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ConfigError(f"postprocess kernel={kernel!r}: use one of {', '.join(KERNELS)}.")
    if not isinstance(size, int | np.integer) or size < 0:
        raise ConfigError(
            f"postprocess {name}={size}: kernel size must be an integer >= 0 (0 off)."
        )
    if kernel == "ellipse" and size and size % 2 == 0:
        raise ConfigError(
            f"postprocess {name}={size}: an ellipse kernel must be 0 (off) or odd > 0; "
            "use kernel=rect for even sizes."
        )


def _kernel(size: int, kernel: str) -> np.ndarray:
    shape = cv2.MORPH_ELLIPSE if kernel == "ellipse" else cv2.MORPH_RECT
    return cv2.getStructuringElement(shape, (size, size))


def hsv_foreground(image: np.ndarray, dilation: int = 15, iterations: int = 20) -> np.ndarray:
    """H x W bool foreground of an RGB uint8 image by 2-means on its HSV hue and value.

    The cluster with the lower mean value (darker) is background (ISVL hybrid code: walnuts lie
    on a dark tray); the foreground is dilated by a ``dilation`` square so that defects on the
    rim survive. Deterministic: the two centres start at the darkest and brightest pixel.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"foreground mask needs an H x W x 3 RGB image, got {image.shape}.")
    hsv = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    feats = hsv[..., [0, 2]].reshape(-1, 2).astype(np.float32)
    value = feats[:, 1]
    centres = feats[[int(value.argmin()), int(value.argmax())]].copy()
    for _ in range(iterations):
        labels = (((feats[:, None, :] - centres[None]) ** 2).sum(-1)).argmin(1)
        for k in range(2):
            if (labels == k).any():
                centres[k] = feats[labels == k].mean(0)
    foreground = labels == int(centres[:, 1].argmax())
    out = foreground.reshape(image.shape[:2]).astype(np.uint8)
    if dilation:
        out = cv2.dilate(out, _kernel(dilation, "rect"))
    return out.astype(bool)


def postprocess(
    mask: np.ndarray,
    closing: int = 0,
    fill_holes: bool = False,
    erosion: int = 0,
    kernel: str = "ellipse",
    fill_guard: float = 0.95,
    foreground: int | bool = 0,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Return the H x W bool mask after foreground, closing, hole filling and erosion.

    ``foreground``: dilation (pixels) of the HSV foreground ANDed with the mask (``true`` = 15,
    the ISVL hybrid code's); needs ``image``. Pixels outside the image count as background for
    closing's dilation and as foreground for erosion (OpenCV's defaults), so nothing grows in
    from or is eaten away at the border.
    """
    _check_size(closing, "closing", kernel)
    _check_size(erosion, "erosion", kernel)
    if not 0 < fill_guard <= 1:
        raise ConfigError(f"postprocess fill_guard={fill_guard}: use a fraction in (0, 1].")
    out = np.asarray(mask, dtype=np.uint8)
    if foreground:
        if image is None:
            raise ConfigError("postprocess foreground: the foreground mask needs the image.")
        out &= hsv_foreground(image, 15 if foreground is True else int(foreground))
    raw = out
    if closing:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _kernel(closing, kernel))
    if fill_holes:
        out = ndimage.binary_fill_holes(out).astype(np.uint8)
    if (closing or fill_holes) and out.mean() > fill_guard:
        out = raw
    if erosion:
        out = cv2.erode(out, _kernel(erosion, kernel))
    return out.astype(bool)


def settings_for_split(settings: Mapping[str, Any], split: str) -> dict[str, Any]:
    """The keyword arguments of :func:`postprocess` on ``split``: the block's own, then its
    ``splits.<split>`` overrides."""
    base = {k: v for k, v in settings.items() if k != SPLIT_KEY}
    return {**base, **dict((settings.get(SPLIT_KEY) or {}).get(split) or {})}


def is_identity(settings: Mapping[str, Any]) -> bool:
    """Whether these (split-resolved) settings leave every mask unchanged."""
    return not any(settings.get(k) for k in ("closing", "fill_holes", "erosion", "foreground"))


def for_sample(
    settings: Mapping[str, Any], split: str, load_image: Callable[[], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The post-processing of one binary map of ``split``, or None when it changes nothing.

    ``load_image`` is called only when the foreground mask needs the image.
    """
    resolved = settings_for_split(settings, split)
    if is_identity(resolved):
        return None
    image = load_image() if resolved.get("foreground") else None
    return functools.partial(postprocess, image=image, **resolved)
