"""Perlin gradient noise on a pixel grid, at any rotation: the shape of pseudo-defect masks.

The noise is evaluated at rotated pixel coordinates, so a rotated field needs no image
rotation (no interpolation, no empty corners). Values lie in about [-1, 1]; thresholding
them at 0.5 gives the blob masks of the DRAEM-style pseudo-defects that CPR trains on (Li et
al., "Target before Shooting", IEEE TIP 2024).
"""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3 (zero slope at 0 and 1)."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    shape: tuple[int, int],
    periods: tuple[float, float],
    rng: np.random.Generator,
    angle: float = 0.0,
) -> np.ndarray:
    """An H x W float32 Perlin field with ``periods`` (py, px) lattice cells across the image.

    ``angle`` (degrees) rotates the field about the image centre. Random unit gradients sit
    on the lattice corners; each pixel blends the four surrounding corners' dot products with
    the fade curve, scaled by sqrt(2) so that the values span about [-1, 1].
    """
    height, width = shape
    cos, sin = np.float32(np.cos(np.deg2rad(angle))), np.float32(np.sin(np.deg2rad(angle)))
    ys = (np.arange(height, dtype=np.float32) - (height - 1) / 2)[:, None]
    xs = (np.arange(width, dtype=np.float32) - (width - 1) / 2)[None, :]
    u = (ys * cos - xs * sin) * np.float32(periods[0] / height)
    v = (ys * sin + xs * cos) * np.float32(periods[1] / width)
    u, v = u - np.floor(u.min()), v - np.floor(v.min())
    fu, fv = u - np.floor(u), v - np.floor(v)
    i0, j0 = np.floor(u).astype(np.int32), np.floor(v).astype(np.int32)
    rows, cols = int(i0.max()) + 2, int(j0.max()) + 2
    directions = rng.uniform(0, 2 * np.pi, rows * cols)
    grad_y, grad_x = np.cos(directions).astype(np.float32), np.sin(directions).astype(np.float32)
    base = i0 * cols + j0  # flat index of each pixel's top-left lattice corner

    def corner(di: int, dj: int) -> np.ndarray:
        """Dot product of each pixel's offset from corner (i0 + di, j0 + dj) with its gradient."""
        index = base + (di * cols + dj)
        return np.take(grad_y, index) * (fu - di) + np.take(grad_x, index) * (fv - dj)

    wu, wv = _fade(fu), _fade(fv)
    c00, c01, c10, c11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = c00 + wv * (c01 - c00)
    bottom = c10 + wv * (c11 - c10)
    return np.float32(np.sqrt(2)) * (top + wu * (bottom - top))
