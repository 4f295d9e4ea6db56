"""The MVTec AD 2 benchmark-server submission format: folder names, splits, counts, paths.

A submission is a folder holding ``anomaly_images/<category>/<split>/<stem>.tiff`` (2-D
float16 maps at the original image size) and, for SegF1 and ClassF1, the binary maps
``anomaly_images_thresholded/<category>/<split>/<stem>.png`` (8-bit grey, values 0 and 255).
The splits are the two private test sets, whose file stems are ``000_regular`` ...
in test_private and ``000_mixed`` ... in test_private_mixed. The counts are the ones MVTec's
upload checker demands (MVTec's check_and_prepare_data_for_upload.py, shipped with the dataset).

The same layout with the relative path of any sample (``test_public/bad/000_regular``) is our
local format for test_public, which ``ff-eval --maps`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from filterformer.errors import DataError
from filterformer.io import output_path, resolved

MAPS_DIR = "anomaly_images"
MASKS_DIR = "anomaly_images_thresholded"
MAP_SUFFIX = ".tiff"
MASK_SUFFIX = ".png"

PRIVATE_SPLITS: dict[str, str] = {"test_private": "regular", "test_private_mixed": "mixed"}
"""Private split -> the lighting condition in each file stem."""

OFFICIAL_COUNTS: dict[str, int] = {
    "can": 321,
    "fabric": 314,
    "fruit_jelly": 255,
    "rice": 277,
    "sheet_metal": 142,
    "vial": 276,
    "wallplugs": 232,
    "walnuts": 228,
}
"""Images per category in each private split (the same for both), as MVTec's checker demands."""


def expected_stems(split: str, count: int) -> list[str]:
    """File stems the server expects in a private split: ``000_<cond>`` ... ``<count-1>_<cond>``."""
    return [f"{index:03d}_{PRIVATE_SPLITS[split]}" for index in range(count)]


def _relative(relpath: str | PurePosixPath) -> PurePosixPath:
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(
            f"{relpath}: not a sample path relative to its category folder "
            "(e.g. 'test_private/000_regular')."
        )
    return rel


def map_path(root: str | os.PathLike, category: str, relpath: str | PurePosixPath) -> Path:
    """Path of a sample's map: ``<root>/anomaly_images/<category>/<relpath>.tiff``, checked
    to stay inside ``root`` (:func:`~filterformer.io.output_path`)."""
    rel = _relative(relpath)
    return output_path(root, MAPS_DIR, category, *rel.parent.parts, rel.name + MAP_SUFFIX)


def mask_path(root: str | os.PathLike, category: str, relpath: str | PurePosixPath) -> Path:
    """Path of a sample's mask: ``<root>/anomaly_images_thresholded/<category>/<relpath>.png``,
    checked to stay inside ``root``."""
    rel = _relative(relpath)
    return output_path(root, MASKS_DIR, category, *rel.parent.parts, rel.name + MASK_SUFFIX)


def record_path(root: str | os.PathLike) -> Path:
    """The export record beside a submission folder: ``<root>.rescale.json``.

    It lives outside the folder because the server refuses any file other than the maps.
    """
    root = resolved(root)
    return root.with_name(root.name + ".rescale.json")
