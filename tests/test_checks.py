"""Up-front settings checks: every shipped recipe passes, each impossible value is named."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from filterformer.errors import ConfigError
from filterformer.models import family
from filterformer.runs.checks import RULES, check_settings
from filterformer.runs.compose import config_dir
from filterformer.runs.train import _flatten, resolve_config

VALID = {
    "train.epochs": 15,
    "train.batch_size": 4,
    "eval.every": 0,
    "train.optimizer.lr": 1e-3,
    "input.resize": [168, 210],
    "input.crop": None,
}


def compose_train(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("preset", ["filterformer_paper", "inpformer_paper", "demo"])
@pytest.mark.parametrize("category", ["can", "fabric", "vial", "synthetic"])
def test_every_shipped_recipe_passes(preset, category):
    cfg = compose_train(f"preset={preset}", f"category={category}")
    settings = _flatten(OmegaConf.to_container(cfg, resolve=True))
    check_settings(settings, family_ranges=family(cfg.model.name).setting_ranges, patch_size=14)
    assert {"train.epochs", "eval.every", "input.resize", "train.optimizer.lr"} <= set(settings)
    assert set(settings) & set(RULES) >= {"seed", "train.batch_size", "eval.batch_size"}


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("train.epochs", 0, "an integer >= 1"),
        ("train.epochs", -1, "an integer >= 1"),
        ("train.epochs", True, "an integer >= 1"),  # true is no number of epochs
        ("train.epochs", 2.5, "an integer >= 1"),
        ("train.batch_size", 0, "an integer >= 1"),
        ("eval.every", -3, "an integer >= 0"),
        ("train.optimizer.lr", 0, "a number > 0"),
        ("train.optimizer.lr", float("nan"), "a number > 0"),
        ("train.optimizer.final_lr", -1e-4, "a number >= 0"),
        ("train.optimizer.warmup_iters", -1, "an integer >= 0"),
        ("train.optimizer.betas", [0.9, 1.0], "a [beta1, beta2] pair, each a number in [0, 1)"),
        ("eval.pro_limit", 0, "a number > 0 and <= 1"),
        ("eval.blur_kernel", 4, "an odd integer >= 1"),
        ("category.postprocess.closing", -2, "0 (off) or an integer >= 1"),
        ("category.tiling.overlap", 1.0, "a fraction in [0, 1)"),
        ("seed", -1, "an integer in [0, 4294967295]"),
        ("resume", "yes", "true or false"),
        ("data.counts.train", -2, "an integer >= 0"),
    ],
)
def test_each_impossible_value_is_named_with_its_range(key, value, allowed):
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    with pytest.raises(ConfigError) as err:
        check_settings({**VALID, key: value}, patch_size=14)
    assert f"{key}={shown} (allowed: {allowed}" in str(err.value)
    assert "\n" not in str(err.value)


def test_every_violation_is_listed_in_one_message():
    bad = {**VALID, "train.epochs": 0, "eval.every": -3, "train.batch_size": 0}
    with pytest.raises(ConfigError) as err:
        check_settings(bad, patch_size=14)
    message = str(err.value)
    assert all(f"{k}={bad[k]}" in message for k in ("train.epochs", "eval.every"))
    assert "train.batch_size=0" in message


@pytest.mark.parametrize(("world_size", "ok"), [(1, True), (2, True), (3, False), (4, True)])
def test_the_global_batch_splits_evenly_over_the_processes(world_size, ok):
    settings = {**VALID, "train.batch_size": 8}
    if ok:
        check_settings(settings, world_size=world_size)
        return
    with pytest.raises(ConfigError, match=r"train.batch_size=8 \(allowed: a multiple of the 3"):
        check_settings(settings, world_size=world_size)


@pytest.mark.parametrize(
    ("resize", "crop", "culprit"),
    [
        ([168, 210], None, None),
        ([500, 500], [392, 392], None),  # the network sees the crop
        ([56, 50], None, "input.resize=[56, 50] (allowed: multiples of the encoder's patch"),
        ([448, 448], [400, 392], "input.crop=[400, 392] (allowed: multiples"),
        ([10, 10], None, "e.g. [14, 14]"),  # less than one patch
        ([448, 448], [462, 392], "input.crop=[462, 392] (allowed: at most input.resize"),
    ],
)
def test_the_network_input_is_whole_patches(resize, crop, culprit):
    settings = {**VALID, "input.resize": resize, "input.crop": crop}
    if culprit is None:
        check_settings(settings, patch_size=14)
        return
    with pytest.raises(ConfigError) as err:
        check_settings(settings, patch_size=14)
    assert culprit in str(err.value)


def test_settings_a_config_does_not_have_are_not_checked():
    check_settings({"train.epochs": 3}, patch_size=14)  # e.g. a run folder of an older version


def test_the_cli_checks_with_the_number_of_ddp_processes(tmp_path):
    cfg = compose_train("preset=demo", "train.batch_size=5", f"run_dir={tmp_path / 'run'}")
    resolve_config(cfg, world_size=1)
    with pytest.raises(ConfigError, match="multiple of the 2 training processes"):
        resolve_config(cfg, world_size=2)
    assert list(tmp_path.iterdir()) == []
