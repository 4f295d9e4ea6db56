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
    assert [str(s.relpath) for s in test] == [
        "Data/Images/Anomaly/000",
        "Data/Images/Anomaly/001",
        "Data/Images/Anomaly/002",
        "Data/Images/Normal/0006",
        "Data/Images/Normal/0007",
    ]
    assert [s.label for s in test] == [1, 1, 1, 0, 0]
    bad = test[1]
    assert bad.mask_path == visa_root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    assert bad.path.suffix == ".JPG" and bad.relpath == PurePosixPath("Data/Images/Anomaly/001")
    assert (bad.category, bad.split, bad.shape) == ("candle", "test", (64, 80))
    # VisA masks hold the defect index (here 2), not 255: every non-zero pixel is anomalous
    assert bad.load_mask().sum() == 12 * 14
    assert not test[3].load_mask().any()


def test_category_without_rows_lists_the_file_categories(visa_root: Path):
    with pytest.raises(DataError, match=r"no rows for category 'pcb1'.*candle, cashew"):
        VisA(visa_root, "pcb1", "test")


def test_listed_category_without_its_folder(visa_root: Path):
    with pytest.raises(DataError, match=r"category 'cashew' not found"):
        VisA(visa_root, "cashew", "train")


def test_unknown_split(visa_root: Path):
    with pytest.raises(DataError, match=r"Unknown split 'validation' for VisA"):
        VisA(visa_root, "candle", "validation")


def test_missing_split_file_says_what_the_root_is(tmp_path: Path):
    with pytest.raises(DataError, match=r"1cls.csv: VisA split file not found.*extracted VisA"):
        VisA(tmp_path, "candle", "train")


def test_missing_column_is_named(visa_root: Path):
    text = split_file(visa_root).read_text().replace("label,", "kind,", 1)
    split_file(visa_root).write_text(text)
    with pytest.raises(DataError, match=r"missing column\(s\) label"):
        VisA(visa_root, "candle", "train")


def test_unknown_label_names_the_line(visa_root: Path):
    lines = split_file(visa_root).read_text().splitlines()
    lines[2] = lines[2].replace(",normal,", ",good,")
    split_file(visa_root).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"1cls.csv, line 3: label 'good' is unknown"):
        VisA(visa_root, "candle", "train")


def test_listed_image_that_is_missing(visa_root: Path):
    (visa_root / "candle" / "Data" / "Images" / "Normal" / "0003.JPG").unlink()
    with pytest.raises(DataError, match=r"0003.JPG: file not found \(listed in .*line 5\)"):
        VisA(visa_root, "candle", "train")


def test_anomaly_without_mask_path(visa_root: Path):
    text = split_file(visa_root).read_text().replace(",candle/Data/Masks/Anomaly/001.png", ",")
    split_file(visa_root).write_text(text)
    with pytest.raises(DataError, match=r"line 11: anomalous image without a mask path"):
        VisA(visa_root, "candle", "test")


def test_anomalous_training_row_is_refused(visa_root: Path):
    text = split_file(visa_root).read_text().replace("candle,test,anomaly", "candle,train,anomaly")
    split_file(visa_root).write_text(text)
    with pytest.raises(DataError, match=r"an anomalous training image"):
        VisA(visa_root, "candle", "train")
