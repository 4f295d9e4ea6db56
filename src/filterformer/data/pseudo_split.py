"""``validation_pseudo``: validation images with pasted pseudo-defects and their exact masks.

A labelled split made without any test label: each validation image gets one pseudo-defect
(:class:`~filterformer.data.pseudo_defects.PseudoDefects`, by default the Perlin kinds and the
procedural cracks, spots and scratches) and the mask of exactly the pixels it changed. It can
choose the best checkpoint, the fusion mode and the threshold (rule ``f1_pseudo``) where the
Filter-Former report chose them on test_public.

Item ``i`` is a pure function of ``(seed, i)`` and the image, so the split is deterministic.
It is written once under ``cache_dir`` (``<relpath>.png`` and ``<relpath>_mask.png`` beside a
``settings.json`` that records the settings, the source images and each written file's
SHA-256) and reused while the settings and the validation images are unchanged; otherwise it
is rewritten, and so is any item whose files are missing or no longer have their SHA-256 (a
cache is made again, never trusted when damaged). Writes are atomic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from filterformer.data.pseudo_defects import PseudoDefects, PseudoDefectSettings
from filterformer.data.sample import Sample
from filterformer.data.transforms import color_jitter, directional_light
from filterformer.io import file_sha256, read_mask, write_json, write_mask_png, write_png

SPLIT = "validation_pseudo"
MIXED_SPLIT = "validation_pseudo_mixed"
"""The same pseudo-defects under synthetic lighting changes: thresholds for test_private_mixed."""
LIGHTING = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.2, "hue": 0.0}
"""Ours: colour-jitter amplitudes of the mixed pseudo split (preset=filterformer_paper's
train.augment), plus a directional light of strength 0.4 (the same preset's)."""
DEFAULT_KINDS: dict[str, float] = {
    "perlin_structure": 1.0,
    "perlin_texture": 1.0,
    "crack": 1.0,
    "spot": 1.0,
    "scratch": 1.0,
}
"""Ours: every kind that needs no user files, equally likely."""


def _settings_record(seed: int, kinds: Mapping[str, float], images: Sequence[Sample]) -> dict:
    """What the cache depends on: generator settings and the source images (path, size)."""
    return {
        "seed": seed,
        "kinds": dict(kinds),
        "images": [[str(s.path), s.height, s.width] for s in images],
    }


def pseudo_validation(
    validation: Sequence[Sample],
    cache_dir: str | Path,
    seed: int = 0,
    kinds: Mapping[str, float] | None = None,
    mixed: bool = False,
) -> list[Sample]:
    """The ``validation_pseudo`` samples of ``validation`` (written to ``cache_dir`` once).

    Every item carries a defect (anomaly probability 1); an image on which no defect could be
    drawn is kept as a normal sample (label 0, empty mask). ``mixed``: each defective image
    then gets a random lighting change (:data:`LIGHTING`), the split ``validation_pseudo_mixed``.
    """
    cache_dir = Path(cache_dir) / ("mixed" if mixed else "regular")
    kinds = dict(kinds or DEFAULT_KINDS)
    record = _settings_record(seed, kinds, validation)
    record_file = cache_dir / "settings.json"
    stored = _stored_record(record_file)
    same = {k: v for k, v in stored.items() if k != "files"} == record
    hashes = stored["files"] if same else {}  # files of other settings are made again
    fresh_hashes = {}
    generator = PseudoDefects(PseudoDefectSettings(anomaly_probability=1.0, kinds=kinds))
    samples = []
    for index, sample in enumerate(validation):
        image_path = cache_dir / f"{sample.relpath}.png"
        mask_path = cache_dir / f"{sample.relpath}_mask.png"
        names = [path.relative_to(cache_dir).as_posix() for path in (image_path, mask_path)]
        if not all(_intact(cache_dir / name, hashes.get(name)) for name in names):
            image, mask = generator(sample.load_image(), seed, index)
            if mixed:
                image = relight(image, np.random.default_rng([seed, index, 1]))
            write_png(image_path, image)
            write_mask_png(mask_path, mask)
            label = int(mask.any())
        else:
            label = int(read_mask(mask_path, shape=sample.shape).any())
        fresh_hashes.update({name: file_sha256(cache_dir / name) for name in names})
        samples.append(
            replace(
                sample,
                path=image_path,
                split=MIXED_SPLIT if mixed else SPLIT,
                label=label,
                mask_path=mask_path,
            )
        )
    if fresh_hashes != hashes:
        write_json(record_file, {**record, "files": fresh_hashes})
    return samples


def _stored_record(path: Path) -> dict:
    """The cache's settings.json ({} when missing or unreadable: the cache is made again)."""
    try:
        stored = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return stored if isinstance(stored, dict) and isinstance(stored.get("files"), dict) else {}


def _intact(path: Path, sha256: str | None) -> bool:
    """Whether a cached file exists with the SHA-256 recorded when it was written."""
    return sha256 is not None and path.is_file() and file_sha256(path) == sha256


def relight(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random global lighting change: colour jitter, then a directional light ramp.

    ``strength`` scales every amplitude (:data:`LIGHTING` and the ramp's 0.4); 1 makes the
    mixed pseudo split.
    """
    amplitudes = {name: value * strength for name, value in LIGHTING.items()}
    return directional_light(color_jitter(image, amplitudes, rng), 0.4 * strength, rng)
