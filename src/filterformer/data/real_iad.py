"""Real-IAD on disk: one category and split of its JSON split files, as INP-Former reads it.

The layout the INP-Former code reads (its ``RealIADDataset``): images and masks under
``<root>/realiad_1024/<category>/``, and one split file per category,
``<root>/realiad_jsons/realiad_jsons/<category>.json``, holding the lists ``train`` and
``test``; each entry names ``image_path`` and ``mask_path`` (relative to the category folder)
and ``anomaly_class``, ``"OK"`` for a normal image and a defect code otherwise. Other keys
(``meta``, ``category``, ...) are ignored. Masks mark defects with any non-zero value. The
files are read where they are; nothing is converted or written.

Real-IAD (Wang et al., Real-IAD, CVPR 2024) has no validation split: the INP-Former protocol
needs none, see docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from filterformer.data.folder import CONDITION
from filterformer.data.mvtec_ad import NO_VALIDATION
from filterformer.data.mvtec_ad2 import category_folder, resolve_data_root
from filterformer.data.sample import Sample, SampleSequence, make_sample
from filterformer.errors import DataError

CATEGORIES = (
    "audiojack",
    "bottle_cap",
    "button_battery",
    "end_cap",
    "eraser",
    "fire_hood",
    "mint",
    "mounts",
    "pcb",
    "phone_battery",
    "plastic_nut",
    "plastic_plug",
    "porcelain_doll",
    "regulator",
    "rolled_strip_base",
    "sim_card_set",
    "switch",
    "tape",
    "terminalblock",
    "toothbrush",
    "toy",
    "toy_brick",
    "transistor1",
    "u_block",
    "usb",
    "usb_adaptor",
    "vcpill",
    "wooden_beads",
    "woodstick",
    "zipper",
)
"""The 30 Real-IAD categories (the INP-Former code's list, sorted)."""

SPLITS = ("train", "test")
IMAGE_FOLDER = "realiad_1024"
JSON_FOLDER = "realiad_jsons/realiad_jsons"
NORMAL = "OK"
"""``anomaly_class`` of a normal image (INP-Former code: ``anomaly_class != 'OK'`` is a defect)."""
KEYS = ("image_path", "mask_path", "anomaly_class")


class RealIAD(SampleSequence):
    """The samples of one category and split listed in its Real-IAD JSON, sorted by relpath.

    ``relpath`` is ``image_path`` without suffix, e.g. ``NG/QS/S0001/audiojack_0001_NG_QS_C1``.
    Construction reads the split file and checks every listed file; any problem raises
    :class:`DataError` naming the file (and the entry).
    """

    def __init__(self, root: str | os.PathLike | None, category: str, split: str) -> None:
        self.root = resolve_data_root(root, example="Real-IAD")
        self.category_dir = category_folder(
            self.root / IMAGE_FOLDER, category, split, SPLITS, CATEGORIES, "Real-IAD", NO_VALIDATION
        )
        self.category = category
        self.split = split
        self.split_file = self.root / JSON_FOLDER / f"{category}.json"
        entries = read_split_file(self.split_file, split)
        samples = [self._sample(index, entry) for index, entry in enumerate(entries)]
        if not samples:
            raise DataError(
                f"{self.split_file}: the {split!r} list is empty. Restore the split file from "
                "the dataset archive."
            )
        self.samples: tuple[Sample, ...] = tuple(sorted(samples, key=lambda s: s.relpath))

    def _sample(self, index: int, entry: dict[str, Any]) -> Sample:
        """The sample of entry ``index`` of the split's list."""
        where = f"{self.split_file}, {self.split}[{index}]"
        label = int(entry["anomaly_class"] != NORMAL)
        if label and self.split == "train":
            raise DataError(
                f"{where}: an anomalous training image (anomaly_class "
                f"{entry['anomaly_class']!r}); training images are normal ({NORMAL!r})."
            )
        path = self._listed_file(entry["image_path"], where)
        mask_path = None
        if label:
            if not entry["mask_path"]:
                raise DataError(f"{where}: anomalous image without a mask_path.")
            mask_path = self._listed_file(entry["mask_path"], where)
        return make_sample(path, self.category_dir, self.split, label, mask_path, CONDITION)

    def _listed_file(self, relative: str, where: str) -> Path:
        path = Path(os.path.normpath(self.category_dir / relative))
        if self.category_dir not in path.parents:
            raise DataError(
                f"{where}: {relative} lies outside the category folder {self.category_dir}."
            )
        if not path.is_file():
            raise DataError(f"{path}: file not found (listed in {where}). Restore it.")
        return path

    def __repr__(self) -> str:
        return (
            f"RealIAD(root={str(self.root)!r}, category={self.category!r}, "
            f"split={self.split!r}, n={len(self)})"
        )


def read_split_file(path: Path, split: str) -> list[dict[str, Any]]:
    """The entries of ``split`` in a Real-IAD category JSON, each with its keys checked."""
    if not path.is_file():
        raise DataError(
            f"{path}: Real-IAD split file not found. Point the data root at the folder that "
            f"holds {IMAGE_FOLDER}/ and {JSON_FOLDER.split('/')[0]}/ (it has "
            f"{JSON_FOLDER}/<category>.json)."
        )
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a JSON file ({err}). Restore it.") from None
    entries = document.get(split) if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{path}: no {split!r} list. A Real-IAD split file has 'train' and 'test'.")
    for index, entry in enumerate(entries):
        missing = [k for k in KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DataError(f"{path}, {split}[{index}]: missing key(s) {', '.join(missing)}.")
    return entries
