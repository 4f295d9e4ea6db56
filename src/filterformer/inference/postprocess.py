"""Post-processing of binary maps (ISVL hybrid §3.1.1 and code): foreground, closing, erosion.

Closing completes large or hollow defects that the map only partly covers (fabric-like
categories); hole filling closes what closing could not; if the two whiten more than
``fill_guard`` of the image, the mask before them is kept (ISVL hybrid code: "> 95 % white").
Hole filling is ``corner`` (ISVL hybrid code: everything the background flood from pixel
(0, 0) does not reach, 4-connected; a closed mask that covers that pixel turns all white,
which the guard then reverts) or ``border`` (ours, ``true`` too: every hole that does not
touch the image border, ``scipy.ndimage.binary_fill_holes``). Erosion trims the halo a smooth
map leaves around a defect. The foreground mask (ISVL hybrid code, walnuts on the mixed split)
keeps only pixels of the brighter of two HSV colour clusters.
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
HOLE_FILLS = ("border", "corner")
"""Hole filling: every hole off the border (ours) or the flood from pixel (0, 0) (ISVL code)."""
SPLIT_KEY = "splits"
KMEANS_SEED = 0
"""ISVL hybrid code: KMeans(n_clusters=2, random_state=0) for the walnut foreground."""
KMEANS_STARTS = 10
"""ISVL hybrid code: scikit-learn 1.3.2's default n_init (10 k-means++ starts, the best kept)."""


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


def hsv_foreground(image: np.ndarray, dilation: int = 15) -> np.ndarray:
    """H x W bool foreground of an RGB uint8 image by 2-means on its HSV hue and value.

    The cluster with the lower mean value (darker) is background (ISVL hybrid code: walnuts lie
    on a dark tray); the foreground is dilated by a ``dilation`` square so that defects on the
    rim survive. The 2-means is the code's: scikit-learn's k-means++ seeded with 0, the best of
    10 starts, so the mask is a function of the image.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"foreground mask needs an H x W x 3 RGB image, got {image.shape}.")
    from sklearn.cluster import KMeans  # seconds to import: only this mask needs it

    hsv = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    feats = hsv[..., [0, 2]].reshape(-1, 2).astype(np.float64)
    kmeans = KMeans(n_clusters=2, n_init=KMEANS_STARTS, random_state=KMEANS_SEED).fit(feats)
    labels = kmeans.labels_
    values = [feats[labels == k, 1].mean() if (labels == k).any() else -1.0 for k in range(2)]
    foreground = labels != int(np.argmin(values))
    out = foreground.reshape(image.shape[:2]).astype(np.uint8)
    if dilation:
        out = cv2.dilate(out, _kernel(dilation, "rect"))
    return out.astype(bool)


def fill_mask_holes(mask: np.ndarray, how: str | bool = "border") -> np.ndarray:
    """``mask`` (uint8 0/1) with its holes filled: ``border`` or ``corner`` (see the module).

    ``corner`` is the ISVL hybrid code's flood fill: the background 4-connected to pixel
    (0, 0) stays background and every other pixel becomes foreground.
    """
    if how is True or how == "border":
        return ndimage.binary_fill_holes(mask).astype(np.uint8)
    if how != "corner":
        raise ConfigError(
            f"postprocess fill_holes={how!r}: use false, {', '.join(HOLE_FILLS)} (true = border)."
        )
    if mask[0, 0]:
        return np.ones_like(mask)  # the flood starts inside the mask: nothing is background
    reached, _ = ndimage.label(mask == 0)  # 4-connected components of the background
    return (reached != reached[0, 0]).astype(np.uint8)


def postprocess(
    mask: np.ndarray,
    closing: int = 0,
    fill_holes: bool | str = False,
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
        out = fill_mask_holes(out, fill_holes)
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
