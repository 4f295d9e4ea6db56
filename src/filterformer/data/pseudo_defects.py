"""Pseudo-defects on normal images, generated on the fly with exact masks.

Kinds (mixed by weight, :class:`PseudoDefectSettings`):

- ``perlin_structure``: a Perlin-shaped region filled with the image itself after three
  random photometric/geometric operations, cut into a grid of shuffled cells;
- ``perlin_texture``: the same region filled with a foreign texture (user-supplied texture
  images, else a procedural two-colour noise texture);
- ``cut_paste``: an RGBA defect crop from a user-supplied folder, scaled, rotated and pasted
  where its alpha is set (:class:`CutPaste`: the ISVL hybrid code's compositing by default);
- ``crack``, ``spot``, ``scratch``: procedural strokes (:mod:`filterformer.data.defect_strokes`).

The Perlin kinds follow CPR's synthetic anomalies (Li et al., "Target before Shooting",
IEEE TIP 2024, after DRAEM), cut-paste and the strokes the VAND 2025 ISVL hybrid's (report
§3.2.1; docs/references.md). An item is a pure function of ``(seed, step)`` and the inputs; the mask
marks exactly the pixels whose written value differs from the input image (no JPEG, no
blending tails left out), but for cut-paste blended by the foreground (the ISVL hybrid code's
rule: its label is the crop where the foreground exceeds 0.45, see :class:`CutPaste`). An
optional foreground map keeps defects on the object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from filterformer.data.defect_strokes import STROKES, paint
from filterformer.data.perlin import perlin_noise
from filterformer.errors import ConfigError, DataError
from filterformer.io import read_image

KINDS = ("perlin_structure", "perlin_texture", "cut_paste", "crack", "spot", "scratch")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


BLENDS = ("foreground", "hard")


@dataclass(frozen=True)
class CutPaste:
    """How a defect crop is scaled and composited (kind ``cut_paste``).

    Attributes:
        scales: per crop folder (first-level subfolder of the crops folder), the range of the
            factor s ~ U(lo, hi) that scales the crop's own width and height (ISVL hybrid code:
            each folder has its own); empty: the crop's longer side becomes
            U(``crop_scale``) x the image's shorter side (ours).
        canvas: the side of the square image the crop's pixels are meant for (ISVL hybrid
            code: 640, its composites' size); the scaled crop is then resized by
            min(H, W) / canvas. None: the image's own pixels.
        blend: ``foreground`` (ISVL hybrid code): the crop, its alpha binarised (a), is placed
            with its top-left corner at the anchor minus half its size (floor), a crop larger
            than the image or an object without a pixel of foreground >= ``anchor_level`` gives
            no defect,
            and the image becomes fg a crop + (1 - fg a) image, truncated to uint8, labelled
            a (fg > ``label_level``); ``hard`` (ours): the crop's pixels replace the image's
            where a and fg > 0.5, and the label is exactly the changed pixels.
        label_level: foreground above which the blended crop is labelled (ISVL hybrid code).
        anchor_level: the crop is centred on a pixel of at least this foreground (ISVL hybrid
            code: 0.8); anywhere when there is no foreground map.
    """

    scales: Mapping[str, Sequence[float]] = field(default_factory=dict)
    canvas: int | None = None
    blend: str = "foreground"
    label_level: float = 0.45
    anchor_level: float = 0.8

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ConfigError(f"cut-paste blend {self.blend!r}: use one of {', '.join(BLENDS)}.")
        if self.canvas is not None and self.canvas < 1:
            raise ConfigError(f"cut-paste canvas {self.canvas}: use null or a side in pixels.")


@dataclass(frozen=True)
class PseudoDefectSettings:
    """How pseudo-defects are drawn; defaults are CPR's official generator (objects).

    Attributes:
        anomaly_probability: chance that an item gets a defect (else it stays normal).
        kinds: relative weight of each kind of :data:`KINDS` (zero or missing: never).
        perlin_threshold: the Perlin field above this value is the region.
        perlin_max_exponent: lattice periods per axis are 2^u, u uniform in 0..this.
        min_area: connected parts smaller than this fraction of the image are dropped.
        blend: range of the source's weight beta in ``beta * source + (1 - beta) * image``.
        grid: cells per side of the shuffled structure source.
        structure_ops: random operations applied to the structure source.
        crop_scale: range of a pasted crop's longer side, as a fraction of the image's
            shorter side (when ``paste.scales`` is empty).
        max_tries: draws of a region before giving up the foreground constraint, and draws
            of an item before it stays normal (1: a failed paste leaves the item normal, as
            the ISVL hybrid code's does).
        paste: how crops are scaled and composited (:class:`CutPaste`, or its fields).
    """

    anomaly_probability: float = 0.9
    kinds: Mapping[str, float] = field(
        default_factory=lambda: {"perlin_structure": 0.5, "perlin_texture": 0.5}
    )
    perlin_threshold: float = 0.5
    perlin_max_exponent: int = 5
    min_area: float = 0.001
    blend: tuple[float, float] = (0.5, 1.0)
    grid: int = 16
    structure_ops: int = 3
    crop_scale: tuple[float, float] = (0.05, 0.3)
    max_tries: int = 50
    paste: CutPaste | Mapping = field(default_factory=CutPaste)

    def __post_init__(self) -> None:
        if not isinstance(self.paste, CutPaste):
            object.__setattr__(self, "paste", CutPaste(**self.paste))
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ConfigError(f"unknown pseudo-defect kind(s) {unknown}; valid: {', '.join(KINDS)}")
        if any(w < 0 for w in self.kinds.values()) or sum(self.kinds.values()) <= 0:
            raise ConfigError(
                f"pseudo-defect kind weights {dict(self.kinds)} must be >= 0 with a positive sum"
            )
        if not 0 <= self.anomaly_probability <= 1:
            raise ConfigError(f"anomaly_probability {self.anomaly_probability} must lie in [0, 1]")


Crops = Mapping[str, Sequence[np.ndarray]] | Sequence[np.ndarray]
"""RGBA defect crops, by folder name (:func:`load_defect_crops`) or as one list."""


class PseudoDefects:
    """Draws one pseudo-defect per call; ``crops`` are RGBA arrays (by folder: a folder is
    drawn uniformly, then one of its crops), ``textures`` RGB arrays."""

    def __init__(
        self,
        settings: PseudoDefectSettings | None = None,
        crops: Crops = (),
        textures: Sequence[np.ndarray] = (),
    ) -> None:
        self.settings = settings or PseudoDefectSettings()
        folders = dict(crops) if isinstance(crops, Mapping) else {"": list(crops)}
        self.crops = {name: list(found) for name, found in folders.items() if len(found)}
        if self.settings.kinds.get("cut_paste", 0) > 0:
            _check_crops(self.crops, self.settings.paste)
        self.textures = list(textures)
        names = [k for k in KINDS if self.settings.kinds.get(k, 0) > 0]
        weights = np.array([self.settings.kinds[k] for k in names], dtype=np.float64)
        self._kinds, self._weights = names, weights / weights.sum()

    def __call__(
        self,
        image: np.ndarray,
        seed: int,
        step: int,
        foreground: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(defective H x W x 3 uint8 image, H x W bool mask) for item ``step`` of ``seed``.

        ``foreground``: H x W values in [0, 1]; defects then stay where it exceeds 0.5.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"pseudo-defects need an H x W x 3 uint8 image, got {image.shape}")
        rng = np.random.default_rng([seed, step])
        out, mask = image, None
        if rng.random() < self.settings.anomaly_probability:
            for _ in range(self.settings.max_tries):
                kind = str(rng.choice(self._kinds, p=self._weights))
                out, mask = self._draw(kind, image, rng, foreground)
                if (out != image).any() or (mask is not None and mask.any()):
                    break
        return out, (out != image).any(axis=2) if mask is None else mask

    def _draw(
        self, kind: str, image: np.ndarray, rng: np.random.Generator, fg: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One defect of ``kind`` as a uint8 image (unchanged pixels keep their exact value)
        and its label, None when the label is the changed pixels."""
        shape = image.shape
        if kind in STROKES:
            layer_fn, absolute = STROKES[kind]
            opacity, colour = layer_fn(shape, _anchor(rng, shape, fg, 0.5), rng)
            if fg is not None:
                opacity = opacity * (fg > 0.5)
            painted = paint(image, (opacity, colour), absolute=absolute)
            return _write(image, painted, opacity > 0), None
        if kind == "cut_paste":
            return self._cut_paste(image, rng, fg)
        region = perlin_region(shape[:2], rng, self.settings, fg)
        if kind == "perlin_structure":
            source = structure_source(image, rng, self.settings.grid, self.settings.structure_ops)
        else:
            source = self._texture(shape[:2], rng)
        beta = rng.uniform(*self.settings.blend)
        blended = beta * source.astype(np.float32) + (1 - beta) * image.astype(np.float32)
        return _write(image, blended, region), None

    def _texture(self, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """A foreign texture at ``size``: a random user texture, else a procedural one."""
        if not self.textures:
            return procedural_texture(size, rng)
        texture = self.textures[int(rng.integers(len(self.textures)))]
        return cv2.resize(texture, size[::-1], interpolation=cv2.INTER_AREA)

    def _cut_paste(
        self, image: np.ndarray, rng: np.random.Generator, fg: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Paste a random crop, scaled and rotated (nearest), centred on the object if known."""
        paste = self.settings.paste
        names = sorted(self.crops)
        folder = names[int(rng.integers(len(names)))]
        crop = self.crops[folder][int(rng.integers(len(self.crops[folder])))]
        reach = 1.0 if paste.canvas is None else min(image.shape[:2]) / paste.canvas
        if paste.scales:  # ISVL hybrid code: a fraction of the crop's own size, per folder
            factor = rng.uniform(*paste.scales[folder]) * reach
            size = [max(1, int(side * factor)) for side in crop.shape[1::-1]]
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST_EXACT)
            crop = rotate_expand(crop, rng.uniform(0, 360), 1.0)
        else:  # ours: a fraction of the image's shorter side
            side = min(image.shape[:2]) * rng.uniform(*self.settings.crop_scale) * reach
            crop = rotate_expand(crop, rng.uniform(0, 360), side / max(crop.shape[:2]))
        if paste.blend == "foreground":
            return blend_crop(image, crop, rng, fg, paste.label_level, paste.anchor_level)
        centre = _anchor(rng, image.shape, fg, paste.anchor_level)
        canvas = np.zeros((*image.shape[:2], 4), dtype=np.uint8)
        height, width = crop.shape[:2]
        _place(canvas, crop, int(round(centre[1] - height / 2)), int(round(centre[0] - width / 2)))
        region = canvas[:, :, 3] > 0
        if fg is not None:
            region &= fg > 0.5
        return _write(image, canvas[:, :, :3].astype(np.float32), region), None


def blend_crop(
    image: np.ndarray,
    crop: np.ndarray,
    rng: np.random.Generator,
    fg: np.ndarray | None,
    label_level: float,
    anchor_level: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The ISVL hybrid code's compositing of an RGBA ``crop`` (see :class:`CutPaste`):
    (image, label); the image unchanged and the label empty when the crop cannot be placed."""
    (bh, bw), (ph, pw) = image.shape[:2], crop.shape[:2]
    label = np.zeros((bh, bw), dtype=bool)
    weight = np.ones((bh, bw)) if fg is None else np.asarray(fg, dtype=np.float64)
    ys, xs = np.nonzero(weight >= anchor_level)
    if ph > bh or pw > bw or not len(ys):
        return image, label
    pick = int(rng.integers(len(ys)))
    canvas = np.zeros((bh, bw, 4), dtype=np.uint8)
    _place(canvas, crop, int(ys[pick]) - ph // 2, int(xs[pick]) - pw // 2)
    alpha = (canvas[:, :, 3] > 0).astype(np.float64)
    valid = (alpha * weight)[:, :, None]
    mixed = valid * canvas[:, :, :3] + (1 - valid) * image.astype(np.float64)
    return mixed.astype(np.uint8), (alpha > 0) & (weight > label_level)


def _check_crops(crops: Mapping[str, Sequence[np.ndarray]], paste: CutPaste) -> None:
    """Refuse cut-paste without crops, or with a folder that has no scale in ``paste``."""
    if not crops:
        raise ConfigError(
            "pseudo-defect kind 'cut_paste' needs defect crops: give a folder of RGBA PNG "
            "crops (crops_dir), or set the weight of cut_paste to 0"
        )
    missing = sorted(name or "." for name in crops if paste.scales and name not in paste.scales)
    if missing:
        raise ConfigError(
            f"crop folder(s) {missing} have no scale in cut-paste scales "
            f"{sorted(paste.scales)}; add them (e.g. paste.scales.{missing[0]}=[0.1,0.5]) or "
            "move their crops."
        )


def _write(image: np.ndarray, values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``image`` with ``values`` (rounded, clipped) written inside ``region`` only."""
    out = image.copy()
    out[region] = np.clip(np.rint(values[region]), 0, 255).astype(np.uint8)
    return out


def _anchor(
    rng: np.random.Generator, shape: tuple[int, ...], fg: np.ndarray | None, level: float
) -> np.ndarray:
    """A random (x, y) pixel, on the foreground (>= ``level``) when there is one."""
    if fg is not None:
        ys, xs = np.nonzero(fg >= level)
        if len(ys):
            index = int(rng.integers(len(ys)))
            return np.array([xs[index], ys[index]], dtype=np.float64)
    return np.array([rng.uniform(0, shape[1] - 1), rng.uniform(0, shape[0] - 1)])


def perlin_region(
    size: tuple[int, int],
    rng: np.random.Generator,
    settings: PseudoDefectSettings,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """A thresholded, rotated Perlin field without tiny parts, on the foreground: H x W bool.

    Parts (8-connected) under ``min_area`` of the image, or not touching foreground > 0.5,
    are dropped, and the field is redrawn until something is left. After ``max_tries`` draws
    the foreground constraint is given up (an image without foreground still gets a defect).
    """
    min_pixels = settings.min_area * size[0] * size[1]
    for attempt in range(2 * settings.max_tries):
        periods = tuple(2.0 ** rng.integers(0, settings.perlin_max_exponent + 1, 2))
        noise = perlin_noise(size, periods, rng, angle=rng.uniform(-90, 90))
        blobs = (noise > settings.perlin_threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
        keep[0] = False  # the background
        if foreground is not None and attempt < settings.max_tries:
            keep &= np.bincount(labels[foreground > 0.5], minlength=count) > 0
        if keep.any():
            return keep[labels]
    raise DataError(
        f"no Perlin region above threshold {settings.perlin_threshold} in "
        f"{2 * settings.max_tries} draws; lower perlin_threshold or min_area"
    )


def structure_source(
    image: np.ndarray, rng: np.random.Generator, grid: int = 16, operations: int = 3
) -> np.ndarray:
    """The image after ``operations`` random ops, cut into grid x grid shuffled cells."""
    source = image
    chosen = rng.choice(len(STRUCTURE_OPS), size=operations, replace=False)
    for index in chosen:
        source = STRUCTURE_OPS[int(index)](source, rng)
    return shuffle_cells(source, grid, rng)


def shuffle_cells(image: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """Cut the image into grid x grid cells (edges split evenly) and shuffle their places.

    Cells differ by at most one pixel per side, so each is resized to the cell it lands in.
    """
    height, width = image.shape[:2]
    ys = np.linspace(0, height, grid + 1).round().astype(int)
    xs = np.linspace(0, width, grid + 1).round().astype(int)
    boxes = [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(grid) for j in range(grid)]
    order = rng.permutation(len(boxes))
    out = np.empty_like(image)
    for (y0, y1, x0, x1), source in zip(boxes, order, strict=True):
        sy0, sy1, sx0, sx1 = boxes[source]
        cell = image[sy0:sy1, sx0:sx1]
        if cell.shape[:2] != (y1 - y0, x1 - x0):
            cell = cv2.resize(cell, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        out[y0:y1, x0:x1] = cell
    return out


def procedural_texture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A foreign texture without files: two random colours mixed by fractal Perlin noise."""
    field_ = sum(
        perlin_noise(size, (2.0**octave, 2.0**octave), rng, rng.uniform(0, 90)) / 2**i
        for i, octave in enumerate(range(int(rng.integers(1, 4)), 6))
    )
    weight = (field_ - field_.min()) / (np.ptp(field_) + 1e-6)
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    mixed = colours[0] * (1 - weight[:, :, None]) + colours[1] * weight[:, :, None]
    grain = rng.normal(0, 8, (*size, 3))
    return np.clip(mixed + grain, 0, 255).astype(np.uint8)


def rotate_expand(crop: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Scale and rotate an image about its centre (nearest), enlarging the canvas to fit."""
    height, width = crop.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    out_w = max(1, int(np.ceil(height * sin + width * cos)))
    out_h = max(1, int(np.ceil(height * cos + width * sin)))
    matrix[0, 2] += (out_w - 1) / 2 - (width - 1) / 2
    matrix[1, 2] += (out_h - 1) / 2 - (height - 1) / 2
    return cv2.warpAffine(
        crop, matrix, (out_w, out_h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    )


def _place(canvas: np.ndarray, crop: np.ndarray, top: int, left: int) -> None:
    """Copy ``crop`` into ``canvas`` with its top-left corner at (top, left), clipped."""
    height, width = crop.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1 = min(top + height, canvas.shape[0])
    x1 = min(left + width, canvas.shape[1])
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = crop[y0 - top : y1 - top, x0 - left : x1 - left]


def load_defect_crops(folder: str | Path) -> dict[str, list[np.ndarray]]:
    """Every image under ``folder`` (recursively) as H x W x 4 uint8 RGBA, by the name of its
    first-level subfolder ("" for images directly in ``folder``).

    The alpha channel marks the defect (alpha > 0 is pasted); crops without one are refused.
    """
    root = Path(folder).expanduser()
    crops: dict[str, list[np.ndarray]] = {}
    for path in _image_files(folder, "defect-crop"):
        raw = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 3 or raw.shape[2] != 4:
            raise DataError(
                f"{path}: a defect crop must be an RGBA image whose alpha channel marks the "
                "defect (save it as a 4-channel PNG), or remove it from the folder"
            )
        if raw.dtype != np.uint8:
            raw = (raw.astype(np.float64) * 255 / np.iinfo(raw.dtype).max).round().astype(np.uint8)
        parts = path.relative_to(root).parts
        name = parts[0] if len(parts) > 1 else ""
        crops.setdefault(name, []).append(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA))
    return crops


def load_textures(folder: str | Path) -> list[np.ndarray]:
    """Every image under ``folder`` (recursively) as H x W x 3 uint8 RGB (foreign textures)."""
    return [read_image(path) for path in _image_files(folder, "texture")]


def _image_files(folder: str | Path, what: str) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist; give an existing folder.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


# Structure-source operations (CPR's official generator, after DRAEM): each takes and returns
# an H x W x 3 uint8 image.


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a per-channel 256-entry lookup table (3 x 256 or 256)."""
    table = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    if table.ndim == 1:
        return table[image]
    return np.stack([table[c][image[:, :, c]] for c in range(3)], axis=2)


def _gamma(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    levels = np.arange(256) / 255.0
    return _lut(image, 255 * levels[None] ** rng.uniform(0.5, 2.0, (3, 1)))


def _brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _lut(image, np.arange(256) * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30))


def _sharpen(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    blurred = cv2.blur(image, (3, 3)).astype(np.float32)
    amount = rng.uniform(0.5, 2.0)
    sharp = image.astype(np.float32) * (1 + amount) - amount * blurred
    return np.clip(np.rint(sharp), 0, 255).astype(np.uint8)


def _hue_saturation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.int32)
    hsv[:, :, 0] = (hsv[:, :, 0] + int(rng.integers(-50, 51))) % 256
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] + int(rng.integers(-50, 51)), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)


def _solarize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= 0.5:
        return image
    levels = np.arange(256)
    return _lut(image, np.where(levels >= rng.uniform(32, 128), 255 - levels, levels))


def _posterize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(1, 9))
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - image


def _autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    low = image.min(axis=(0, 1)).astype(np.float64)[:, None]
    high = image.max(axis=(0, 1)).astype(np.float64)[:, None]
    return _lut(image, (np.arange(256) - low) * 255 / np.maximum(high - low, 1))


def _equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(image[:, :, c])) for c in range(3)], 2)


def _rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), rng.uniform(-45, 45), 1)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)


STRUCTURE_OPS = (
    _gamma,
    _brightness,
    _sharpen,
    _hue_saturation,
    _solarize,
    _posterize,
    _invert,
    _autocontrast,
    _equalize,
    _rotate,
)
