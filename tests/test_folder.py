"""Custom image folders: formats, labels from masks, held-out validation, and bad inputs."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from filterformer.data.folder import (
    ImageFolderDataset,
    holdout_names,
    split_holdout,
    typical_size,
)
from filterformer.errors import ConfigError, DataError


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


def _folder(tmp_path: Path, count: int, shapes=((10, 12),)) -> ImageFolderDataset:
    """``count`` images 00.png, 01.png, ... cycling through ``shapes`` (H, W)."""
    folder = tmp_path / "train"
    folder.mkdir()
    for index in range(count):
        shape = shapes[index % len(shapes)]
        cv2.imwrite(str(folder / f"{index:02d}.png"), np.full((*shape, 3), 9, dtype=np.uint8))
    return ImageFolderDataset(folder, split="train")


@pytest.mark.parametrize(("count", "held"), [(2, 1), (9, 1), (10, 1), (30, 3), (44, 4)])
def test_holdout_is_a_tenth_at_least_one_and_reproducible(tmp_path, count, held):
    data = _folder(tmp_path, count)
    names = holdout_names(data, 0.1, seed=1)
    assert len(names) == held and names == sorted(names)
    assert names == holdout_names(data, 0.1, seed=1)  # same folder and seed: same images
    train, validation = split_holdout(data, names)
    assert [s.path.name for s in validation] == names
    assert {s.path.name for s in train}.isdisjoint(names)
    assert len(train) + len(validation) == count and all(s.label == 0 for s in validation)


def test_holdout_depends_on_the_seed(tmp_path):
    data = _folder(tmp_path, 30)
    drawn = {tuple(holdout_names(data, 0.1, seed=seed)) for seed in range(6)}
    assert len(drawn) > 1


def test_holdout_bad_inputs(tmp_path):
    data = _folder(tmp_path, 3)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="validation_fraction"):
            holdout_names(data, fraction, seed=0)
    with pytest.raises(DataError, match="cannot spare 3"):
        holdout_names(data, 0.9, seed=0)  # nothing would be left to train on
    with pytest.raises(DataError, match="validation_dir"):
        holdout_names(data[:1], 0.1, seed=0)  # a single image cannot be split
    with pytest.raises(DataError, match="99.png not found"):
        split_holdout(data, ["00.png", "99.png"])


def test_typical_size_is_the_most_frequent(tmp_path):
    data = _folder(tmp_path, 5, shapes=((10, 12), (12, 10), (12, 10)))
    assert typical_size(data) == (12, 10)  # 2 of 5 are 10 x 12, 3 are 12 x 10
    assert typical_size(data[:2]) == (10, 12)  # a tie: the first image's size
