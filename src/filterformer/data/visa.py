"""VisA on disk: one category and split of the official ``split_csv/1cls.csv`` split.

The VisA archive (Zou et al., SPot-the-Difference, ECCV 2022) holds one folder per category
and ``split_csv/``; the one-class split that the INP-Former code evaluates on is
``split_csv/1cls.csv``, one row per image with the columns ``object`` (category), ``split``
(``train`` / ``test``), ``label`` (``normal`` / ``anomaly``), ``image`` and ``mask`` (paths
relative to the root; ``mask`` is empty for normal images). Masks mark defects with any
non-zero value (the defect's index), so every non-zero pixel is anomalous. The files are read
where they are; nothing is converted or written.

VisA has no validation split: the INP-Former protocol needs none, see docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from filterformer.data.folder import CONDITION
from filterformer.data.mvtec_ad import NO_VALIDATION
from filterformer.data.mvtec_ad2 import category_folder, resolve_data_root
from filterformer.data.sample import Sample, SampleSequence, make_sample
from filterformer.errors import DataError

CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
"""The 12 VisA categories."""

SPLITS = ("train", "test")
SPLIT_FILE = "split_csv/1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


class VisA(SampleSequence):
    """The samples of one category and split listed in a VisA split file, sorted by relpath.

    ``relpath`` is the image path relative to the category folder without suffix, e.g.
    ``Data/Images/Anomaly/000``. Construction reads the split file and checks every listed
    file; any problem raises :class:`DataError` naming the file (and the row).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        category: str,
        split: str,
        split_file: str = SPLIT_FILE,
    ) -> None:
        self.root = resolve_data_root(root, example="VisA_20220922")
        self.split_file = self.root / split_file
        rows = read_split_file(self.split_file)
        present = sorted({row["object"] for _, row in rows})
        if category not in present:
            raise DataError(
                f"{self.split_file}: no rows for category {category!r}. Categories in the "
                f"file: {', '.join(present) or 'none'}; official VisA names: "
                f"{', '.join(CATEGORIES)}."
            )
        self.category_dir = category_folder(
            self.root, category, split, SPLITS, CATEGORIES, "VisA", NO_VALIDATION
        )
        self.category = category
        self.split = split
        samples = [
            self._sample(line, row)
            for line, row in rows
            if row["object"] == category and row["split"] == split
        ]
        if not samples:
            raise DataError(
                f"{self.split_file}: no {split!r} rows for category {category!r}. "
                "Restore the split file from the dataset archive."
            )
        self.samples: tuple[Sample, ...] = tuple(sorted(samples, key=lambda s: s.relpath))

    def _sample(self, line: int, row: dict[str, str]) -> Sample:
        """The sample of one split-file row (``line``: its line number, for messages)."""
        where = f"{self.split_file}, line {line}"
        label = LABELS.get(row["label"])
        if label is None:
            raise DataError(
                f"{where}: label {row['label']!r} is unknown; expected one of {', '.join(LABELS)}."
            )
        if label and self.split == "train":
            raise DataError(f"{where}: an anomalous training image; training images are normal.")
        path = self._listed_file(row["image"], where)
        mask_path = None
        if label:
            if not row["mask"]:
                raise DataError(f"{where}: anomalous image without a mask path.")
            mask_path = self._listed_file(row["mask"], where)
        return make_sample(path, self.category_dir, self.split, label, mask_path, CONDITION)

    def _listed_file(self, relative: str, where: str) -> Path:
        path = self.root / relative
        if not path.is_file():
            raise DataError(f"{path}: file not found (listed in {where}). Restore it.")
        if self.category_dir not in path.parents:
            raise DataError(
                f"{where}: {relative} lies outside the category folder {self.category_dir}."
            )
        return path

    def __repr__(self) -> str:
        return (
            f"VisA(root={str(self.root)!r}, category={self.category!r}, "
            f"split={self.split!r}, n={len(self)})"
        )


def read_split_file(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row of a VisA split CSV, its columns checked."""
    if not path.is_file():
        raise DataError(
            f"{path}: VisA split file not found. Point the data root at the extracted VisA "
            f"folder (it holds {SPLIT_FILE} and the category folders)."
        )
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; a VisA split file has the "
                f"header {','.join(COLUMNS)}."
            )
        return [(reader.line_num, {k: (row[k] or "").strip() for k in COLUMNS}) for row in reader]
