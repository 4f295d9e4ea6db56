"""Custom data: a plain folder of images, with optional ground-truth masks in another folder.

Labels follow from the masks, which are read once at construction:

- ``split="train"``: every image is normal (label 0); a mask folder is refused.
- ``split="test"`` with ``mask_dir``: an image whose mask has a positive pixel is anomalous
  (label 1); an image with an empty mask, or with no mask file, is normal (label 0).
- ``split="test"`` without ``mask_dir``: labels are unknown (label None), as in the private
  MVTec AD 2 splits.

The mask of ``<stem>.<ext>`` is ``<stem>.png`` or ``<stem>_mask.png`` in ``mask_dir``.

Without a validation folder, :func:`holdout_names` holds a reproducible part of the training
images out as the validation split (:func:`split_holdout`): they calibrate the map statistics
and the threshold and are never trained on.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from filterformer.data.sample import Sample, SampleSequence
from filterformer.errors import ConfigError, DataError
from filterformer.io import image_size, read_mask

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FOLDER_SPLITS = ("train", "test")
CONDITION = "unknown"
"""Custom images carry no lighting condition in their names."""


class ImageFolderDataset(SampleSequence):
    """The images of one folder (not recursive) as samples sorted by stem.

    ``category`` defaults to the folder's name; ``relpath`` of each sample is its stem.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        split: str = "test",
        mask_dir: str | os.PathLike | None = None,
        category: str | None = None,
    ) -> None:
        self.image_dir = _existing_dir(image_dir, "image folder")
        if split not in FOLDER_SPLITS:
            raise DataError(f"Unknown split {split!r}. Choose one of: {', '.join(FOLDER_SPLITS)}.")
        if split == "train" and mask_dir is not None:
            raise DataError(
                f"{mask_dir}: a mask folder was given for training images, which must all be "
                "normal. Drop the mask folder, or use split='test'."
            )
        self.split = split
        self.category = category or self.image_dir.name
        images = _images(self.image_dir)
        if not images:
            raise DataError(
                f"{self.image_dir}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})."
            )
        masks = None if mask_dir is None else _masks(_existing_dir(mask_dir, "mask folder"), images)
        self.samples = tuple(self._sample(path, masks) for path in images)

    def _sample(self, path: Path, masks: dict[str, Path] | None) -> Sample:
        height, width = image_size(path)
        mask_path = None if masks is None else masks.get(path.stem)
        if self.split == "train":
            label: int | None = 0
        elif masks is None:
            label = None
        else:
            label = int(mask_path is not None and read_mask(mask_path, (height, width)).any())
        return Sample(
            path=path,
            category=self.category,
            split=self.split,
            relpath=PurePosixPath(path.stem),
            label=label,
            condition=CONDITION,
            mask_path=mask_path,
            height=height,
            width=width,
        )

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.image_dir)!r}, split={self.split!r}, "
            f"category={self.category!r}, n={len(self)})"
        )


def _existing_dir(folder: str | os.PathLike, what: str) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: {what} not found. Check the path.")
    return path


def _images(folder: Path) -> list[Path]:
    """Image files of a folder sorted by stem; two files with one stem are ambiguous."""
    images = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    by_stem: dict[str, Path] = {}
    for path in images:
        if path.stem in by_stem:
            raise DataError(
                f"{path}: has the same stem as {by_stem[path.stem]}, so their outputs would "
                "collide. Rename or remove one of them."
            )
        by_stem[path.stem] = path
    return sorted(images, key=lambda p: p.stem)


def _masks(mask_dir: Path, images: Sequence[Path]) -> dict[str, Path]:
    """Image stem -> mask file; refuses ambiguous masks and masks without an image."""
    stems = {p.stem for p in images}
    masks: dict[str, Path] = {}
    for path in sorted(mask_dir.glob("*.png")):
        if path.name.startswith("."):
            continue
        stem = path.stem
        if stem not in stems and stem.endswith("_mask"):
            stem = stem[: -len("_mask")]
        if stem not in stems:
            raise DataError(
                f"{path}: mask without an image in {images[0].parent}. "
                "Remove it or add its image (masks are matched by <stem>.png or <stem>_mask.png)."
            )
        if stem in masks:
            raise DataError(
                f"{path}: a second mask for image {stem!r} (also {masks[stem]}). Keep one."
            )
        masks[stem] = path
    return masks


def holdout_names(samples: Sequence[Sample], fraction: float, seed: int) -> list[str]:
    """File names of the training images held out as validation, sorted.

    ``round(fraction * n)`` of the ``n`` samples, at least one, drawn with ``seed``: the same
    folder and seed always give the same names. At least one image is left to train on.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"data.validation_fraction {fraction} must lie strictly between 0 and 1; e.g. 0.1."
        )
    count = max(1, int(round(fraction * len(samples))))
    if count >= len(samples):
        folder = samples[0].path.parent if samples else "data.train_dir"
        raise DataError(
            f"{folder}: {len(samples)} training image(s) cannot spare {count} as validation. "
            "Add training images, or give normal images for validation in data.validation_dir."
        )
    picked = np.random.default_rng(seed).choice(len(samples), size=count, replace=False)
    return sorted(samples[int(i)].path.name for i in picked)


def split_holdout(
    samples: Sequence[Sample], names: Collection[str]
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(training samples, held-out samples): those whose file name is in ``names`` are held out.

    Every held-out name must still be in the folder, or the validation split would silently
    change (or the run would have trained on what is now called validation).
    """
    names = set(names)
    missing = sorted(names - {s.path.name for s in samples})
    if missing:
        folder = samples[0].path.parent if samples else "data.train_dir"
        raise DataError(
            f"{folder}: held-out validation image(s) {', '.join(missing[:3])} not found. The "
            "run kept them out of training (data.holdout in its config.yaml); put them back."
        )
    kept = tuple(s for s in samples if s.path.name not in names)
    held = tuple(s for s in samples if s.path.name in names)
    return kept, held


def typical_size(samples: Sequence[Sample]) -> tuple[int, int]:
    """The most frequent (H, W) among ``samples`` (the earliest one among equally frequent)."""
    if not samples:
        raise DataError("no images to take the typical image size from.")
    return Counter(s.shape for s in samples).most_common(1)[0][0]


def file_samples(paths: Sequence[Path], category: str) -> list[Sample]:
    """Samples of individual image files (label unknown), in the given order.

    Each must exist and be an image; two files with one stem are refused, as in a folder.
    """
    seen: dict[str, Path] = {}
    samples = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: image not found. Check the path.")
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"{path}: not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)})."
            )
        if path.stem in seen:
            raise DataError(
                f"{path}: has the same stem as {seen[path.stem]}; rename or remove one of them."
            )
        seen[path.stem] = path
        height, width = image_size(path)
        samples.append(
            Sample(
                path=path,
                category=category,
                split="test",
                relpath=PurePosixPath(path.stem),
                label=None,
                condition=CONDITION,
                mask_path=None,
                height=height,
                width=width,
            )
        )
    return samples
