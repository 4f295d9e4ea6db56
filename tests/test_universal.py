"""INP-Former's universal settings end to end on generated categories: multi-class, few-shot,
zero-shot and super-multi-class (ff-train, then ff-eval, ff-predict, the API's loaders)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from filterformer.cli.eval import main as eval_main
from filterformer.cli.export import main as export_main
from filterformer.cli.predict import main as predict_main
from filterformer.cli.train import main as train_main
from filterformer.data.few_shot import draw_shots
from filterformer.data.mvtec_ad import MVTecAD
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.errors import ConfigError
from filterformer.evaluation.protocol import image_score
from filterformer.inference.predict import smooth_maps
from filterformer.inference.protocol_maps import PROTOCOL_SMOOTHING
from filterformer.runs.run import load_run, load_runs

pytestmark = pytest.mark.slow

TINY = [
    "preset=demo",
    "train.epochs=1",
    "progress=false",
    "data.image_size=[56,70]",
    "input.resize=[56,70]",
    "data.counts={train: 4, validation: 2, test_public_good: 1, test_public_bad: 2, "
    "test_private: 1, test_private_mixed: 1}",
]
"""The demo preset cut to one epoch (evaluated after it) on a few 56 x 70 images."""
CATEGORIES = ["brick", "grass"]


def train(*overrides: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ff-train", *TINY, *overrides])
        train_main()


@pytest.fixture(scope="module")
def multi_class_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model on two generated categories (brick, grass textures) under one data root."""
    run_dir = tmp_path_factory.mktemp("multi") / "run"
    train(
        "setting=multi_class", f"setting.categories=[{','.join(CATEGORIES)}]", f"run_dir={run_dir}"
    )
    return run_dir


def test_multi_class_trains_one_model_on_every_category(multi_class_run: Path):
    config = OmegaConf.load(multi_class_run / "config.yaml")
    assert config.setting.name == "multi_class"
    assert [m.key for m in config.setting.members] == CATEGORIES
    assert [m.data.texture for m in config.setting.members] == CATEGORIES
    assert sorted(p.name for p in (multi_class_run / "data").iterdir()) == CATEGORIES
    log = (multi_class_run / "train_log.csv").read_text().splitlines()
    assert len(log) - 1 == 2 * 4 // 4  # one epoch over both categories' 4 images, batch 4
    fusion = json.loads((multi_class_run / "fusion.json").read_text())
    assert list(fusion) == CATEGORIES and len(set(fusion.values())) == 1  # one model, one mode
    thresholds = json.loads((multi_class_run / "thresholds.json").read_text())
    assert sorted(thresholds) == CATEGORIES  # each category's own, by its rule
    assert thresholds["brick"] != thresholds["grass"]
    assert sorted(p.name for p in (multi_class_run / "validation_pseudo").iterdir()) == CATEGORIES


def test_a_multi_class_run_loads_as_one_run_per_category(multi_class_run: Path):
    runs = load_runs(multi_class_run)
    assert [r.category for r in runs] == CATEGORIES
    assert runs[0].model is runs[1].model  # one copy of the weights
    assert [r.config.category.name for r in runs] == CATEGORIES
    assert runs[0].threshold.value != runs[1].threshold.value
    assert load_run(multi_class_run, category="grass").category == "grass"
    with pytest.raises(ConfigError, match=r"one model of 2 categories \(brick, grass\); name one"):
        load_run(multi_class_run)


def test_ff_eval_reports_every_category_and_the_mean(multi_class_run: Path, capsys):
    capsys.readouterr()
    assert eval_main(["--run", str(multi_class_run), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[3:6]] == ["brick", "grass", "mean"]
    out = multi_class_run.with_name("run_eval") / "test_public"
    document = json.loads((out / "metrics.json").read_text())
    rows = document["categories"]
    assert list(rows) == CATEGORIES
    for key in ("au_pro@0.05", "seg_f1", "image_auroc"):
        mean = np.mean([rows[c][key] for c in CATEGORIES])
        assert document["mean"][key] == pytest.approx(mean)
    for category in CATEGORIES:  # each category's own outputs
        assert (out / category / "scores.csv").is_file()
        assert json.loads((out / category / "metrics.json").read_text())["categories"][category]
    capsys.readouterr()
    assert eval_main(["--run", str(multi_class_run), "--categories", "grass", "--no-progress"]) == 0
    assert "brick" not in capsys.readouterr().out


def test_ff_predict_writes_every_category(multi_class_run: Path, tmp_path: Path):
    out = tmp_path / "preds"
    argv = ["--run", str(multi_class_run), "--out", str(out), "--split", "test_public"]
    assert predict_main([*argv, "--no-progress"]) == 0
    for category in CATEGORIES:
        maps = list((out / "anomaly_images" / category / "test_public").rglob("*.tiff"))
        assert len(maps) == 3
    images = multi_class_run / "data" / "grass" / "test_public" / "good"
    argv = ["--run", str(multi_class_run), "--images", str(images), "--out", str(tmp_path / "own")]
    assert predict_main([*argv, "--no-progress"]) == 2  # which category's threshold?
    assert predict_main([*argv, "--category", "grass", "--no-progress"]) == 0


def test_ff_export_exports_one_category_at_a_time(multi_class_run: Path, capsys):
    pytest.importorskip("onnxruntime")
    assert export_main(["--run", str(multi_class_run), "--no-progress"]) == 2
    assert "one model of 2 categories" in capsys.readouterr().err
    assert export_main(["--run", str(multi_class_run), "--category", "grass", "--no-progress"]) == 0
    manifest = multi_class_run.with_name("run_export") / "grass" / "export.json"
    threshold = json.loads(manifest.read_text())["threshold"]["value"]
    assert threshold == pytest.approx(load_run(multi_class_run, category="grass").threshold.value)


def test_zero_shot_on_categories_the_run_never_saw(
    multi_class_run: Path, mvtec_ad_root: Path, capsys
):
    capsys.readouterr()
    argv = ["--run", str(multi_class_run), "--data", "mvtec_ad", "--data-root", str(mvtec_ad_root)]
    assert eval_main([*argv, "--categories", "carpet", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "split: test, protocol: inpformer" in table  # the target data's benchmark
    assert "trained on synthetic: 2 categories (multi_class), never on the categories" in table
    out = multi_class_run.with_name("run_eval") / "zero_shot_mvtec_ad" / "test"
    with open(out / "scores.csv", newline="") as handle:
        scores = [float(row["score"]) for row in csv.DictReader(handle)]
    # the INP-Former code's zero-shot map: each token's distance to its nearest INP
    run = load_runs(multi_class_run)[0]
    samples = MVTecAD(mvtec_ad_root, "carpet", "test")
    inputs = torch.stack([run.geometry.to_tensor(s.load_image()) for s in samples])
    maps = smooth_maps(run.model.inp_distance_map(inputs), PROTOCOL_SMOOTHING).numpy()
    np.testing.assert_allclose(scores, [image_score(m, "top1") for m in maps], rtol=1e-5)
    document = json.loads((out / "metrics.json").read_text())
    assert document["categories"]["carpet"]["trained_on"].startswith("synthetic")
    capsys.readouterr()
    own_map = ["--zero-shot-map", "reconstruction", "--categories", "carpet", "--no-progress"]
    assert eval_main([*argv, *own_map]) == 0
    with open(out / "scores.csv", newline="") as handle:
        other = [float(row["score"]) for row in csv.DictReader(handle)]
    assert not np.allclose(other, scores)


def test_few_shot_trains_on_the_drawn_images_views(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(
        "setting=few_shot",
        "setting.shots=2",
        f"setting.categories=[{','.join(CATEGORIES)}]",
        "train.augment=null",
        f"run_dir={run_dir}",
    )
    config = OmegaConf.load(run_dir / "config.yaml")
    pools = [MVTecAD2(run_dir / "data", c, "train") for c in CATEGORIES]
    drawn = draw_shots(pools, 2, seed=int(config.seed))  # the run's seed, category order
    listed = [list(m.shots) for m in config.setting.members]
    assert listed == [[str(s.relpath) for s in shots] for shots in drawn]
    steps = len((run_dir / "train_log.csv").read_text().splitlines()) - 1
    assert steps == 2 * 2 * 22 // 4  # 2 categories x 2 shots x 22 views, batch 4
    assert sorted(json.loads((run_dir / "thresholds.json").read_text())) == CATEGORIES


def test_few_shot_refuses_augmentation_by_name(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train("setting=few_shot", "setting.categories=[brick]", f"run_dir={tmp_path / 'run'}")
    assert exit_info.value.code == 2
    assert "set train.augment=null" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_super_multi_class_reports_each_dataset(
    mvtec_ad_root: Path, real_iad_root: Path, tmp_path: Path, capsys
):
    run_dir = tmp_path / "run"
    train(
        "data=mvtec_ad",
        f"data.root={mvtec_ad_root}",
        "setting=multi_class",
        "setting.categories=[carpet]",
        f"setting.datasets={{real_iad: {{root: {real_iad_root}, categories: [audiojack]}}}}",
        f"run_dir={run_dir}",
    )
    capsys.readouterr()
    assert eval_main(["--run", str(run_dir), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "split: test, protocol: inpformer" in table
    names = [line.split("  ")[0].strip() for line in table.splitlines()[3:8]]
    assert names == [
        "mvtec_ad.carpet",
        "real_iad.audiojack",
        "mean mvtec_ad",
        "mean real_iad",
        "mean",
    ]
    document = json.loads((run_dir.with_name("run_eval") / "test" / "metrics.json").read_text())
    assert set(document["dataset_means"]) == {"mvtec_ad", "real_iad"}
    assert document["categories"]["real_iad.audiojack"]["num_images"] == 5


@pytest.mark.parametrize("setting", ["multi_class", "few_shot"])
def test_the_feature_cache_trains_several_categories_as_without_it(setting: str, tmp_path: Path):
    exact = [
        "model=inpformer",
        "train.augment=null",
        "eval.every=0",
        f"setting={setting}",
        f"setting.categories=[{','.join(CATEGORIES)}]",
        *(["setting.shots=1"] if setting == "few_shot" else []),
    ]
    cache = ["train.feature_cache.enabled=true", "train.feature_cache.dtype=float32"]
    train(*exact, f"run_dir={tmp_path / 'plain'}")
    train(*exact, *cache, f"run_dir={tmp_path / 'cached'}", f"data.root={tmp_path / 'plain/data'}")
    losses = []
    for name in ("plain", "cached"):
        with open(tmp_path / name / "train_log.csv", newline="") as handle:
            losses.append([float(row["loss"]) for row in csv.DictReader(handle)])
    assert len(losses[0]) == (2 if setting == "multi_class" else 11)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_folder_data_trains_one_sub_folder_per_category(tmp_path: Path, tiny_image_dir: Path):
    rng = np.random.default_rng(0)
    for category in ("bolts", "nuts"):
        folder = tmp_path / "photos" / category
        folder.mkdir(parents=True)
        for i in range(5):
            image = rng.integers(0, 256, (28, 42, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{i}.png"), image)
    (tmp_path / "photos" / ".hidden").mkdir()  # not a category
    run_dir = tmp_path / "run"
    train(
        "data=folder",
        f"data.train_dir={tmp_path / 'photos'}",
        "input.resize=[28,42]",
        "setting=multi_class",
        f"run_dir={run_dir}",
    )
    config = OmegaConf.load(run_dir / "config.yaml")
    entries = {m.key: m for m in config.setting.members}
    assert list(entries) == ["bolts", "nuts"]
    for key, entry in entries.items():  # its own folder, its own held-out validation image
        assert entry.data.train_dir == str(tmp_path / "photos" / key)
        assert len(entry.data.holdout) == 1
        assert entry.category.name == key and entry.category.threshold.rule == "mean_std"
    own = shutil.copytree(tiny_image_dir, tmp_path / "new")
    argv = ["--run", str(run_dir), "--images", str(own), "--category", "nuts"]
    assert predict_main([*argv, "--out", str(tmp_path / "preds"), "--no-progress"]) == 0
    assert len(list((tmp_path / "preds" / "anomaly_images" / "nuts").rglob("*.tiff"))) == 4
