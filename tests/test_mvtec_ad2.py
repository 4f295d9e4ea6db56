"""MVTec AD 2 discovery: layout, labels, conditions, ground truth, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from filterformer.data.mvtec_ad2 import (
    CATEGORIES,
    SPLITS,
    MVTecAD2,
    parse_condition,
    resolve_data_root,
)
from filterformer.errors import DataError


@pytest.fixture
def fake_root(ad2_sample_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the ad2_sample root, for tests that break it."""
    shutil.copytree(ad2_sample_root, tmp_path / "root")
    return tmp_path / "root"


def test_official_names():
    assert CATEGORIES == (
        "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"
    )  # fmt: skip
    assert SPLITS == ("train", "validation", "test_public", "test_private", "test_private_mixed")


@pytest.mark.parametrize(
    ("stem", "condition"),
    [
        ("000_regular", "regular"),
        ("017_overexposed", "overexposed"),
        ("003_underexposed", "underexposed"),
        ("101_shift_2", "shift_2"),
        ("000_mixed", "mixed"),
        ("000", "unknown"),
    ],
)
def test_condition_is_the_stem_after_the_index(stem, condition):
    assert parse_condition(stem) == condition


def test_ad2_sample_is_read_as_an_ad2_root(ad2_sample_root):
    expected = {
        "train": ["train/good/000_regular", "train/good/001_regular"],
        "validation": ["validation/good/000_regular"],
        "test_public": [
            "test_public/bad/000_regular",
            "test_public/bad/001_overexposed",
            "test_public/good/000_regular",
        ],
        "test_private": ["test_private/000_regular", "test_private/001_regular"],
        "test_private_mixed": ["test_private_mixed/000_mixed", "test_private_mixed/001_mixed"],
    }
    for split, relpaths in expected.items():
        data = MVTecAD2(ad2_sample_root, "fakecat", split)
        assert [str(s.relpath) for s in data] == relpaths
        for sample in data:
            assert (sample.category, sample.split, sample.shape) == ("fakecat", split, (48, 64))
            assert sample.path == ad2_sample_root / "fakecat" / f"{sample.relpath}.png"
            assert sample.load_image().shape == (48, 64, 3)


def test_ad2_sample_labels_masks_and_conditions(ad2_sample_root):
    bad0, bad1, good = MVTecAD2(ad2_sample_root, "fakecat", "test_public")
    gt_dir = ad2_sample_root / "fakecat" / "test_public" / "ground_truth" / "bad"
    assert (bad0.label, bad0.condition) == (1, "regular")
    assert bad0.mask_path == gt_dir / "000_regular_mask.png"
    assert (bad1.label, bad1.condition) == (1, "overexposed")
    assert (good.label, good.mask_path) == (0, None)
    assert bad0.load_mask().dtype == bool and bad0.load_mask().any()
    assert not good.load_mask().any() and good.load_mask().shape == (48, 64)
    for sample in MVTecAD2(ad2_sample_root, "fakecat", "test_private_mixed"):
        assert (sample.label, sample.mask_path, sample.condition) == (None, None, "mixed")
        assert sample.load_mask() is None


def test_synthetic_category_counts_pairing_and_private_splits(synthetic_root):
    params = json.loads((synthetic_root / "synthetic" / "synthetic.json").read_text())
    counts = params["counts"]
    sizes = {
        "train": counts["train"],
        "validation": counts["validation"],
        "test_public": counts["test_public_good"] + counts["test_public_bad"],
        "test_private": counts["test_private"],
        "test_private_mixed": counts["test_private_mixed"],
    }
    for split, size in sizes.items():
        data = MVTecAD2(synthetic_root, "synthetic", split)
        assert len(data) == size
        assert [s.relpath for s in data] == sorted(s.relpath for s in data)
        assert all(list(s.shape) == params["image_size"] for s in data)
    public = MVTecAD2(synthetic_root, "synthetic", "test_public")
    bad = [s for s in public if s.label == 1]
    assert len(bad) == counts["test_public_bad"]
    for sample in bad:
        assert sample.relpath.parent == PurePosixPath("test_public/bad")
        assert sample.mask_path.name == f"{sample.relpath.name}_mask.png"
        assert sample.load_mask().any()
    assert {s.condition for s in public} == {"regular", "overexposed", "underexposed", "shift_1"}
    for split in ("test_private", "test_private_mixed"):
        for sample in MVTecAD2(synthetic_root, "synthetic", split):
            assert sample.label is None and sample.mask_path is None
            assert sample.relpath.parent == PurePosixPath(split)
    assert not (synthetic_root / "synthetic" / "test_private" / "ground_truth").exists()


def test_getitem_supports_slices_and_negative_indices(ad2_sample_root):
    data = MVTecAD2(ad2_sample_root, "fakecat", "test_public")
    assert data[-1] == data[2] and data[1:] == (data[1], data[2])


def test_discovery_and_loading_never_write_into_the_dataset(fake_root):
    before = {p: p.stat().st_mtime_ns for p in fake_root.rglob("*")}
    for split in SPLITS:
        for sample in MVTecAD2(fake_root, "fakecat", split):
            sample.load_image()
            sample.load_mask()
    assert {p: p.stat().st_mtime_ns for p in fake_root.rglob("*")} == before


def test_data_root_falls_back_to_the_environment(ad2_sample_root, monkeypatch):
    monkeypatch.setenv("FF_DATA_ROOT", str(ad2_sample_root))
    assert resolve_data_root(None) == ad2_sample_root
    assert len(MVTecAD2(None, "fakecat", "train")) == 2
    monkeypatch.delenv("FF_DATA_ROOT")
    with pytest.raises(DataError, match="FF_DATA_ROOT"):
        resolve_data_root(None)


def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        MVTecAD2(tmp_path / "nowhere", "fakecat", "train")


def test_unknown_category_lists_the_found_and_official_names(ad2_sample_root):
    with pytest.raises(DataError) as err:
        MVTecAD2(ad2_sample_root, "vial", "train")
    message = str(err.value)
    assert str(ad2_sample_root / "vial") in message
    assert "fakecat" in message and "walnuts" in message


def test_unknown_split_lists_the_splits(ad2_sample_root):
    with pytest.raises(DataError, match="test_private_mixed"):
        MVTecAD2(ad2_sample_root, "fakecat", "test")


def test_missing_and_empty_split_folders(fake_root):
    shutil.rmtree(fake_root / "fakecat" / "validation")
    with pytest.raises(DataError, match=str(fake_root / "fakecat" / "validation")):
        MVTecAD2(fake_root, "fakecat", "validation")
    for png in (fake_root / "fakecat" / "test_private").glob("*.png"):
        png.unlink()
    with pytest.raises(DataError, match=str(fake_root / "fakecat" / "test_private")):
        MVTecAD2(fake_root, "fakecat", "test_private")


def test_bad_image_without_its_mask(fake_root):
    mask = fake_root / "fakecat/test_public/ground_truth/bad/001_overexposed_mask.png"
    mask.unlink()
    with pytest.raises(DataError) as err:
        MVTecAD2(fake_root, "fakecat", "test_public")
    assert "001_overexposed.png" in str(err.value) and str(mask) in str(err.value)


def test_mask_without_its_image(fake_root):
    orphan = fake_root / "fakecat/test_public/ground_truth/bad/007_regular_mask.png"
    shutil.copy(orphan.with_name("000_regular_mask.png"), orphan)
    with pytest.raises(DataError, match=str(orphan)):
        MVTecAD2(fake_root, "fakecat", "test_public")


def test_corrupt_png_raises_when_loaded(fake_root):
    path = fake_root / "fakecat/train/good/001_regular.png"
    path.write_bytes(path.read_bytes()[:60])  # header intact, pixel data cut off
    sample = MVTecAD2(fake_root, "fakecat", "train")[1]
    assert sample.shape == (48, 64)
    with pytest.raises(DataError, match=str(path)):
        sample.load_image()


def test_unreadable_png_header_raises_at_discovery(fake_root):
    path = fake_root / "fakecat/test_private/000_regular.png"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=str(path)):
        MVTecAD2(fake_root, "fakecat", "test_private")


def test_mask_of_the_wrong_size_raises_on_load(fake_root):
    mask = fake_root / "fakecat/test_public/ground_truth/bad/000_regular_mask.png"
    cv2.imwrite(str(mask), np.full((48, 60), 255, dtype=np.uint8))
    sample = MVTecAD2(fake_root, "fakecat", "test_public")[0]
    with pytest.raises(DataError, match=str(mask)):
        sample.load_mask()
