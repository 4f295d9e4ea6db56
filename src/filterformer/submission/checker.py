"""Check a submission folder before upload: every check of MVTec's upload checker, and more.

Written from a description of what MVTec's ``check_and_prepare_data_for_upload.py`` (shipped
with the dataset) checks, without its code. Unlike that script, which stops at the
first failure, this collects every problem into one report. The checks:

* top level: only the folders ``anomaly_images`` (required) and ``anomaly_images_thresholded``
  (optional: without it the server scores SegF1 and ClassF1 as 0, a warning);
* in each tree: exactly the 8 category folders, in each exactly ``test_private`` and
  ``test_private_mixed``, in each exactly the files ``000_regular.tiff`` ... (``_mixed`` in
  the mixed split; ``.png`` in the thresholded tree) with the official count; no other
  files, folders or hidden files (``.DS_Store``);
* TIFFs: readable, 2-D, float16; PNGs: readable, 2-D, values within {0, 255}.

Added here because a submission that passes MVTec's script can still be scored wrongly:
TIFF values finite; PNGs 8-bit grey (a 16-bit PNG passes MVTec's script, but the server's
reader is unknown) and not 1-bit (PIL mode "1" reads as bool and fails); every map and mask
at the size of its source image (given the dataset root) or, without it, the PNG at the size
of its TIFF.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image

from filterformer.errors import DataError, SubmissionError
from filterformer.io import image_size
from filterformer.progress import progress_bar
from filterformer.submission.mvtec_submission import (
    MAP_SUFFIX,
    MAPS_DIR,
    MASK_SUFFIX,
    MASKS_DIR,
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    expected_stems,
)

Severity = Literal["error", "warning"]
LISTED_NAMES = 5
"""How many missing file names one message lists before "+ k more"."""


@dataclass(frozen=True)
class Problem:
    """One finding: the file or folder concerned and what to do about it."""

    path: Path
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.path}: {self.message}"


@dataclass(frozen=True)
class _File:
    """An expected map or mask file that exists, with where it belongs."""

    path: Path
    category: str
    split: str
    stem: str


def _entry_problem(entry: Path, allowed: str) -> Problem:
    """The problem with an entry that is not allowed in its folder."""
    if entry.name.startswith("."):
        return Problem(
            entry,
            "hidden entry (e.g. left by macOS Finder or an editor); the server refuses any "
            "extra file: delete it.",
        )
    kind = "folder" if entry.is_dir() else "file"
    return Problem(entry, f"superfluous {kind}; this folder may hold only {allowed}: remove it.")


def _check_folders(
    folder: Path, expected: Iterable[str], what: str
) -> tuple[list[str], list[Problem]]:
    """Require exactly the sub-folders ``expected``; return those present and the problems."""
    expected = sorted(expected)
    allowed = f"the {what} folders {', '.join(expected)}"
    present, problems = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name in expected:
            present.append(entry.name)
        else:
            problems.append(_entry_problem(entry, allowed))
    for name in expected:
        if name not in present:
            hint = "the server refuses partial submissions; " if what == "category" else ""
            problems.append(
                Problem(folder / name, f"missing {what} folder; {hint}export every {what}.")
            )
    return present, problems


def _check_split(folder: Path, stems: list[str], suffix: str) -> tuple[list[str], list[Problem]]:
    """Require exactly the files ``<stem><suffix>``; return the stems present and the problems."""
    entries = sorted(folder.iterdir())
    expected = {stem + suffix for stem in stems}
    naming = f"{stems[0]}{suffix} ... {stems[-1]}{suffix}" if stems else "no files"
    problems = []
    if len(entries) != len(stems):
        problems.append(
            Problem(folder, f"expected {len(stems)} files ({naming}), found {len(entries)}.")
        )
    present = []
    for entry in entries:
        if entry.name in expected and entry.is_file():
            present.append(entry.name[: -len(suffix)])
        elif entry.name.startswith(".") or entry.is_dir():
            problems.append(_entry_problem(entry, f"the files {naming}"))
        elif entry.suffix != suffix:
            problems.append(
                Problem(entry, f"expected only {suffix} files here; write it as {suffix}.")
            )
        else:
            problems.append(
                Problem(entry, f"unexpected file name; files must be named {naming}: rename it.")
            )
    missing = sorted(expected - {stem + suffix for stem in present})
    if missing:
        listed = ", ".join(missing[:LISTED_NAMES])
        more = f" + {len(missing) - LISTED_NAMES} more" if len(missing) > LISTED_NAMES else ""
        problems.append(
            Problem(
                folder,
                f"{len(missing)} files missing: {listed}{more}; write a map for every image "
                "of the split (a re-run of ff-predict resumes).",
            )
        )
    return present, problems


def _check_layout(
    tree: Path, suffix: str, counts: Mapping[str, int]
) -> tuple[list[_File], list[Problem]]:
    """Folder structure and file names of one tree (maps or masks)."""
    files: list[_File] = []
    categories, problems = _check_folders(tree, counts, "category")
    for category in categories:
        splits, found = _check_folders(tree / category, PRIVATE_SPLITS, "split")
        problems += found
        for split in splits:
            folder = tree / category / split
            stems, found = _check_split(folder, expected_stems(split, counts[category]), suffix)
            problems += found
            files += [_File(folder / (stem + suffix), category, split, stem) for stem in stems]
    return files, problems


def _source_size_problems(data_root: Path, item: _File, shape: tuple[int, int]) -> list[Problem]:
    """Whether a map or mask of ``shape`` has the size of the dataset image it belongs to."""
    source = data_root / item.category / item.split / f"{item.stem}.png"
    try:
        reference = image_size(source)
    except DataError as err:
        return [Problem(item.path, f"cannot check its size: {err}")]
    return [] if shape == reference else [_size_problem(item, shape, reference, "its source image")]


def _size_problem(
    item: _File, shape: tuple[int, int], reference: tuple[int, int], of: str
) -> Problem:
    return Problem(
        item.path,
        f"is {shape[0]}x{shape[1]} (HxW) but {of} is {reference[0]}x{reference[1]}; write "
        "maps at the original image size.",
    )


def _check_map(item: _File, data_root: Path | None) -> tuple[tuple[int, int] | None, list[Problem]]:
    """Content of one TIFF; returns its (H, W) when it is a 2-D map."""
    try:
        amap = tifffile.imread(item.path)
    except Exception as err:  # tifffile raises many types for broken files
        return None, [Problem(item.path, f"not a readable TIFF ({err}); re-export it.")]
    if amap.ndim != 2:
        return None, [
            Problem(
                item.path,
                f"not a single-channel image (shape {amap.shape}); write 2-D H x W maps.",
            )
        ]
    problems = []
    if amap.dtype != np.float16:
        problems.append(
            Problem(
                item.path,
                f"is of type {amap.dtype}, not float16; convert the maps to float16 "
                "(after a MapRescale that keeps them below 65504) and re-export.",
            )
        )
    finite = np.isfinite(amap)
    if not finite.all():
        nan = int(np.isnan(amap).sum())
        problems.append(
            Problem(
                item.path,
                f"holds {nan} NaN and {finite.size - finite.sum() - nan} infinite values, which "
                "cannot be ranked; rescale the scores (MapRescale) so they are finite in float16.",
            )
        )
    if data_root is not None:
        problems += _source_size_problems(data_root, item, amap.shape)
    return amap.shape, problems


def _check_mask(
    item: _File, data_root: Path | None
) -> tuple[tuple[int, int] | None, list[Problem]]:
    """Content of one thresholded PNG; returns its (H, W) when it is 2-D."""
    fix = "save it as 8-bit grey (PIL mode 'L') with values 0 and 255 (io.write_mask_png)."
    try:
        with Image.open(item.path) as image:
            mode = image.mode
            mask = np.asarray(image)
    except Exception as err:  # PIL raises many types for broken files
        return None, [Problem(item.path, f"not a readable PNG ({err}); re-export it.")]
    if mode == "1":
        return mask.shape, [
            Problem(item.path, f"is a 1-bit PNG (mode '1'), which reads as bool and fails; {fix}")
        ]
    if mask.ndim != 2:
        return None, [Problem(item.path, f"not a single-channel image (mode {mode!r}); {fix}")]
    problems = []
    values = np.unique(mask)
    if not np.isin(values, (0, 255)).all():
        shown = ", ".join(str(v) for v in values[:LISTED_NAMES])
        problems.append(
            Problem(
                item.path,
                f"values ({shown}{', ...' if values.size > LISTED_NAMES else ''}) are not in "
                "{0, 255}; set anomaly-free pixels to 0 and anomalous ones to 255.",
            )
        )
    if mode != "L":
        problems.append(Problem(item.path, f"is mode {mode!r}, not 8-bit grey; {fix}"))
    if data_root is not None:
        problems += _source_size_problems(data_root, item, mask.shape)
    return mask.shape, problems


def check_submission(
    directory: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    counts: Mapping[str, int] = OFFICIAL_COUNTS,
    *,
    workers: int = 8,
    progress: bool = False,
) -> list[Problem]:
    """All problems of a submission folder (empty when it is ready to pack).

    ``data_root`` is the MVTec AD 2 root; with it every map's size is compared with its
    image's. ``counts`` maps each category to its number of images per private split.
    """
    root = Path(directory)
    if not root.is_dir():
        return [Problem(root, "not a directory; pass the folder that holds anomaly_images/.")]
    trees = {MAPS_DIR: MAP_SUFFIX, MASKS_DIR: MASK_SUFFIX}
    problems = []
    for entry in sorted(root.iterdir()):
        if not (entry.is_dir() and entry.name in trees):
            problems.append(_entry_problem(entry, f"the folders {MAPS_DIR} and {MASKS_DIR}"))
    if not (root / MAPS_DIR).is_dir():
        problems.append(
            Problem(
                root / MAPS_DIR,
                f"missing; a submission holds {MAPS_DIR}/<category>/<split>/<stem>.tiff "
                "(ff-predict --submission writes it).",
            )
        )
    if not (root / MASKS_DIR).is_dir():
        problems.append(
            Problem(
                root / MASKS_DIR,
                "missing; without thresholded maps the server scores SegF1 and ClassF1 as 0. "
                "Export with a threshold (thresholds.json of the run) to write them.",
                severity="warning",
            )
        )
    jobs = []
    for tree, suffix in trees.items():
        if (root / tree).is_dir():
            files, found = _check_layout(root / tree, suffix, counts)
            problems += found
            check = _check_map if tree == MAPS_DIR else _check_mask
            jobs += [(check, item) for item in files]
    source = None if data_root is None else Path(data_root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda job: job[0](job[1], source), jobs)
        results = list(progress_bar(results, total=len(jobs), desc="check", enabled=progress))
    shapes: dict[tuple[str, str, str], tuple[int, int]] = {}
    for (check, item), (shape, found) in zip(jobs, results, strict=True):
        problems += found
        if shape is None:
            continue
        key = (item.category, item.split, item.stem)
        if check is _check_map:
            shapes[key] = shape
        elif source is None and key in shapes and shape != shapes[key]:
            problems.append(_size_problem(item, shape, shapes[key], "its TIFF map"))
    return problems


def format_report(problems: list[Problem], limit: int = 50) -> str:
    """The problems as lines, at most ``limit`` of them."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def require_valid(
    directory: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    counts: Mapping[str, int] = OFFICIAL_COUNTS,
    *,
    progress: bool = False,
) -> list[Problem]:
    """Raise SubmissionError listing every error; return the warnings otherwise."""
    problems = check_submission(directory, data_root, counts, progress=progress)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise SubmissionError(
            f"{directory}: {len(errors)} problem(s) would fail the upload:\n"
            + format_report(errors)
        )
    return problems
