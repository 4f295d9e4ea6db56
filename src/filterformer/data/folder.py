"""Custom data: plain folders of images, labelled by folder (as anomalib's Folder data) or by masks.

A test folder is read in one of three ways (:func:`folder_test_set`):

- **By subfolder** (the factory case): ``test_dir/good/`` holds normal images and every other
  subfolder (``scratch/``, ``ng/``, ...) anomalous ones (:class:`LabelledFolders`); or two
  folders are named, ``normal_dir`` and ``abnormal_dir``. Masks are optional: an anomalous
  image's mask is ``<stem>.png`` or ``<stem>_mask.png`` in ``mask_dir`` or in its
  ``<subfolder>/`` there. Without masks the labels still hold (image metrics only).
- **Flat, with** ``mask_dir`` (:class:`ImageFolderDataset`): an image whose mask has a
  positive pixel is anomalous (label 1); an image with an empty mask, or none, is normal.
- **Flat, without masks**: labels are unknown (label None), as in the private MVTec AD 2
  splits: such a folder can be predicted, not evaluated.

Training folders are flat and every image in them is normal (``split="train"``).

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
from filterformer.io import check_name, image_size, read_mask

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FOLDER_SPLITS = ("train", "test")
CONDITION = "unknown"
"""Custom images carry no lighting condition in their names."""
NORMAL_FOLDER = "good"
"""The subfolder of a test folder that holds the normal images (anomalib's and MVTec's name)."""
ABNORMAL_FOLDER = "bad"
"""Where the images of a named ``abnormal_dir`` appear in outputs (``bad/<stem>``)."""
MASK_SUFFIX = "_mask"


class ImageFolderDataset(SampleSequence):
    """The images of one folder as samples sorted by relative path (labels from ``mask_dir``).

    ``category`` defaults to the folder's name; ``relpath`` of each sample is its path below
    the folder without suffix (its stem, unless ``recursive`` reads subfolders too).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        split: str = "test",
        mask_dir: str | os.PathLike | None = None,
        category: str | None = None,
        recursive: bool = False,
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
        self.category = check_name(category or self.image_dir.name, "category")
        images = image_files(self.image_dir, recursive)
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
        relpath = PurePosixPath(*path.relative_to(self.image_dir).with_suffix("").parts)
        return _folder_sample(path, self.category, self.split, relpath, label, mask_path)

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({str(self.image_dir)!r}, split={self.split!r}, "
            f"category={self.category!r}, n={len(self)})"
        )


class LabelledFolders(SampleSequence):
    """Test images labelled by their folder: ``(name, folder, label)`` groups, optional masks.

    Each image's ``relpath`` is ``<name>/<path below its folder>`` (e.g. ``scratch/001``), so
    outputs keep the folders apart. The mask of an anomalous image ``<name>/<stem>`` is
    ``<stem>.png`` or ``<stem>_mask.png`` in ``mask_dir/<name>/`` or in ``mask_dir``; normal
    images need none (their ground truth is empty) and an anomalous image may lack one (its
    label still counts for the image metrics; see :func:`missing_pixel_truth`).
    """

    def __init__(
        self,
        groups: Sequence[tuple[str, Path, int]],
        mask_dir: str | os.PathLike | None = None,
        category: str = "custom",
    ) -> None:
        self.category = category
        masks = _mask_index(_existing_dir(mask_dir, "mask folder")) if mask_dir else {}
        samples, used = [], {}
        for name, folder, label in groups:
            for path in image_files(folder, recursive=True):
                relpath = PurePosixPath(name, *path.relative_to(folder).with_suffix("").parts)
                mask = _mask_of(masks, name, path.stem) if label else None
                if mask is not None and used.setdefault(mask, relpath) != relpath:
                    raise DataError(
                        f"{mask}: matches images {used[mask]} and {relpath}. Put the masks in "
                        "subfolders named as the image folders, or rename one image."
                    )
                samples.append(_folder_sample(path, category, "test", relpath, label, mask))
        self.samples = tuple(sorted(samples, key=lambda s: s.relpath))

    def __repr__(self) -> str:
        labels = [s.label for s in self.samples]
        return (
            f"LabelledFolders(category={self.category!r}, normal={labels.count(0)}, "
            f"anomalous={labels.count(1)})"
        )


def folder_test_set(
    test_dir: str | os.PathLike | None,
    mask_dir: str | os.PathLike | None = None,
    category: str | None = None,
    normal_dir: str | os.PathLike | None = None,
    abnormal_dir: str | os.PathLike | None = None,
) -> SampleSequence:
    """The labelled test images of a folder run (the module docstring says how they are read).

    ``normal_dir`` / ``abnormal_dir`` (``data.normal_test_dir`` / ``data.abnormal_dir``) take
    precedence over ``test_dir``; a ``test_dir`` with a ``good/`` subfolder is read by folder.
    """
    if normal_dir is not None or abnormal_dir is not None:
        groups = [(NORMAL_FOLDER, normal_dir, 0), (ABNORMAL_FOLDER, abnormal_dir, 1)]
        named = [(n, _existing_dir(d, f"{n} test folder"), lbl) for n, d, lbl in groups if d]
        return LabelledFolders(named, mask_dir, category or "custom")
    if test_dir is None:
        raise ConfigError(
            "no test images: set data.test_dir (with good/ and defect subfolders), or "
            "data.normal_test_dir and data.abnormal_dir."
        )
    folder = _existing_dir(test_dir, "test folder")
    subfolders = _subfolders(folder)
    if NORMAL_FOLDER not in subfolders:
        return ImageFolderDataset(folder, "test", mask_dir, category)
    loose = [p.name for p in _direct_images(folder)]
    if loose:
        raise DataError(
            f"{folder}: images {', '.join(loose[:3])} lie beside the subfolders; move them into "
            f"{NORMAL_FOLDER}/ (normal) or a defect subfolder (anomalous)."
        )
    groups = [(name, folder / name, int(name != NORMAL_FOLDER)) for name in subfolders]
    return LabelledFolders(groups, mask_dir, category or folder.name)


class ImageList(SampleSequence):
    """Given samples as a dataset (e.g. the one file of ``ff-predict --images FILE``)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = tuple(samples)


def images_to_predict(
    path: str | os.PathLike, category: str, recursive: bool = False
) -> SampleSequence:
    """The images of ``ff-predict --images``: one file, a folder (every subfolder too, without
    labels, with ``recursive``), or a test folder with ``good/`` and defect subfolders (then
    labelled by folder)."""
    path = Path(path).expanduser()
    if path.is_file():
        return ImageList(file_samples([path], category))
    folder = _existing_dir(path, "image folder")
    if not recursive and (folder / NORMAL_FOLDER).is_dir() and not _direct_images(folder):
        return folder_test_set(folder, category=category)
    return ImageFolderDataset(folder, "test", category=category, recursive=recursive)


def missing_pixel_truth(samples: Sequence[Sample]) -> str | None:
    """Why ``samples`` have no pixel ground truth (None: every image's mask is known).

    Pixel metrics (AU-PRO, SegF1) need the mask of every anomalous image; image metrics need
    only the labels (a reason that starts with ``labels`` means they are missing too).
    """
    unknown = sum(s.label is None for s in samples)
    if unknown:
        return (
            f"labels unknown for {unknown} of {len(samples)} images: put normal test images in "
            f"{NORMAL_FOLDER}/ and defective ones in other subfolders of the test folder "
            "(or give their masks)"
        )
    anomalous = [s for s in samples if s.label == 1]
    without = sum(s.mask_path is None for s in anomalous)
    if without:
        return f"{without} of {len(anomalous)} defective images have no ground-truth mask"
    return None


def _folder_sample(
    path: Path,
    category: str,
    split: str,
    relpath: PurePosixPath,
    label: int | None,
    mask_path: Path | None,
) -> Sample:
    height, width = image_size(path)
    return Sample(
        path=path,
        category=category,
        split=split,
        relpath=relpath,
        label=label,
        condition=CONDITION,
        mask_path=mask_path,
        height=height,
        width=width,
    )


def _existing_dir(folder: str | os.PathLike, what: str) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        if path.is_file():
            raise DataError(f"{path}: a file, but a {what} is needed. Give its folder.")
        raise DataError(f"{path}: {what} not found. Check the path.")
    return path


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _direct_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of a folder (and its subfolders with ``recursive``), sorted by path
    without suffix; two files that differ only in suffix are ambiguous, an empty folder an error."""
    if recursive:
        found = [
            p
            for p in folder.rglob("*")
            if _is_image(p)
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
    else:
        found = _direct_images(folder)
    by_key: dict[Path, Path] = {}
    for path in sorted(found):
        check_name(path.stem, f"{path}: file name without its extension")
        key = path.relative_to(folder).with_suffix("")
        if key in by_key:
            raise DataError(
                f"{path}: has the same stem as {by_key[key]}, so their outputs would "
                "collide. Rename or remove one of them."
            )
        by_key[key] = path
    if not by_key:
        subfolders = _subfolders(folder)
        hint = (
            f"; it has only subfolders ({', '.join(subfolders[:4])}): point at one of them, or "
            "read them all (ff-predict --recursive)"
            if subfolders and not recursive
            else ""
        )
        raise DataError(
            f"{folder}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)}){hint}."
        )
    return [by_key[key] for key in sorted(by_key)]


def _masks(mask_dir: Path, images: Sequence[Path]) -> dict[str, Path]:
    """Image stem -> mask file; refuses ambiguous masks and masks without an image."""
    stems = {p.stem for p in images}
    masks: dict[str, Path] = {}
    for path in sorted(mask_dir.glob("*.png")):
        if path.name.startswith("."):
            continue
        stem = path.stem
        if stem not in stems and stem.endswith(MASK_SUFFIX):
            stem = stem[: -len(MASK_SUFFIX)]
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


def _mask_index(mask_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """(subfolder or "", stem without ``_mask``) -> the PNG masks under ``mask_dir``."""
    index: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(mask_dir.rglob("*.png")):
        if path.name.startswith("."):
            continue
        parent = path.parent.relative_to(mask_dir).as_posix().removeprefix(".")
        stem = path.stem.removesuffix(MASK_SUFFIX)
        for key in {(parent, stem), (parent, path.stem)}:
            index.setdefault(key, []).append(path)
    return index


def _mask_of(index: dict[tuple[str, str], list[Path]], folder: str, stem: str) -> Path | None:
    """The mask of image ``<folder>/<stem>``: in the mask folder's ``<folder>/``, else on top."""
    found = index.get((folder, stem)) or index.get(("", stem)) or []
    if len(found) > 1:
        raise DataError(
            f"{found[0]} and {found[1]}: two masks for image {folder}/{stem}. Keep one."
        )
    return found[0] if found else None


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
