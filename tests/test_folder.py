"""Custom image folders: formats, labels from masks, held-out validation, and bad inputs."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from filterformer.data.folder import (
    ImageFolderDataset,
    LabelledFolders,
    folder_test_set,
    holdout_names,
    images_to_predict,
    missing_pixel_truth,
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


def _write(path: Path, value: int = 100, shape: tuple[int, int] = (10, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*shape, 3) if path.parent.name != "masks" else shape, value, np.uint8)
    cv2.imwrite(str(path), image)
    return path


def _square_mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:4, 3:5] = 255
    cv2.imwrite(str(path), mask)
    return path


def test_good_and_defect_subfolders_label_the_images_without_masks(tmp_path):
    test = tmp_path / "test"
    for name in ("good/g0.png", "good/g1.jpg", "scratch/s0.png", "ng/n0.bmp", "ng/deep/n1.png"):
        _write(test / name)
    data = folder_test_set(test, category="bottles")
    assert isinstance(data, LabelledFolders)
    by_path = {str(s.relpath): s for s in data}
    assert sorted(by_path) == ["good/g0", "good/g1", "ng/deep/n1", "ng/n0", "scratch/s0"]
    assert [by_path[k].label for k in sorted(by_path)] == [0, 0, 1, 1, 1]
    assert all(s.mask_path is None and s.category == "bottles" for s in data)
    assert not by_path["good/g0"].load_mask().any()  # normal: an empty ground truth
    assert missing_pixel_truth(data) == "3 of 3 defective images have no ground-truth mask"


def test_masks_are_optional_and_matched_by_stem_at_the_top_or_in_the_subfolder(tmp_path):
    test, masks = tmp_path / "test", tmp_path / "masks"
    for name in ("good/a.png", "scratch/a.png", "scratch/b.png", "dent/c.png"):
        _write(test / name)
    _square_mask(masks / "scratch" / "a_mask.png")  # beside its folder's name
    _square_mask(masks / "b.png")  # at the top, by stem
    data = {str(s.relpath): s for s in folder_test_set(test, masks)}
    assert data["scratch/a"].mask_path == masks / "scratch" / "a_mask.png"
    assert data["scratch/b"].mask_path == masks / "b.png"
    assert data["dent/c"].mask_path is None and data["good/a"].mask_path is None
    assert data["scratch/a"].load_mask().sum() == 4
    assert missing_pixel_truth(list(data.values())) == (
        "1 of 3 defective images have no ground-truth mask"
    )
    _square_mask(masks / "c.png")
    assert missing_pixel_truth(folder_test_set(test, masks)) is None  # every mask known
    _write(test / "dent" / "b.png")  # a second b: the top-level b.png is ambiguous now
    with pytest.raises(DataError, match="matches images"):
        folder_test_set(test, masks)


def test_named_normal_and_abnormal_folders(tmp_path):
    _write(tmp_path / "ok" / "x.png")
    _write(tmp_path / "ng" / "y.png")
    data = folder_test_set(None, normal_dir=tmp_path / "ok", abnormal_dir=tmp_path / "ng")
    assert [(str(s.relpath), s.label) for s in data] == [("bad/y", 1), ("good/x", 0)]
    with pytest.raises(DataError, match="test folder not found"):
        folder_test_set(None, abnormal_dir=tmp_path / "missing")


def test_loose_images_beside_the_subfolders_and_unlabelled_flat_folders(tmp_path):
    test = tmp_path / "test"
    _write(test / "good" / "a.png")
    _write(test / "loose.png")
    with pytest.raises(DataError, match="loose.png lie beside the subfolders"):
        folder_test_set(test)
    flat = folder_test_set(tmp_path / "test" / "good")  # flat, no masks: labels unknown
    assert missing_pixel_truth(flat).startswith("labels unknown for 1 of 1 images")


def test_images_to_predict_takes_a_file_a_folder_or_its_subfolders(tmp_path):
    one = _write(tmp_path / "photos" / "lot1" / "p0.png")
    _write(tmp_path / "photos" / "lot2" / "p0.png")
    (single,) = images_to_predict(one, "bottles")
    assert (single.path, str(single.relpath), single.label) == (one, "p0", None)
    with pytest.raises(DataError, match=r"only subfolders \(lot1, lot2\).*--recursive"):
        images_to_predict(tmp_path / "photos", "bottles")
    both = images_to_predict(tmp_path / "photos", "bottles", recursive=True)
    assert [str(s.relpath) for s in both] == ["lot1/p0", "lot2/p0"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not an image file"):
        images_to_predict(tmp_path / "notes.txt", "bottles")
    labelled = tmp_path / "labelled"
    _write(labelled / "good" / "a.png")
    _write(labelled / "bad" / "b.png")
    assert [s.label for s in images_to_predict(labelled, "bottles")] == [1, 0]
