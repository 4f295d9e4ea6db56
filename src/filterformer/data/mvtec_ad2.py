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
from collections.abc import Sequence
from pathlib import Path

from filterformer.data.sample import Sample, SampleSequence, make_sample, pair_masks
from filterformer.errors import DataError
from filterformer.io import check_name

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
_CONDITION = re.compile(r"\d{3}_(?P<condition>.+)")


def resolve_data_root(root: str | os.PathLike | None, example: str = "mvtec_ad_2") -> Path:
    """The dataset root: ``root`` if given, else the ``FF_DATA_ROOT`` environment variable.

    ``example`` names the dataset's extracted folder in the error messages.
    """
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV)
        if not root:
            raise DataError(
                "No data root given. Pass the folder that holds the category folders "
                f"(e.g. .../{example}) or set the environment variable {DATA_ROOT_ENV}."
            )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{path}: data root not found. Point it (or {DATA_ROOT_ENV}) at the folder that "
            f"holds the category folders, e.g. the extracted {example} folder."
        )
    return path


def available_categories(root: str | os.PathLike) -> list[str]:
    """Category folder names present under a data root (official or not), sorted."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def category_folder(
    root: Path,
    category: str,
    split: str,
    splits: Sequence[str],
    official: Sequence[str],
    dataset: str,
    note: str = "",
) -> Path:
    """``root/category`` after checking the split name and that the folder exists.

    The errors list the dataset's splits, the categories present and the official names;
    ``note`` is added to an unknown split's message.
    """
    if split not in splits:
        raise DataError(
            f"Unknown split {split!r} for {dataset}. Choose one of: {', '.join(splits)}.{note}"
        )
    folder = root / check_name(category, "category")
    if not folder.is_dir():
        raise DataError(
            f"{folder}: category {category!r} not found. Categories under "
            f"{root}: {', '.join(available_categories(root)) or 'none'}; "
            f"official {dataset} names: {', '.join(official)}."
        )
    return folder


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
        category_dir = category_folder(self.root, category, split, SPLITS, CATEGORIES, "MVTec AD 2")
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
        masks = pair_masks(
            split_dir / "bad", _images(split_dir / "bad"), split_dir / "ground_truth" / "bad"
        )
        samples += [self._sample(path, 1, mask) for path, mask in masks.items()]
        return samples

    def _sample(self, path: Path, label: int | None, mask_path: Path | None) -> Sample:
        category_dir = self.root / self.category
        condition = parse_condition(path.stem)
        return make_sample(path, category_dir, self.split, label, mask_path, condition)

    def __repr__(self) -> str:
        return (
            f"MVTecAD2(root={str(self.root)!r}, category={self.category!r}, "
            f"split={self.split!r}, n={len(self)})"
        )


def _images(folder: Path) -> list[Path]:
    """Image files of one folder (three-digit index, .png), sorted; none if it is absent."""
    return sorted(p for p in folder.glob(IMAGE_GLOB) if p.is_file())
