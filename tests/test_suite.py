"""Suites (configs/suite): one model per category, trained into one folder, one submission."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from filterformer.cli.eval import main as eval_main
from filterformer.cli.suite import suite_jobs
from filterformer.cli.train import main as train_main
from filterformer.data.synthetic import make_synthetic_category
from filterformer.errors import ConfigError
from filterformer.evaluation.thresholds import read_thresholds
from filterformer.runs.compose import config_dir
from filterformer.runs.predict import PredictOptions, export_submission

SUITE = "suite=inpformer_cpr_hybrid"


def ff_train(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["ff-train", *args])
    train_main()


def test_cfg_job_prints_each_category_s_routed_config(monkeypatch, capsys):
    ff_train(monkeypatch, "--cfg", "job", SUITE, "category=vial")
    vial = yaml.safe_load(capsys.readouterr().out)
    assert vial["model"]["name"] == "cpr" and vial["category"]["cpr"]["batch_size"] == 8
    ff_train(monkeypatch, "--cfg", "job", SUITE, "category=can")
    can = yaml.safe_load(capsys.readouterr().out)
    assert (can["model"]["name"], can["encoder"]["variant"]) == ("inpformer", "dinov2_vitl14_reg")
    assert can["input"]["resize"] == [448, 448] and can["input"]["crop"] is None
    assert (can["train"]["epochs"], can["train"]["batch_size"]) == (10, 16)
    assert can["train"]["augment"]["color_jitter"]["brightness"] == 0.5  # lighting: can
    assert can["category"]["tiling"]["mode"] == "grid" and can["category"]["tiling"]["grid"] == [
        4,
        2,
    ]
    assert can["category"]["threshold"]["rule"] == "f1_pseudo"
    assert can["run_dir"] == "runs/suite/inpformer_cpr_hybrid/can"
    ff_train(monkeypatch, "--cfg", "job", "suite=filterformer_cpr", "category=wallplugs")
    wallplugs = yaml.safe_load(capsys.readouterr().out)
    assert wallplugs["model"]["name"] == "filterformer"
    assert wallplugs["train"]["augment"]["random_resized_crop"]  # no lighting override


def test_routed_overrides_reach_their_route_only():
    jobs = suite_jobs(config_dir(), [SUITE, "suite.dir=S", "cpr:seed=7", "seed=3"])
    by_category = {job.category: job for job in jobs}
    assert len(jobs) == 8 and by_category["vial"].route == "cpr"
    assert by_category["vial"].argv[-2:] == ["seed=7", "seed=3"]
    assert "seed=7" not in by_category["can"].argv
    assert by_category["rice"].run_dir == Path("S/rice")
    assert suite_jobs(config_dir(), ["category=can"]) is None


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["suite=nope"], "valid: filterformer_cpr, inpformer_cpr_hybrid"),
        ([SUITE, "category=bottle"], "no route for category 'bottle'"),
    ],
)
def test_bad_suite_command_lines_are_refused(args, match):
    with pytest.raises(ConfigError, match=match):
        suite_jobs(config_dir(), args)


TINY = [
    "progress=false",
    "train.epochs=1",
    "eval.every=1",
    "train.num_workers=0",
    "train.threads=1",
    "inpformer:encoder=tiny_random",
    "inpformer:input.resize=[56,56]",
    "inpformer:train.batch_size=4",
    "cpr:encoder=tiny_densenet",
    "cpr:input.resize=[64,64]",
    "cpr:category.cpr.steps=4",
    "cpr:category.cpr.batch_size=4",
    "cpr:model.out_dim=32",
    "cpr:model.inner_dim=16",
    "cpr:model.inception_dim=16",
    "cpr:model.codebook_samples=500",
    "cpr:model.points=50",
    "cpr:model.top_k=3",
]
COUNTS = {
    "train": 6,
    "validation": 3,
    "test_public_good": 1,
    "test_public_bad": 2,
    "test_private": 2,
    "test_private_mixed": 2,
}


def test_a_suite_trains_each_category_with_its_model_into_one_submission(monkeypatch, tmp_path):
    """An MVTec AD 2-layout root of two synthetic categories named can (INP-Former, grid
    tiles) and vial (CPR): one suite folder, then one checked, packed submission."""
    data = tmp_path / "data"
    for category in ("can", "vial"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    suite = tmp_path / "suite"
    threads = torch.get_num_threads()
    args = [SUITE, f"suite.dir={suite}", "suite.categories=[can,vial]", f"data.root={data}"]
    ff_train(monkeypatch, *args, *TINY)
    torch.set_num_threads(threads)
    models = {c: OmegaConf.load(suite / c / "config.yaml").model.name for c in ("can", "vial")}
    assert models == {"can": "inpformer", "vial": "cpr"}
    options = PredictOptions(no_progress=True)
    archive = export_submission(suite, tmp_path / "team", options, counts={"can": 2, "vial": 2})
    assert archive is not None and archive.is_file()
    document = tmp_path / "metrics.json"
    argv = ["--runs-dir", str(suite), "--no-progress", "--json", str(document)]
    assert eval_main([*argv, "--split", "test_public"]) == 0  # one table for the suite
    assert set(json.loads(document.read_text())["categories"]) == {"can", "vial"}
    for category in ("can", "vial"):
        [threshold] = read_thresholds(suite / category / "thresholds.json").values()
        assert (threshold.rule, threshold.source_split) == ("f1_pseudo", "validation_pseudo")
        mixed = threshold.for_split("test_private_mixed")  # its own, on relit pseudo-defects
        assert (mixed.rule, mixed.source_split) == ("f1_pseudo", "validation_pseudo_mixed")


def test_a_suite_with_m_sweeps_each_route_so_a_launcher_runs_one_job_per_category(
    monkeypatch, tmp_path
):
    """``-m``: one hydra sweep per route (and per category overrides), each category its own
    job (joblib, SLURM), into the same suite folder as without -m."""
    jobs = suite_jobs(config_dir(), [SUITE, "-m", "hydra/launcher=joblib", "suite.dir=S"])
    assert {job.category for job in jobs} == {
        "can,fabric,rice",  # INP-Former with the lighting augmentation
        "sheet_metal,wallplugs,walnuts",
        "fruit_jelly,vial",  # CPR
    }
    assert all(job.argv[0] == "-m" and job.argv[-1] == "run_dir=S/${category.name}" for job in jobs)

    data = tmp_path / "data"
    for category in ("sheet_metal", "wallplugs"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    suite = tmp_path / "suite"
    threads = torch.get_num_threads()
    sweep = [f"hydra.sweep.dir={tmp_path / 'multirun'}", "eval.every=0"]
    args = [SUITE, "-m", f"suite.dir={suite}", "suite.categories=[sheet_metal,wallplugs]"]
    ff_train(monkeypatch, *args, f"data.root={data}", *TINY, *sweep)
    torch.set_num_threads(threads)
    for category in ("sheet_metal", "wallplugs"):
        config = OmegaConf.load(suite / category / "config.yaml")
        assert (config.category.name, config.model.name) == (category, "inpformer")
