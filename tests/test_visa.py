"""VisA discovery through split_csv/1cls.csv: rows, labels, masks, and every bad input."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from filterformer.data.visa import CATEGORIES, COLUMNS, SPLITS, VisA
from filterformer.errors import DataError


def split_file(root: Path) -> Path:
    return root / "split_csv" / "1cls.csv"


def test_official_names():
    assert len(CATEGORIES) == 12 and {"candle", "pcb4", "pipe_fryum"} <= set(CATEGORIES)
    assert SPLITS == ("train", "test")
    assert COLUMNS == ("object", "split", "label", "image", "mask")


def test_generated_tree_is_read_from_the_split_file(visa_root: Path):
    train = VisA(visa_root, "candle", "train")
    assert [str(s.relpath) for s in train] == [f"Data/Images/Normal/{i:04d}" for i in range(6)]
    assert all(s.label == 0 and s.mask_path is None for s in train)
    test = VisA(visa_root, "candle", "test")
    anomalies = [(f"Data/Images/Anomaly/{i:03d}", 1) for i in range(3)]
    normal = [(f"Data/Images/Normal/{i:04d}", 0) for i in (6, 7)]
    assert [(str(s.relpath), s.label) for s in test] == anomalies + normal
    bad = test[1]
    assert bad.mask_path == visa_root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    assert bad.path.suffix == ".JPG" and bad.relpath == PurePosixPath("Data/Images/Anomaly/001")
    assert (bad.category, bad.split, bad.shape) == ("candle", "test", (64, 80))
    # VisA masks hold the defect index (here 2), not 255: every non-zero pixel is anomalous
    assert bad.load_mask().sum() == 12 * 14
    assert not test[3].load_mask().any()


@pytest.mark.parametrize(
    ("category", "split", "message"),
    [
        ("pcb1", "test", r"no rows for category 'pcb1'.*candle, cashew"),  # not in the file
        ("cashew", "train", r"category 'cashew' not found"),  # listed, but no folder
        ("candle", "validation", r"Unknown split 'validation' for VisA.*no validation split"),
    ],
)
def test_bad_category_or_split_is_named(visa_root: Path, category, split, message):
    with pytest.raises(DataError, match=message):
        VisA(visa_root, category, split)


def test_missing_split_file_says_what_the_root_is(tmp_path: Path):
    with pytest.raises(DataError, match=r"1cls.csv: VisA split file not found.*extracted VisA"):
        VisA(tmp_path, "candle", "train")


@pytest.mark.parametrize(
    ("old", "new", "split", "message"),
    [
        ("label,", "kind,", "train", r"missing column\(s\) label"),
        (
            "candle,train,normal,candle/Data/Images/Normal/0001",
            "candle,train,good,candle/Data/Images/Normal/0001",
            "train",
            r"1cls.csv, line 3: label 'good' is unknown",
        ),
        (
            ",candle/Data/Masks/Anomaly/001.png",
            ",",
            "test",
            r"line 11: anomalous image without a mask path",
        ),
        ("candle,test,anomaly", "candle,train,anomaly", "train", r"an anomalous training image"),
    ],
)
def test_bad_split_file_rows_are_named(visa_root: Path, old, new, split, message):
    text = split_file(visa_root).read_text()
    split_file(visa_root).write_text(text.replace(old, new, 1))
    with pytest.raises(DataError, match=message):
        VisA(visa_root, "candle", split)


def test_listed_image_that_is_missing(visa_root: Path):
    (visa_root / "candle" / "Data" / "Images" / "Normal" / "0003.JPG").unlink()
    with pytest.raises(DataError, match=r"0003.JPG: file not found \(listed in .*line 5\)"):
        VisA(visa_root, "candle", "train")
