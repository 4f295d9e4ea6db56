"""Procedural defect layers: cracks, spots and scratches drawn from random numbers alone.

Each function returns an H x W float32 opacity layer (0 = untouched, 1 = fully painted) and
the per-channel colour the layer paints with; :func:`paint` composites it. No files are read:
these stand in for the crops of real defects that the VAND 2025 ISVL hybrid pasted (report
§3.2.1; docs/references.md), which came from other datasets and must not ship with a library.
"""

from __future__ import annotations

import cv2
import numpy as np

Layer = tuple[np.ndarray, np.ndarray]
"""(H x W float32 opacity in [0, 1], RGB float32 target colour or offset)."""


def _unit_scale(shape: tuple[int, ...]) -> float:
    """Pixel sizes below are for a 320 px image (CPR's input); larger images scale them up."""
    return max(1.0, min(shape[:2]) / 320)


def _polyline_layer(shape: tuple[int, ...], lines: list[np.ndarray], width: int) -> np.ndarray:
    canvas = np.zeros(shape[:2], dtype=np.float32)
    points = [np.rint(line * 16).astype(np.int32) for line in lines]  # 4 fractional bits
    cv2.polylines(canvas, points, False, 1.0, width, cv2.LINE_AA, shift=4)
    return canvas


def _walk(
    start: np.ndarray, heading: float, steps: int, step: float, rng: np.random.Generator
) -> np.ndarray:
    """A jagged random walk of ``steps`` segments from ``start`` (x, y)."""
    points = [start]
    for _ in range(steps):
        heading += rng.uniform(-0.6, 0.6)
        points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    return np.stack(points)


def crack(shape: tuple[int, ...], anchor: np.ndarray, rng: np.random.Generator) -> Layer:
    """A branching random-walk line, 1-4 px wide, darker or lighter by 30-80 grey levels."""
    side, unit = min(shape[:2]), _unit_scale(shape)
    step = rng.uniform(0.02, 0.04) * side
    trunk = _walk(anchor, rng.uniform(0, 2 * np.pi), int(rng.integers(8, 20)), step, rng)
    lines = [trunk]
    for node in trunk[1:-1]:
        if rng.random() < 0.15:
            lines.append(_walk(node, rng.uniform(0, 2 * np.pi), int(rng.integers(2, 7)), step, rng))
    width = max(1, round(int(rng.integers(1, 5)) * unit))
    opacity = cv2.GaussianBlur(_polyline_layer(shape, lines, width), (0, 0), 0.6 * unit)
    offset = rng.choice([-1.0, 1.0]) * rng.uniform(30, 80)
    return opacity, np.full(3, offset, dtype=np.float32)


def spot(shape: tuple[int, ...], anchor: np.ndarray, rng: np.random.Generator) -> Layer:
    """A soft-edged elliptical blob with a random intensity and colour offset."""
    side = min(shape[:2])
    axes = rng.uniform(0.015, 0.08, 2) * side
    canvas = np.zeros(shape[:2], dtype=np.float32)
    centre = tuple(int(v) for v in np.rint(anchor * 16))
    size = tuple(int(v) for v in np.rint(axes * 16))
    cv2.ellipse(canvas, centre, size, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
    opacity = cv2.GaussianBlur(canvas, (0, 0), max(0.5, 0.25 * float(axes.min())))
    offset = rng.choice([-1.0, 1.0]) * rng.uniform(30, 80) + rng.uniform(-20, 20, 3)
    return opacity, offset.astype(np.float32)


def scratch(shape: tuple[int, ...], anchor: np.ndarray, rng: np.random.Generator) -> Layer:
    """A thin high-contrast cubic Bezier curve, 1-2 px wide, 5-30 % of the shorter side long."""
    side, unit = min(shape[:2]), _unit_scale(shape)
    length = rng.uniform(0.05, 0.3) * side
    angle = rng.uniform(0, 2 * np.pi)
    chord = length * np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-chord[1], chord[0]])
    controls = [
        anchor,
        anchor + chord / 3 + rng.uniform(-0.3, 0.3) * normal,
        anchor + 2 * chord / 3 + rng.uniform(-0.3, 0.3) * normal,
        anchor + chord,
    ]
    t = np.linspace(0, 1, 48)[:, None]
    weights = [(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3]
    curve = sum(w * c for w, c in zip(weights, controls, strict=True))
    width = max(1, round(int(rng.integers(1, 3)) * unit))
    opacity = _polyline_layer(shape, [curve], width) * rng.uniform(0.8, 1.0)
    target = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
    return opacity.astype(np.float32), np.full(3, target, dtype=np.float32)


def paint(image: np.ndarray, layer: Layer, *, absolute: bool) -> np.ndarray:
    """Composite ``layer`` onto an H x W x 3 uint8 image; float32 result, not yet rounded.

    ``absolute``: the colour is a target value (scratch); otherwise an offset (crack, spot).
    """
    opacity, colour = layer
    alpha = opacity[:, :, None]
    base = image.astype(np.float32)
    if absolute:
        return base * (1 - alpha) + alpha * colour
    return base + alpha * colour


STROKES = {"crack": (crack, False), "spot": (spot, False), "scratch": (scratch, True)}
"""Kind -> (layer function, whether its colour is absolute)."""
