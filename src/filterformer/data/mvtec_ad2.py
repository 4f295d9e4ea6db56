"""MVTec AD 2 on disk: find the images, labels, conditions and masks of one category and split.

Discovery follows the official dataset class (MVTec's ``mvtec_ad_2_public_offline.py``,
shipped with the dataset): private splits are flat folders ``<category>/<split>/NNN_*.png``
without labels or ground truth; the other splits hold ``good/`` and ``bad/`` folders, and
every ``bad`` image has its mask at ``<split>/ground_truth/bad/<stem>_mask.png``. Only
``.png`` files whose names start with three digits are images, so anything else in the
dataset folder is ignored. Nothing is written there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from filterformer.data.sample import Sample, SampleSequence
from filterformer.errors import DataError
from filterformer.io import image_size

CATEGORIES = (
    "can",
    "fabric",
    "fruit_jelly",
    "rice",
    "sheet_metal",
    "vial",
    "wallplugs",
    "walnuts",
)
"""The eight official MVTec AD 2 objects."""

SPLITS = ("train", "validation", "test_public", "test_private", "test_private_mixed")
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
"""Splits whose labels and masks only the benchmark server holds."""

DATA_ROOT_ENV = "FF_DATA_ROOT"
IMAGE_GLOB = "[0-9][0-9][0-9]*.png"
MASK_SUFFIX = "_mask"
_CONDITION = re.compile(r"\d{3}_(?P<condition>.+)")


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The dataset root: ``root`` if given, else the ``FF_DATA_ROOT`` environment variable."""
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV)
        if not root:
            raise DataError(
                "No data root given. Pass the folder that holds the category folders "
                f"(e.g. .../mvtec_ad_2) or set the environment variable {DATA_ROOT_ENV}."
            )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{path}: data root not found. Point it (or {DATA_ROOT_ENV}) at the folder that "
            "holds the category folders, e.g. the extracted mvtec_ad_2 folder."
        )
    return path


def available_categories(root: str | os.PathLike) -> list[str]:
    """Category folder names present under a data root (official or not), sorted."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def parse_condition(stem: str) -> str:
    """Lighting condition from an AD 2 stem: ``001_shift_2`` -> ``shift_2``; else ``unknown``."""
    match = _CONDITION.fullmatch(stem)
    return match["condition"] if match else "unknown"


class MVTecAD2(SampleSequence):
    """The samples of one category and split of an MVTec AD 2-layout root, sorted by relpath.

    Any category folder under the root is accepted (the official eight, or e.g. a synthetic
    one). Construction validates the layout and raises :class:`DataError` naming the problem.
    """

    def __init__(self, root: str | os.PathLike | None, category: str, split: str) -> None:
        self.root = resolve_data_root(root)
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}. Choose one of: {', '.join(SPLITS)}.")
        category_dir = self.root / category
        if not category_dir.is_dir():
            raise DataError(
                f"{category_dir}: category {category!r} not found. Categories under "
                f"{self.root}: {', '.join(available_categories(self.root)) or 'none'}; "
                f"official MVTec AD 2 names: {', '.join(CATEGORIES)}."
            )
        self.category = category
        self.split = split
        split_dir = category_dir / split
        if not split_dir.is_dir():
            raise DataError(
                f"{split_dir}: split folder not found. Restore it from the dataset archive."
            )
        if split in PRIVATE_SPLITS:
            samples = [self._sample(p, label=None, mask_path=None) for p in _images(split_dir)]
        else:
            samples = self._labelled(split_dir)
        if not samples:
            raise DataError(
                f"{split_dir}: no images found (expected {IMAGE_GLOB} files"
                f"{'' if split in PRIVATE_SPLITS else ' in good/ or bad/'}). "
                "Check the dataset was extracted completely."
            )
        self.samples: tuple[Sample, ...] = tuple(sorted(samples, key=lambda s: s.relpath))

    def _labelled(self, split_dir: Path) -> list[Sample]:
        """Samples of good/ (label 0) and bad/ (label 1, each with its mask)."""
        samples = [self._sample(p, 0, None) for p in _images(split_dir / "good")]
        gt_dir = split_dir / "ground_truth" / "bad"
        bad = _images(split_dir / "bad")
        for path in bad:
            mask_path = gt_dir / f"{path.stem}{MASK_SUFFIX}.png"
            if not mask_path.is_file():
                raise DataError(
                    f"{path}: anomalous image without its mask {mask_path}. "
                    "Restore the mask from the dataset archive or remove the image."
                )
            samples.append(self._sample(path, 1, mask_path))
        stems = {p.stem for p in bad}
        for mask_path in sorted(gt_dir.glob(f"*{MASK_SUFFIX}.png")):
            if mask_path.stem[: -len(MASK_SUFFIX)] not in stems:
                raise DataError(
                    f"{mask_path}: mask without an image in {split_dir / 'bad'}. "
                    "Restore the image or remove the mask."
                )
        return samples

    def _sample(self, path: Path, label: int | None, mask_path: Path | None) -> Sample:
        height, width = image_size(path)
        relative = path.relative_to(self.root / self.category).with_suffix("")
        return Sample(
            path=path,
            category=self.category,
            split=self.split,
            relpath=PurePosixPath(*relative.parts),
            label=label,
            condition=parse_condition(path.stem),
            mask_path=mask_path,
            height=height,
            width=width,
        )

    def __repr__(self) -> str:
        return (
            f"MVTecAD2(root={str(self.root)!r}, category={self.category!r}, "
            f"split={self.split!r}, n={len(self)})"
        )


def _images(folder: Path) -> list[Path]:
    """Image files of one folder (three-digit index, .png), sorted; none if it is absent."""
    return sorted(p for p in folder.glob(IMAGE_GLOB) if p.is_file())
