"""MVTec AD discovery: layout, labels, masks, the split registry, and every bad input."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from filterformer.data.datasets import ALL_SPLITS, evaluated_split, read_split
from filterformer.data.mvtec_ad import CATEGORIES, SPLITS, MVTecAD
from filterformer.errors import ConfigError, DataError


def test_official_names():
    assert len(CATEGORIES) == 15 and {"carpet", "metal_nut", "zipper"} <= set(CATEGORIES)
    assert SPLITS == ("train", "test")


def test_generated_tree_is_read_with_labels_and_masks(mvtec_ad_root: Path):
    train = MVTecAD(mvtec_ad_root, "carpet", "train")
    assert [str(s.relpath) for s in train] == [f"train/good/{i:03d}" for i in range(6)]
    assert all(s.label == 0 and s.mask_path is None for s in train)
    test = MVTecAD(mvtec_ad_root, "carpet", "test")
    listing = [(str(s.relpath), s.label) for s in test]
    assert listing == [
        ("test/cut/000", 1),
        ("test/cut/001", 1),
        ("test/good/000", 0),
        ("test/good/001", 0),
        ("test/hole/000", 1),
    ]
    cut = test[0]
    assert cut.mask_path == mvtec_ad_root / "carpet" / "ground_truth" / "cut" / "000_mask.png"
    assert (cut.category, cut.split, cut.shape) == ("carpet", "test", (64, 80))
    assert cut.path == mvtec_ad_root / "carpet" / "test" / "cut" / "000.png"
    assert cut.relpath == PurePosixPath("test/cut/000")
    mask = cut.load_mask()
    assert mask.dtype == bool and mask.shape == (64, 80) and 0 < mask.sum() < mask.size
    assert not test[2].load_mask().any()  # good: an empty mask
    assert cut.load_image().shape == (64, 80, 3)


def test_registry_reads_each_kind_and_names_its_test_split(mvtec_ad_root: Path):
    assert len(read_split("mvtec_ad", mvtec_ad_root, "carpet", "test")) == 5
    assert (evaluated_split("mvtec_ad"), evaluated_split("visa")) == ("test", "test")
    assert evaluated_split("mvtec_ad2") == "test_public"
    assert {"train", "validation", "test", "test_public", "test_private"} <= set(ALL_SPLITS)
    with pytest.raises(ConfigError, match="data.kind 'folder' has no root reader"):
        read_split("folder", mvtec_ad_root, "carpet", "test")


@pytest.mark.parametrize(
    ("category", "split", "message"),
    [
        ("carpet", "validation", r"Unknown split 'validation' for MVTec AD.*train, test\. There"),
        ("cable", "test", r"category 'cable' not found.*carpet.*bottle, cable"),
    ],
)
def test_bad_category_or_split_is_named(mvtec_ad_root: Path, category, split, message):
    with pytest.raises(DataError, match=message):
        MVTecAD(mvtec_ad_root, category, split)


def test_missing_mask_is_named(mvtec_ad_root: Path):
    mask = mvtec_ad_root / "carpet" / "ground_truth" / "hole" / "000_mask.png"
    mask.unlink()
    with pytest.raises(DataError, match=r"hole/000.png: anomalous image without its mask"):
        MVTecAD(mvtec_ad_root, "carpet", "test")


def test_mask_without_image_is_named(mvtec_ad_root: Path):
    (mvtec_ad_root / "carpet" / "test" / "cut" / "001.png").unlink()
    with pytest.raises(DataError, match=r"cut/001_mask.png: mask without an image"):
        MVTecAD(mvtec_ad_root, "carpet", "test")


def test_mask_of_another_size_is_refused_on_load(mvtec_ad_root: Path):
    mask = mvtec_ad_root / "carpet" / "ground_truth" / "cut" / "000_mask.png"
    cv2.imwrite(str(mask), np.zeros((10, 10), np.uint8))
    sample = MVTecAD(mvtec_ad_root, "carpet", "test")[0]
    with pytest.raises(DataError, match="000_mask.png: mask is 10x10"):
        sample.load_mask()


def test_defect_folder_in_train_is_refused(mvtec_ad_root: Path):
    shutil.copytree(mvtec_ad_root / "carpet" / "test" / "cut", mvtec_ad_root / "carpet/train/cut")
    with pytest.raises(DataError, match=r"train/cut: training images must all be normal"):
        MVTecAD(mvtec_ad_root, "carpet", "train")


def test_missing_good_folder_and_empty_split(mvtec_ad_root: Path):
    shutil.rmtree(mvtec_ad_root / "carpet" / "train" / "good")
    with pytest.raises(DataError, match=r"train/good: folder not found"):
        MVTecAD(mvtec_ad_root, "carpet", "train")
    (mvtec_ad_root / "carpet" / "train" / "good").mkdir()
    with pytest.raises(DataError, match=r"train: no images found"):
        MVTecAD(mvtec_ad_root, "carpet", "train")


def test_missing_root_names_the_dataset_folder(tmp_path: Path):
    with pytest.raises(DataError, match=r"data root not found.*mvtec_anomaly_detection"):
        MVTecAD(tmp_path / "nowhere", "carpet", "train")
