"""Real-IAD discovery through realiad_jsons/realiad_jsons/<category>.json, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from filterformer.data.datasets import READERS, SPLITS, evaluated_split, read_split
from filterformer.data.real_iad import CATEGORIES, NORMAL, RealIAD
from filterformer.errors import DataError
from filterformer.runs.compose import config_dir, config_groups

OFFICIAL = (
    "audiojack bottle_cap button_battery end_cap eraser fire_hood mint mounts pcb phone_battery "
    "plastic_nut plastic_plug porcelain_doll regulator rolled_strip_base sim_card_set switch tape "
    "terminalblock toothbrush toy toy_brick transistor1 usb usb_adaptor u_block vcpill "
    "wooden_beads woodstick zipper"
).split()
"""The category list of the INP-Former code's Real-IAD scripts, written out."""


def split_file(root: Path, category: str = "audiojack") -> Path:
    return root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"


def edit_split_file(root: Path, edit) -> None:
    document = json.loads(split_file(root).read_text())
    edit(document)
    split_file(root).write_text(json.dumps(document))


def test_official_names_and_configs():
    assert sorted(CATEGORIES) == sorted(OFFICIAL) and len(CATEGORIES) == 30
    assert NORMAL == "OK"
    shipped = set(config_groups(config_dir())["category"])
    assert set(CATEGORIES) <= shipped  # every category has its config (category=audiojack)
    assert "real_iad" in config_groups(config_dir())["data"]
    assert READERS["real_iad"] is RealIAD and SPLITS["real_iad"] == ("train", "test")
    assert evaluated_split("real_iad") == "test"


def test_generated_tree_is_read_from_the_split_file(real_iad_root: Path):
    train = RealIAD(real_iad_root, "audiojack", "train")
    assert [str(s.relpath) for s in train] == [
        f"OK/S{i:04d}/audiojack_{i:04d}_OK_C1_2023" for i in range(6)
    ]
    assert all(s.label == 0 and s.mask_path is None for s in train)
    test = read_split("real_iad", real_iad_root, "audiojack", "test")
    assert [(str(s.relpath).split("/")[1], s.label) for s in test] == [
        ("HS", 1),
        ("QS", 1),
        ("QS", 1),
        ("S0006", 0),
        ("S0007", 0),
    ]
    bad = test[0]
    folder = real_iad_root / "realiad_1024" / "audiojack"
    assert bad.mask_path == folder / "NG/HS/S0101/audiojack_0101_NG_HS_C2_2023.png"
    assert bad.relpath == PurePosixPath("NG/HS/S0101/audiojack_0101_NG_HS_C2_2023")
    assert (bad.category, bad.split, bad.shape, bad.path.suffix) == (
        "audiojack",
        "test",
        (64, 80),
        ".jpg",
    )
    assert bad.load_mask().sum() == 12 * 14
    assert not test[3].load_mask().any()


@pytest.mark.parametrize(
    ("category", "split", "message"),
    [
        ("toy", "test", r"category 'toy' not found.*audiojack.*official Real-IAD names"),
        ("audiojack", "validation", r"Unknown split 'validation' for Real-IAD.*no validation"),
    ],
)
def test_bad_category_or_split_is_named(real_iad_root: Path, category, split, message):
    with pytest.raises(DataError, match=message):
        RealIAD(real_iad_root, category, split)


def test_missing_split_file_says_what_the_root_is(real_iad_root: Path):
    split_file(real_iad_root).unlink()
    with pytest.raises(DataError, match=r"audiojack.json: Real-IAD split file not found.*realiad"):
        RealIAD(real_iad_root, "audiojack", "train")


@pytest.mark.parametrize(
    ("edit", "split", "message"),
    [
        (lambda d: d.pop("test"), "test", r"no 'test' list"),
        (lambda d: d["train"][2].pop("image_path"), "train", r"train\[2\]: missing key\(s\) image"),
        (
            lambda d: d["test"][-1].update(mask_path=None),
            "test",
            r"test\[4\]: anomalous image without a mask_path",
        ),
        (
            lambda d: d["train"][0].update(anomaly_class="QS"),
            "train",
            r"train\[0\]: an anomalous training image \(anomaly_class 'QS'\)",
        ),
        (
            lambda d: d["train"][1].update(image_path="../../elsewhere.jpg"),
            "train",
            r"train\[1\]: ../../elsewhere.jpg lies outside the category folder",
        ),
        (lambda d: d.update(train=[]), "train", r"the 'train' list is empty"),
    ],
)
def test_bad_split_file_entries_are_named(real_iad_root: Path, edit, split, message):
    edit_split_file(real_iad_root, edit)
    with pytest.raises(DataError, match=message):
        RealIAD(real_iad_root, "audiojack", split)


def test_listed_image_that_is_missing(real_iad_root: Path):
    missing = real_iad_root / "realiad_1024/audiojack/OK/S0003/audiojack_0003_OK_C1_2023.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=r"0003_OK_C1_2023.jpg: file not found \(listed in .*\)"):
        RealIAD(real_iad_root, "audiojack", "train")


def test_a_damaged_split_file_is_named(real_iad_root: Path):
    split_file(real_iad_root).write_text("{not json")
    with pytest.raises(DataError, match=r"audiojack.json: not a JSON file"):
        RealIAD(real_iad_root, "audiojack", "train")
