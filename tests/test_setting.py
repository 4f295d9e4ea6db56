"""Settings of INP-Former's universal paper: a run's categories (members) as ff-train lists them."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from filterformer.data.mvtec_ad import CATEGORIES as MVTEC_AD
from filterformer.errors import ConfigError
from filterformer.runs.compose import compose_config, config_dir
from filterformer.runs.setting import (
    categories_text,
    default_categories,
    fusion_keys,
    is_single,
    load_category_file,
    member,
    members,
    resolve_members,
    setting_name,
)


def composed(*overrides: str):
    config = compose_config(list(overrides))
    OmegaConf.resolve(config)
    return config


def test_a_single_class_config_has_no_setting_section():
    config = composed("preset=demo")
    assert "setting" not in config and is_single(config)  # config.yaml as before the settings
    assert [(m.key, m.config is config) for m in members(config)] == [("synthetic", True)]
    assert fusion_keys(config) == "synthetic"


def test_members_take_their_own_settings_and_the_runs_overrides(tmp_path: Path):
    config = composed(
        "data=mvtec_ad2",
        "setting=multi_class",
        "setting.categories=[can,vial,bolts]",
        "category.postprocess.closing=5",  # the run's change to its own category (vial)
    )
    resolve_members(config, tmp_path)
    can, vial, bolts = members(config)
    assert [m.key for m in (can, vial, bolts)] == ["can", "vial", "bolts"]
    assert can.config.category.tiling.enabled  # can's own file: scored in tiles
    assert not vial.config.category.tiling.enabled
    assert can.config.category.postprocess.closing == 5 == vial.config.category.postprocess.closing
    # a category without a config file starts from custom's settings, under its own name
    custom = load_category_file("custom")
    assert bolts.config.category.name == "bolts" and custom["name"] == "custom"
    assert bolts.config.category.threshold == custom["threshold"]
    assert bolts.config.category.tiling == custom["tiling"]
    for view in (can, vial, bolts):
        assert "setting" not in view.config and view.config.data.kind == "mvtec_ad2"
        assert view.config.eval.pseudo.member == view.key  # its own validation_pseudo folder
    assert fusion_keys(config) == ["can", "vial", "bolts"]
    assert member(config, "vial").config.category.name == "vial"
    with pytest.raises(ConfigError, match=r"no category 'rice'; its categories: can, vial, bolts"):
        member(config, "rice")


def test_a_presets_category_change_reaches_every_member(tmp_path: Path):
    config = composed("preset=inpformer_paper", "setting=multi_class", "setting.categories=[can]")
    resolve_members(config, tmp_path)
    assert not members(config)[0].config.category.tiling.enabled  # preset: whole images


def test_every_category_of_the_data_by_default(tmp_path: Path):
    config = composed("preset=inpformer_paper", "data=mvtec_ad", "setting=multi_class")
    resolve_members(config, tmp_path)
    assert [m.key for m in members(config)] == list(MVTEC_AD)
    assert categories_text(config) == "mvtec_ad: 15 categories (multi_class)"
    assert setting_name(config) == "multi_class"
    assert config.run_dir.endswith("runs/inpformer/mvtec_ad_multi_class")


def test_synthetic_categories_named_after_a_texture_use_it(tmp_path: Path):
    config = composed("preset=demo", "setting=multi_class", "setting.categories=[brick,grass]")
    resolve_members(config, tmp_path)
    assert [m.config.data.texture for m in members(config)] == ["brick", "grass"]
    with pytest.raises(ConfigError, match=r"data=synthetic has no fixed category list"):
        default_categories(composed("preset=demo").data)


def test_super_multi_class_keys_name_the_dataset(tmp_path: Path):
    (tmp_path / "visa").mkdir()
    (tmp_path / "iad").mkdir()
    config = composed(
        "preset=inpformer_paper",
        "data=mvtec_ad",
        "setting=super_multi_class",
        "setting.categories=[toothbrush]",
        f"setting.datasets.visa={tmp_path / 'visa'}",
        f"setting.datasets.real_iad={{root: {tmp_path / 'iad'}, categories: [toothbrush, mint]}}",
    )
    resolve_members(config, tmp_path)
    keys = [m.key for m in members(config)]
    assert keys[0] == "mvtec_ad.toothbrush" and len(keys) == 1 + 12 + 2
    assert keys[-2:] == ["real_iad.toothbrush", "real_iad.mint"]  # one name, two datasets
    toothbrushes = [m for m in members(config) if m.key.endswith("toothbrush")]
    assert [m.config.data.kind for m in toothbrushes] == ["mvtec_ad", "real_iad"]
    assert toothbrushes[1].config.data.root == str(tmp_path / "iad")
    assert toothbrushes[1].config.data.protocol == "inpformer"
    assert categories_text(config) == (
        "mvtec_ad: 1 categories + visa: 12 categories + real_iad: 2 categories (super_multi_class)"
    )


def test_bad_member_lists_are_named(tmp_path: Path):
    twice = composed("data=mvtec_ad", "setting=multi_class", "setting.categories=[grid,grid]")
    with pytest.raises(ConfigError, match=r"names a category twice"):
        resolve_members(twice, tmp_path)
    unresolved = composed("data=mvtec_ad", "setting=multi_class")
    with pytest.raises(ConfigError, match=r"lists no members.*ff-train fills them"):
        members(unresolved)
    wrong = composed(
        "data=mvtec_ad", "setting=multi_class", f"setting.datasets={{folder: {tmp_path}}}"
    )
    with pytest.raises(ConfigError, match=r"setting.datasets.folder: not a dataset"):
        resolve_members(wrong, tmp_path)


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "postprocess.splits":
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_every_category_setting_can_be_changed_for_all_members():
    """category/_members.yaml has every key of every category file (null: each one's own),
    so that category.<key>=value on the command line reaches every category."""
    folder = config_dir() / "category"
    members_keys = flat_keys(OmegaConf.to_container(OmegaConf.load(folder / "_members.yaml")))
    for path in folder.glob("[!_]*.yaml"):
        assert flat_keys(load_category_file(path.stem)) <= members_keys, path.name
