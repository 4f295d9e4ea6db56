"""The synthetic category: exact defect masks, lighting that is not a defect, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from filterformer.data.synthetic import (
    DEFECTS,
    TEXTURES,
    make_synthetic_category,
    synthetic_items,
)
from filterformer.errors import ConfigError, DataError
from filterformer.io import read_image, read_mask

SMALL = {
    "train": 2,
    "validation": 1,
    "test_public_good": 4,
    "test_public_bad": 8,
    "test_private": 2,
    "test_private_mixed": 4,
}
SIZE = (48, 72)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _params(root: Path) -> dict:
    return json.loads((root / "synthetic" / "synthetic.json").read_text())


@pytest.mark.parametrize("texture", TEXTURES)
def test_mask_marks_exactly_the_pixels_the_defect_changed(texture):
    items = list(synthetic_items(seed=3, image_size=SIZE, counts=SMALL, texture=texture))
    assert {item.defect for item in items if item.label} == set(DEFECTS)
    for item in items:
        assert item.image.shape == (*SIZE, 3) and item.image.dtype == np.uint8
        changed = (item.image != item.clean).any(axis=2)
        np.testing.assert_array_equal(changed, item.mask, err_msg=str(item.relpath))
        assert item.mask.any() == bool(item.label)


def test_lighting_changes_the_image_but_is_not_a_defect():
    items = list(synthetic_items(seed=0, image_size=SIZE, counts=SMALL))
    good = {
        item.lighting: item for item in items if item.relpath.parts[:2] == ("test_public", "good")
    }
    assert set(good) == {"regular", "overexposed", "underexposed", "shift_1"}
    for item in good.values():
        assert item.label == 0 and not item.mask.any() and not item.has_ground_truth
    brightness = {name: item.image.mean() for name, item in good.items()}
    assert brightness["overexposed"] > brightness["regular"] + 30
    assert brightness["underexposed"] < brightness["regular"] - 30
    shifted = good["shift_1"].image.mean(axis=2)  # a gradient: one side brighter than the other
    halves = [shifted[:, : SIZE[1] // 2].mean(), shifted[:, SIZE[1] // 2 :].mean()]
    quarters = [shifted[: SIZE[0] // 2].mean(), shifted[SIZE[0] // 2 :].mean()]
    assert max(abs(halves[0] - halves[1]), abs(quarters[0] - quarters[1])) > 10
    for item in items:  # a lit defect image: the mask is only the defect, a small part
        if item.label and item.lighting != "regular":
            assert 0 < item.mask.mean() < 0.25


def test_written_files_are_the_rendered_items(synthetic_root):
    params = _params(synthetic_root)
    category = synthetic_root / "synthetic"
    items = synthetic_items(
        params["seed"], params["image_size"], params["counts"], params["texture"]
    )
    for item in items:
        np.testing.assert_array_equal(read_image(category / f"{item.relpath}.png"), item.image)
        mask_path = category / "test_public/ground_truth/bad" / f"{item.relpath.name}_mask.png"
        if item.has_ground_truth:
            np.testing.assert_array_equal(read_mask(mask_path), item.mask)
        else:
            assert item.relpath.parts[:2] != ("test_public", "bad")


def test_layout_is_mvtec_ad2(synthetic_root):
    category = synthetic_root / "synthetic"
    counts = _params(synthetic_root)["counts"]
    assert sorted(p.name for p in category.iterdir()) == [
        "synthetic.json", "test_private", "test_private_mixed", "test_public", "train", "validation"
    ]  # fmt: skip
    assert sorted(p.name for p in (category / "test_public").iterdir()) == [
        "bad", "good", "ground_truth"
    ]  # fmt: skip
    mixed = sorted(p.name for p in (category / "test_private_mixed").iterdir())
    assert mixed == [f"{i:03d}_mixed.png" for i in range(counts["test_private_mixed"])]
    private = sorted(p.name for p in (category / "test_private").iterdir())
    assert private == [f"{i:03d}_regular.png" for i in range(counts["test_private"])]
    train = sorted(p.name for p in (category / "train" / "good").iterdir())
    assert train == [f"{i:03d}_regular.png" for i in range(counts["train"])]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        make_synthetic_category(tmp_path / name, seed=seed, image_size=SIZE, counts=SMALL)
    a, b, c = (_files(tmp_path / name / "synthetic") for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if "train" in k)


def test_second_call_is_a_no_op_and_an_interrupted_one_is_completed(tmp_path):
    folder = make_synthetic_category(tmp_path, image_size=SIZE, counts=SMALL)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert make_synthetic_category(tmp_path, image_size=SIZE, counts=SMALL) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    complete = _files(folder)
    (folder / "test_public/ground_truth/bad/002_underexposed_mask.png").unlink()
    (folder / "train/good/001_regular.png").unlink()
    make_synthetic_category(tmp_path, image_size=SIZE, counts=SMALL)
    assert _files(folder) == complete


def test_refuses_to_overwrite_other_parameters_or_foreign_folders(tmp_path):
    folder = make_synthetic_category(tmp_path, image_size=SIZE, counts=SMALL)
    with pytest.raises(DataError, match=str(folder)):
        make_synthetic_category(tmp_path, seed=5, image_size=SIZE, counts=SMALL)
    foreign = tmp_path / "vial"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=str(foreign)):
        make_synthetic_category(tmp_path, category="vial", image_size=SIZE, counts=SMALL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"texture": "marble"},
        {"counts": {"tain": 3}},
        {"counts": {"train": 0}},
        {"image_size": (8, 8)},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        make_synthetic_category(tmp_path, **kwargs)
    assert not (tmp_path / "synthetic").exists()
