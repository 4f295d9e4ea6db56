"""A synthetic MVTec AD 2-layout category for tests and the demo, made without any download.

Normal images are random crops and flips of a real texture photo that scikit-image ships
inside its wheel (``brick``, ``grass``, ``gravel``), tinted to colour. Anomalous images add one
defect (a patch of a foreign texture, a scratch, a spot or a crack) whose ground-truth mask is
*exact*: it marks precisely the pixels where the written image differs from the same scene
rendered without the defect. Lighting changes (over/under exposure, a directional gradient, an
extra light, a colour cast) are applied to whole images like in MVTec AD 2's test sets; they
are not defects, so they never enter a mask. Everything is a pure function of the seed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import skimage.data

from filterformer.errors import ConfigError, DataError
from filterformer.io import (
    check_name,
    read_json,
    remove_partials,
    write_json,
    write_mask_png,
    write_png,
)
from filterformer.progress import progress_bar

TEXTURES = ("brick", "grass", "gravel")
_TINTS = {"brick": (1.0, 0.78, 0.62), "grass": (0.72, 0.95, 0.55), "gravel": (0.86, 0.86, 0.92)}
"""RGB gains that turn each grey photo into a plausibly coloured surface."""

DEFECTS = ("patch", "scratch", "spot", "crack")
LIGHTINGS = ("regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3")
PUBLIC_LIGHTINGS = ("regular", "overexposed", "underexposed", "shift_1")
"""Conditions cycled through in test_public (named in the stem, as MVTec AD 2 does)."""

DEFAULT_COUNTS = {
    "train": 24,
    "validation": 8,
    "test_public_good": 8,
    "test_public_bad": 12,
    "test_private": 10,
    "test_private_mixed": 10,
}
"""Small enough that the demo trains in minutes on two CPU cores."""

PARAMS_FILE = "synthetic.json"
_FORMAT = 1
"""Bump when the rendering changes, so stale folders are detected instead of reused."""

Image = np.ndarray  # H x W x 3 float32 in [0, 255] while rendering


@dataclass(frozen=True)
class SyntheticItem:
    """One rendered image: what is written, the defect-free twin and the exact defect mask."""

    relpath: PurePosixPath  # e.g. "test_public/bad/003_shift_1" (no suffix)
    label: int  # 0 good, 1 defect (also known for private splits, but not written there)
    lighting: str  # the lighting actually applied (test_private_mixed stems only say "mixed")
    defect: str | None  # one of DEFECTS for label 1
    image: np.ndarray  # H x W x 3 uint8 RGB, the file content
    clean: np.ndarray  # the same crop and lighting without the defect
    mask: np.ndarray  # H x W bool, exactly the pixels where image != clean

    @property
    def has_ground_truth(self) -> bool:
        """Whether a mask file is written (test_public/bad only, as in MVTec AD 2)."""
        return _has_ground_truth(self.relpath)


@dataclass(frozen=True)
class _Spec:
    relpath: PurePosixPath
    label: int
    lighting: str
    defect: str | None
    key: tuple[int, ...]  # seeds this item's random stream, independent of all other items


def make_synthetic_category(
    root: str | os.PathLike,
    category: str = "synthetic",
    seed: int = 0,
    image_size: tuple[int, int] = (256, 320),
    counts: Mapping[str, int] | None = None,
    texture: str = "brick",
    progress: bool = False,
) -> Path:
    """Write a synthetic category under ``root`` in the MVTec AD 2 layout; return its folder.

    ``image_size`` is (H, W). ``counts`` overrides entries of :data:`DEFAULT_COUNTS`. Files
    are written atomically; ``<root>/<category>/synthetic.json`` records the parameters, so a
    second call with the same parameters returns at once, and an interrupted one is completed.
    """
    params = _params(seed, image_size, counts, texture)
    cat_dir = Path(root) / check_name(category, "category")
    params_path = cat_dir / PARAMS_FILE
    specs = _plan(seed, params["counts"])
    if params_path.is_file():
        stored = read_json(params_path, "synthetic category record", "Delete the folder.")
        if stored != params:
            raise DataError(
                f"{cat_dir}: holds a synthetic category made with other parameters ({stored}). "
                "Delete that folder or choose another category name."
            )
        if all(_written(cat_dir, spec) for spec in specs):
            return cat_dir
    elif cat_dir.exists() and any(cat_dir.iterdir()):
        raise DataError(
            f"{cat_dir}: exists and was not made by make_synthetic_category (no {PARAMS_FILE}). "
            "Refusing to write into it; choose another root or category name."
        )
    write_json(params_path, params)
    remove_partials(cat_dir)
    bar = progress_bar(specs, desc=f"generating {category}", enabled=progress, unit="img")
    for spec in bar:
        item = _render(spec, params["image_size"], texture)
        write_png(cat_dir / f"{spec.relpath}.png", item.image)
        if item.has_ground_truth:
            write_mask_png(_mask_path(cat_dir, spec), item.mask)
    return cat_dir


def synthetic_items(
    seed: int = 0,
    image_size: tuple[int, int] = (256, 320),
    counts: Mapping[str, int] | None = None,
    texture: str = "brick",
) -> Iterator[SyntheticItem]:
    """Render the items :func:`make_synthetic_category` writes, in the same order, in memory."""
    params = _params(seed, image_size, counts, texture)
    for spec in _plan(seed, params["counts"]):
        yield _render(spec, params["image_size"], texture)


def _params(
    seed: int, image_size: tuple[int, int], counts: Mapping[str, int] | None, texture: str
) -> dict:
    """Validated generation parameters, in the form stored in ``synthetic.json``."""
    if texture not in TEXTURES:
        raise ConfigError(f"Unknown texture {texture!r}. Choose one of: {', '.join(TEXTURES)}.")
    unknown = sorted(set(counts or {}) - set(DEFAULT_COUNTS))
    if unknown:
        raise ConfigError(f"Unknown count keys {unknown}. Valid keys: {', '.join(DEFAULT_COUNTS)}.")
    merged = {**DEFAULT_COUNTS, **(counts or {})}
    if any(int(n) < 1 for n in merged.values()):
        raise ConfigError(f"Synthetic counts must all be at least 1, got {merged}.")
    height, width = (int(v) for v in image_size)
    if min(height, width) < 32:
        raise ConfigError(f"Synthetic image_size {image_size} is too small; use at least 32 x 32.")
    return {
        "format": _FORMAT,
        "seed": int(seed),
        "image_size": [height, width],
        "counts": {k: int(v) for k, v in merged.items()},
        "texture": texture,
    }


def _plan(seed: int, counts: Mapping[str, int]) -> list[_Spec]:
    """Names, labels, lightings and defect kinds of every image, in writing order."""
    rng = np.random.default_rng([seed, 7919])
    specs: list[_Spec] = []

    def add(folder: str, index: int, label: int, lighting: str, stem_condition: str) -> None:
        defect = DEFECTS[index % len(DEFECTS)] if label else None
        relpath = PurePosixPath(folder, f"{index:03d}_{stem_condition}")
        specs.append(_Spec(relpath, label, lighting, defect, (seed, len(specs))))

    for split in ("train", "validation"):
        for i in range(counts[split]):
            add(f"{split}/good", i, 0, "regular", "regular")
    for folder, label in (("good", 0), ("bad", 1)):
        for i in range(counts[f"test_public_{folder}"]):
            # Rotate the cycle every round so each defect kind meets every lighting.
            lighting = PUBLIC_LIGHTINGS[(i + i // len(DEFECTS)) % len(PUBLIC_LIGHTINGS)]
            add(f"test_public/{folder}", i, label, lighting, lighting)
    for split in ("test_private", "test_private_mixed"):
        n = counts[split]
        labels = (rng.permutation(n) < (n + 1) // 2).astype(int)  # about half anomalous
        for i in range(n):
            if split == "test_private":
                add(split, i, int(labels[i]), "regular", "regular")
            else:
                add(split, i, int(labels[i]), str(rng.choice(LIGHTINGS)), "mixed")
    return specs


def _mask_path(cat_dir: Path, spec: _Spec) -> Path:
    split = spec.relpath.parts[0]
    return cat_dir / split / "ground_truth" / "bad" / f"{spec.relpath.name}_mask.png"


def _has_ground_truth(relpath: PurePosixPath) -> bool:
    return relpath.parts[:2] == ("test_public", "bad")


def _written(cat_dir: Path, spec: _Spec) -> bool:
    """Whether the image of ``spec`` (and its mask, if it has one) is on disk."""
    image_ok = (cat_dir / f"{spec.relpath}.png").is_file()
    return image_ok and (not _has_ground_truth(spec.relpath) or _mask_path(cat_dir, spec).is_file())


def _render(spec: _Spec, image_size: tuple[int, int], texture: str) -> SyntheticItem:
    """Render one item twice (with and without the defect) under the same lighting."""
    rng = np.random.default_rng(list(spec.key))
    base = _normal_image(_texture(texture), rng, image_size)
    if spec.defect is None:
        defective, region = base, np.zeros(image_size, dtype=bool)
    else:
        defective, region = _DEFECT_RENDERERS[spec.defect](base, rng, texture)
    light = _lighting(spec.lighting, rng, image_size)
    clean = _quantise(light(base))
    image = _quantise(light(defective))
    # Where lighting (e.g. saturation) or rounding hides the defect, shift the pixel so the
    # defect stays visible everywhere in its region: the mask is then the region exactly.
    hidden = region & (image == clean).all(axis=2)
    image[hidden] = np.where(clean[hidden] >= 128, clean[hidden] - 48, clean[hidden] + 48)
    return SyntheticItem(
        relpath=spec.relpath,
        label=spec.label,
        lighting=spec.lighting,
        defect=spec.defect,
        image=image,
        clean=clean,
        mask=region,
    )


@functools.cache
def _texture(name: str) -> Image:
    """The bundled grey photo of a texture as a tinted float RGB image."""
    grey = getattr(skimage.data, name)().astype(np.float32)
    return grey[:, :, None] * np.asarray(_TINTS[name], dtype=np.float32)


def _normal_image(texture: Image, rng: np.random.Generator, size: tuple[int, int]) -> Image:
    """A random crop of the texture, flipped at random, resized to ``size``, gain varied."""
    height, width = size
    tex_h, tex_w = texture.shape[:2]
    scale = min(tex_h / height, tex_w / width) * rng.uniform(0.55, 0.7)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top = int(rng.integers(0, tex_h - crop_h + 1))
    left = int(rng.integers(0, tex_w - crop_w + 1))
    crop = texture[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    image = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)
    return image * rng.uniform(0.95, 1.05)


def _quantise(image: Image) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _centre(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[float, float]:
    """A random (x, y) point away from the border."""
    return rng.uniform(0.15, 0.85) * shape[1], rng.uniform(0.15, 0.85) * shape[0]


def _thickness(shape: tuple[int, ...]) -> int:
    return max(1, round(min(shape[:2]) / 160))


def _draw(shape: tuple[int, ...], paint: Callable[[np.ndarray], None]) -> np.ndarray:
    """Rasterise a shape with OpenCV onto an empty canvas; return it as a bool region."""
    canvas = np.zeros(shape[:2], dtype=np.uint8)
    paint(canvas)
    return canvas > 0


def _patch(base: Image, rng: np.random.Generator, texture: str) -> tuple[Image, np.ndarray]:
    """A blob of a foreign texture pasted into the surface."""
    foreign = str(rng.choice([t for t in TEXTURES if t != texture]))
    other = _normal_image(_texture(foreign), rng, base.shape[:2])
    cx, cy = _centre(rng, base.shape)
    radius = rng.uniform(0.08, 0.16) * min(base.shape[:2])
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = radius * rng.uniform(0.6, 1.0, 9)
    polygon = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    region = _draw(base.shape, lambda c: cv2.fillPoly(c, [np.rint(polygon).astype(np.int32)], 1))
    return np.where(region[:, :, None], other, base), region


def _scratch(base: Image, rng: np.random.Generator, texture: str) -> tuple[Image, np.ndarray]:
    """A thin bright curved line (a quadratic Bezier curve)."""
    size = min(base.shape[:2])
    start = np.array(_centre(rng, base.shape))
    angle = rng.uniform(0, np.pi)
    chord = rng.uniform(0.25, 0.5) * size * np.array([np.cos(angle), np.sin(angle)])
    bend = rng.uniform(-0.15, 0.15) * size * np.array([-np.sin(angle), np.cos(angle)])
    t = np.linspace(0, 1, 64)[:, None]
    control = start + chord / 2 + bend
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * (start + chord)
    points = np.rint(curve).astype(np.int32)
    region = _draw(
        base.shape, lambda c: cv2.polylines(c, [points], False, 1, _thickness(base.shape))
    )
    return np.where(region[:, :, None], base * 0.3 + 0.7 * 235.0, base), region


def _spot(base: Image, rng: np.random.Generator, texture: str) -> tuple[Image, np.ndarray]:
    """A dark stain of a random colour (a filled ellipse)."""
    size = min(base.shape[:2])
    cx, cy = _centre(rng, base.shape)
    axes = (round(rng.uniform(0.03, 0.08) * size), round(rng.uniform(0.03, 0.08) * size))
    angle = rng.uniform(0, 180)
    region = _draw(
        base.shape,
        lambda c: cv2.ellipse(c, (round(cx), round(cy)), axes, angle, 0, 360, 1, -1),
    )
    colour = rng.uniform(0, 90, 3).astype(np.float32)
    return np.where(region[:, :, None], base * 0.35 + 0.65 * colour, base), region


def _crack(base: Image, rng: np.random.Generator, texture: str) -> tuple[Image, np.ndarray]:
    """A dark jagged line (a random walk with sharp turns)."""
    size = min(base.shape[:2])
    point = np.array(_centre(rng, base.shape))
    heading = rng.uniform(0, 2 * np.pi)
    points = [point]
    for _ in range(int(rng.integers(10, 18))):
        heading += rng.uniform(-0.7, 0.7)
        point = point + 0.03 * size * np.array([np.cos(heading), np.sin(heading)])
        points.append(point)
    polyline = np.rint(np.stack(points)).astype(np.int32)
    region = _draw(
        base.shape, lambda c: cv2.polylines(c, [polyline], False, 1, _thickness(base.shape))
    )
    return np.where(region[:, :, None], base * 0.25, base), region


_DEFECT_RENDERERS = {"patch": _patch, "scratch": _scratch, "spot": _spot, "crack": _crack}


def _lighting(
    name: str, rng: np.random.Generator, size: tuple[int, int]
) -> Callable[[Image], Image]:
    """A per-pixel lighting change (the same for an image and its defect-free twin)."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if name == "regular":
        return lambda image: image
    if name == "overexposed":
        gain = rng.uniform(1.5, 1.8)
        return lambda image: image * gain + 15.0
    if name == "underexposed":
        gain = rng.uniform(0.3, 0.45)
        return lambda image: image * gain
    if name == "shift_1":  # directional light: a linear brightness gradient
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (xs / width - 0.5) * np.cos(angle) + (ys / height - 0.5) * np.sin(angle)
        factor = (1.0 + 1.2 * ramp)[:, :, None]
        return lambda image: image * factor
    if name == "shift_2":  # an additional light source: a broad bright spot
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        sigma = 0.35 * min(height, width)
        glow = (110.0 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)))[:, :, None]
        return lambda image: image + glow
    if name == "shift_3":  # a different light colour
        gains = rng.uniform(0.7, 1.3, 3).astype(np.float32)
        return lambda image: image * gains
    raise ConfigError(f"Unknown lighting {name!r}. Choose one of: {', '.join(LIGHTINGS)}.")
