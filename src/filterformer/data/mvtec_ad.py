"""MVTec AD on disk: the images, labels and masks of one category and split.

Layout of the dataset archive (Bergmann et al., MVTec AD, CVPR 2019), as the INP-Former code
reads it: ``<category>/train/good/`` holds the normal training images;
``<category>/test/<defect>/`` the test images, ``good`` normal and every other folder one
defect type; the mask of ``test/<defect>/<stem>.png`` is
``<category>/ground_truth/<defect>/<stem>_mask.png``. Files whose names start with a dot, and
anything outside these folders (licence, readme), are ignored. Nothing is written there.

MVTec AD has no validation split: the INP-Former protocol needs none (no thresholds, the final
model is evaluated), see docs/benchmarks.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from filterformer.data.folder import CONDITION, IMAGE_EXTENSIONS
from filterformer.data.mvtec_ad2 import category_folder, resolve_data_root
from filterformer.data.sample import Sample, SampleSequence, make_sample, pair_masks
from filterformer.errors import DataError

CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
"""The 15 MVTec AD categories."""

SPLITS = ("train", "test")
GOOD = "good"
NO_VALIDATION = (
    " There is no validation split: the inpformer protocol needs none, and the mvtec_ad2 "
    "protocol's SegF1 needs a threshold given with ff-eval --thresholds."
)
"""Added to the unknown-split error of MVTec AD and VisA."""


class MVTecAD(SampleSequence):
    """The samples of one category and split of an MVTec AD root, sorted by relpath.

    ``relpath`` is e.g. ``test/broken_large/000``. Any category folder in this layout is
    accepted; construction validates it and raises :class:`DataError` naming the problem.
    """

    def __init__(self, root: str | os.PathLike | None, category: str, split: str) -> None:
        self.root = resolve_data_root(root, example="mvtec_anomaly_detection")
        self.category_dir = category_folder(
            self.root, category, split, SPLITS, CATEGORIES, "MVTec AD", NO_VALIDATION
        )
        self.category = category
        self.split = split
        split_dir = self.category_dir / split
        if not (split_dir / GOOD).is_dir():
            raise DataError(
                f"{split_dir / GOOD}: folder not found (every MVTec AD split has good/). "
                "Restore it from the dataset archive."
            )
        samples = [self._sample(p, 0, None) for p in image_files(split_dir / GOOD)]
        if split == "test":
            samples += self._defects(split_dir)
        elif defects := _defect_folders(split_dir):
            raise DataError(
                f"{defects[0]}: training images must all be normal (train/good only). "
                "Move the folder out of train/."
            )
        if not samples:
            raise DataError(
                f"{split_dir}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)}). "
                "Check the dataset was extracted completely."
            )
        self.samples: tuple[Sample, ...] = tuple(sorted(samples, key=lambda s: s.relpath))

    def _defects(self, test_dir: Path) -> list[Sample]:
        """Anomalous samples (label 1) of every defect folder, each with its mask."""
        samples = []
        for folder in _defect_folders(test_dir):
            masks = self.category_dir / "ground_truth" / folder.name
            pairs = pair_masks(folder, image_files(folder), masks)
            samples += [self._sample(path, 1, mask) for path, mask in pairs.items()]
        return samples

    def _sample(self, path: Path, label: int, mask_path: Path | None) -> Sample:
        return make_sample(path, self.category_dir, self.split, label, mask_path, CONDITION)

    def __repr__(self) -> str:
        return (
            f"MVTecAD(root={str(self.root)!r}, category={self.category!r}, "
            f"split={self.split!r}, n={len(self)})"
        )


def image_files(folder: Path) -> list[Path]:
    """Image files of one folder (any of IMAGE_EXTENSIONS, no hidden files), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _defect_folders(split_dir: Path) -> list[Path]:
    """The sub-folders of a split other than good/ (one per defect type), sorted."""
    return sorted(
        p
        for p in split_dir.iterdir()
        if p.is_dir() and p.name != GOOD and not p.name.startswith(".")
    )
