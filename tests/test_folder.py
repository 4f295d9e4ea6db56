"""Custom image folders: formats, labels from masks, and bad inputs."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from filterformer.data.folder import ImageFolderDataset
from filterformer.errors import DataError


@pytest.fixture
def test_folders(tmp_path: Path) -> tuple[Path, Path]:
    """images/{a,b,c}.png + masks/ with a_mask.png (positive), b.png (empty), none for c."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem in "abc":
        cv2.imwrite(str(images / f"{stem}.png"), np.full((10, 12, 3), 100, dtype=np.uint8))
    positive = np.zeros((10, 12), dtype=np.uint8)
    positive[2:4, 3:5] = 255
    cv2.imwrite(str(masks / "a_mask.png"), positive)
    cv2.imwrite(str(masks / "b.png"), np.zeros((10, 12), dtype=np.uint8))
    return images, masks


def test_training_folder_reads_every_format(tiny_image_dir):
    data = ImageFolderDataset(tiny_image_dir, split="train")
    assert [s.path.name for s in data] == ["a.png", "b.jpg", "c.bmp", "d.tif"]
    for sample in data:
        assert (sample.split, sample.label, sample.mask_path) == ("train", 0, None)
        assert sample.category == tiny_image_dir.name and sample.condition == "unknown"
        assert sample.relpath == PurePosixPath(sample.path.stem)
        assert sample.shape == (32, 40) and sample.load_image().shape == (32, 40, 3)
        assert not sample.load_mask().any()


def test_labels_follow_the_masks(test_folders):
    images, masks = test_folders
    a, b, c = ImageFolderDataset(images, mask_dir=masks, category="parts")
    assert (a.label, a.mask_path, a.category) == (1, masks / "a_mask.png", "parts")
    assert (b.label, b.mask_path) == (0, masks / "b.png")
    assert (c.label, c.mask_path) == (0, None)
    assert a.load_mask().sum() == 4 and not b.load_mask().any() and not c.load_mask().any()


def test_without_masks_labels_are_unknown(test_folders):
    images, _ = test_folders
    data = ImageFolderDataset(images)
    assert [s.label for s in data] == [None, None, None]
    assert data[0].load_mask() is None and data[0].split == "test"


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        ImageFolderDataset(tmp_path / "empty")


def test_orphan_ambiguous_and_misfit_masks(test_folders):
    images, masks = test_folders
    orphan = masks / "zzz.png"
    cv2.imwrite(str(orphan), np.zeros((10, 12), dtype=np.uint8))
    with pytest.raises(DataError, match=str(orphan)):
        ImageFolderDataset(images, mask_dir=masks)
    orphan.unlink()
    second = masks / "a.png"
    cv2.imwrite(str(second), np.zeros((10, 12), dtype=np.uint8))
    with pytest.raises(DataError, match="a_mask.png"):
        ImageFolderDataset(images, mask_dir=masks)
    second.unlink()
    cv2.imwrite(str(masks / "a_mask.png"), np.full((9, 12), 255, dtype=np.uint8))
    with pytest.raises(DataError, match="a_mask.png"):
        ImageFolderDataset(images, mask_dir=masks)


def test_same_stem_twice_and_bad_split_arguments(test_folders):
    images, masks = test_folders
    with pytest.raises(DataError, match="split='test'"):
        ImageFolderDataset(images, split="train", mask_dir=masks)
    with pytest.raises(DataError, match="train, test"):
        ImageFolderDataset(images, split="validation")
    cv2.imwrite(str(images / "a.jpg"), np.zeros((10, 12, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=str(images / "a")):
        ImageFolderDataset(images)
