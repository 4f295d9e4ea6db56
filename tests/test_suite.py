"""Suites (configs/suite): one model per category, trained into one folder, one submission."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import TINY_SUITE
from filterformer.cli.eval import main as eval_main
from filterformer.cli.predict import main as predict_main
from filterformer.cli.suite import suite_jobs
from filterformer.cli.train import main as train_main
from filterformer.data.synthetic import make_synthetic_category
from filterformer.errors import ConfigError
from filterformer.evaluation.thresholds import read_thresholds
from filterformer.runs.compose import config_dir
from filterformer.runs.predict import PredictOptions, export_submission, submission_counts
from filterformer.runs.run import load_run
from filterformer.submission import check_submission

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
    assert can["train"]["augment"]["lighting"]["brightness"] == [0.5, 1.2]  # lighting: can
    tiling = can["category"]["tiling"]
    assert (tiling["enabled"], tiling["mode"], tiling["grid"]) == (True, "grid", [4, 2])
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
        (["suite=nope"], "valid: demo, filterformer_cpr, inpformer_cpr_hybrid, isvl"),
        ([SUITE, "category=bottle"], "no route for category 'bottle'"),
    ],
)
def test_bad_suite_command_lines_are_refused(args, match):
    with pytest.raises(ConfigError, match=match):
        suite_jobs(config_dir(), args)


COUNTS = {
    "train": 6,
    "validation": 3,
    "test_public_good": 1,
    "test_public_bad": 2,
    "test_private": 2,
    "test_private_mixed": 2,
}


@pytest.mark.slow
def test_a_suite_trains_each_category_with_its_model_into_one_submission(monkeypatch, tmp_path):
    """An MVTec AD 2-layout root of two synthetic categories named can (INP-Former, grid
    tiles) and vial (CPR): one suite folder, then one checked, packed submission."""
    data = tmp_path / "data"
    for category in ("can", "vial"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    suite = tmp_path / "suite"
    threads = torch.get_num_threads()
    args = [SUITE, f"suite.dir={suite}", "suite.categories=[can,vial]", f"data.root={data}"]
    ff_train(monkeypatch, *args, *TINY_SUITE)
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
        mode = load_run(suite / category).mode
        [threshold] = read_thresholds(suite / category / "thresholds.json", mode).values()
        assert (threshold.rule, threshold.source_split) == ("f1_pseudo", "validation_pseudo")
        mixed = threshold.for_split("test_private_mixed")  # its own, on relit pseudo-defects
        assert (mixed.rule, mixed.source_split) == ("f1_pseudo", "validation_pseudo_mixed")


@pytest.mark.slow
def test_a_suite_with_m_sweeps_each_route_so_a_launcher_runs_one_job_per_category(
    monkeypatch, tmp_path
):
    """``-m``: one hydra sweep per route (and per category overrides), each category its own
    job (joblib, SLURM), into the same suite folder as without -m."""
    jobs = suite_jobs(config_dir(), [SUITE, "-m", "hydra/launcher=joblib", "suite.dir=S"])
    assert {job.category for job in jobs} == {
        "can,rice",  # INP-Former with the lighting augmentation
        "fabric",  # ... and its own hole filling
        "sheet_metal,wallplugs",
        "walnuts",  # its own hole filling
        "fruit_jelly,vial",  # CPR
    }
    assert all(job.argv[0] == "-m" and job.argv[-1] == "run_dir=S/${category.name}" for job in jobs)

    data = tmp_path / "data"
    for category in ("sheet_metal", "wallplugs"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    suite = tmp_path / "suite"
    threads = torch.get_num_threads()
    sweep = [f"hydra.sweep.dir={tmp_path / 'multirun'}", "eval.every=0"]
    sweep += ["inpformer:category.tiling.enabled=false"]  # sheet_metal's 21 tiles an image
    args = [SUITE, "-m", f"suite.dir={suite}", "suite.categories=[sheet_metal,wallplugs]"]
    ff_train(monkeypatch, *args, f"data.root={data}", *TINY_SUITE, *sweep)
    torch.set_num_threads(threads)
    for category in ("sheet_metal", "wallplugs"):
        config = OmegaConf.load(suite / category / "config.yaml")
        assert (config.category.name, config.model.name) == (category, "inpformer")


def test_cfg_job_without_a_category_prints_the_routing_table(monkeypatch, capsys):
    ff_train(monkeypatch, "--cfg", "job", "suite=demo")
    header, brick, gravel, _, one, routed = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["category", "route", "run"]
    assert brick.split()[:3] == ["brick", "filterformer", "runs/suite/demo/brick"]
    assert "preset=cpr_demo" in gravel and gravel.split()[1] == "cpr"
    assert one.endswith("ff-train --cfg job suite=demo category=brick")
    assert "<route>:key=value" in routed


def test_a_route_s_missing_weights_are_named_in_the_route_form(monkeypatch, capsys):
    args = ["suite=demo", "suite.categories=[gravel]", "cpr:encoder.pretrained=true"]
    with pytest.raises(SystemExit) as exit_info:
        ff_train(monkeypatch, *args, "cpr:encoder=densenet201")
    err = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 2
    assert "cpr:encoder.weights=weights/" in err and " encoder.weights=" not in err


@pytest.mark.slow
def test_suite_demo_trains_two_models_into_one_checked_submission(monkeypatch, tmp_path):
    """ff-train suite=demo as the README gives it (shortened: fewer, smaller images and fewer
    epochs), then ff-predict --runs ... --submission demo: one checked, packed submission of
    both."""
    monkeypatch.chdir(tmp_path)
    counts = {"train": 8, "validation": 3, "test_public_good": 2, "test_public_bad": 2}
    counts |= {"test_private": 2, "test_private_mixed": 2}
    shorter = [f"data.counts.{split}={n}" for split, n in counts.items()]
    shorter += ["progress=false", "filterformer:train.epochs=1", "filterformer:eval.every=1"]
    shorter += ["cpr:category.cpr.steps=4", "cpr:train.epochs=1", "cpr:eval.every=1"]
    shorter += ["data.image_size=[56,70]", "filterformer:input.resize=[56,70]"]
    shorter += ["cpr:input.resize=[64,64]"]
    threads = torch.get_num_threads()
    ff_train(monkeypatch, "suite=demo", *shorter)
    torch.set_num_threads(threads)
    suite = Path("runs/suite/demo")
    models = {c: OmegaConf.load(suite / c / "config.yaml").model.name for c in ("brick", "gravel")}
    assert models == {"brick": "filterformer", "gravel": "cpr"}
    assert submission_counts(suite) == {"brick": 2, "gravel": 2}
    assert predict_main(["--runs", str(suite), "--submission", "demo", "--no-progress"]) == 0
    assert Path("demo.tar.gz").is_file()
    problems = check_submission("demo", counts=submission_counts(suite))
    assert not [p for p in problems if p.severity == "error"]


def cfg_job(monkeypatch, capsys, *args) -> dict:
    ff_train(monkeypatch, "--cfg", "job", *args)
    return yaml.safe_load(capsys.readouterr().out)


# The ISVL hybrid code (github.com/ISVL119/isvl @a7e5287), category by category: the model,
# the thresholds of 4_threshold_mapv2.py (test_private, test_private_mixed), the test grid and
# training pyramid of 1_image_splitter.py (long-edge halves / strips are n x 1 grids; None:
# whole images), and whether isvl.py's lighting augmentation trains it.
ISVL_CODE = {
    "can": ("inpformer", (79, 96), [4, 2], [[2, 1], [4, 2]], True),
    "fabric": ("inpformer", (69, 69), [2, 2], [[1, 1], [2, 2]], True),
    "fruit_jelly": ("cpr", (254, 254), None, None, False),
    "rice": ("inpformer", (54, 54), [4, 4], [[1, 1], [2, 2], [4, 4]], True),
    "sheet_metal": ("inpformer", (63, 65), [8, 2], [[1, 1], [4, 1], [8, 2]], False),
    "vial": ("cpr", (164, 177), None, None, False),
    "wallplugs": ("inpformer", (99, 108), [1, 1], [[1, 1]], False),
    "walnuts": ("inpformer", (67, 71), [2, 2], [[1, 1], [2, 2]], False),
}
ISVL_POSTPROCESS = {  # 5_post_image_process*.py, 5_erode_image.py: rect kernels
    "fabric": {"closing": 80, "fill_holes": "corner", "fill_guard": 0.95, "erosion": 0},
    "walnuts": {"closing": 10, "fill_holes": "corner", "fill_guard": 0.95, "erosion": 0},
    "fruit_jelly": {"closing": 0, "fill_holes": False, "erosion": 15},
}


@pytest.mark.parametrize("category", sorted(ISVL_CODE))
def test_suite_isvl_is_the_hybrid_s_code(monkeypatch, capsys, category):
    model, (private, mixed), grid, pyramid, lighting = ISVL_CODE[category]
    cfg = cfg_job(monkeypatch, capsys, "suite=isvl", f"category={category}")
    assert cfg["model"]["name"] == model and cfg["run_dir"] == f"runs/suite/isvl/{category}"
    threshold = cfg["category"]["threshold"]
    assert (threshold["rule"], threshold["level"], threshold.get("scale", 1)) == (
        "fixed",
        private,
        1,
    )
    assert threshold["splits"]["test_private_mixed"]["level"] == mixed
    assert {threshold["chosen_on"], threshold["splits"]["test_private_mixed"]["chosen_on"]} == {
        "authors_test_labels"
    }
    assert cfg["eval"]["levels"] == 255  # 8-bit maps: floor(255 m) > level
    post = cfg["category"]["postprocess"]
    for key, value in ISVL_POSTPROCESS.get(category, {"closing": 0, "erosion": 0}).items():
        assert post[key] == value, key
    assert post.get("kernel", "rect") == "rect" or not (post["closing"] or post["erosion"])
    foreground = (post.get("splits") or {}).get("test_private_mixed", {}).get("foreground")
    assert foreground == (15 if category == "walnuts" else None)
    augment = cfg["train"]["augment"]
    if lighting:
        assert augment == {
            "lighting": {
                "p": 0.5,
                "brightness": [0.5, 1.2],
                "regions": 3,
                "region_size": [30, 70],
                "region_brightness": [0.5, 1.5],
                "halves": [1.5, 0.7],
            },
            "hflip": 0.5,
            "vflip": 0.5,
        }
    else:
        assert augment is None
    if model == "inpformer":
        tiling = cfg["category"]["tiling"]
        assert (tiling["enabled"], tiling["mode"], tiling["train_tiles"]) == (True, "grid", "all")
        assert (tiling["grid"], tiling["pyramid"]) == (grid, pyramid)
        assert cfg["encoder"]["variant"] == "dinov2_vitl14_reg" and cfg["model"]["num_inps"] == 6
        assert (cfg["input"]["resize"], cfg["input"]["crop"], cfg["input"]["fit"]) == (
            [448, 448],
            None,
            "squash",
        )
        assert (cfg["train"]["epochs"], cfg["train"]["batch_size"]) == (10, 16)
        assert cfg["eval"]["every"] == 0  # the last weights
        blur = [cfg["eval"][k] for k in ("blur_at", "blur_padding", "blur_kernel", "sigma")]
        assert blur == ["original", "zero", 5, 4]
    else:
        assert cfg["category"]["tiling"]["enabled"] is False
        steps = {"fruit_jelly": 2000, "vial": 1300}[category]
        assert (cfg["category"]["cpr"]["steps"], cfg["category"]["cpr"]["batch_size"]) == (steps, 8)
        assert cfg["input"]["resize"] == [320, 320] and cfg["eval"]["sigma"] == 0  # unblurred
        defects = cfg["cpr"]["pseudo_defects"]
        assert defects["anomaly_probability"] == 1.0 and defects["max_tries"] == 1
        assert {k for k, w in defects["kinds"].items() if w} == {"cut_paste"}
        assert defects["paste"]["blend"] == "foreground" and defects["paste"]["canvas"] == 640
        assert defects["paste"]["label_level"] == 0.45 and defects["paste"]["anchor_level"] == 0.8


def _flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


DIFFERENCES = {  # docs/hybrid.md: every setting where inpformer_cpr_hybrid departs from isvl
    "inpformer": {"eval.blur_at", "eval.levels"},
    "cpr": {
        "eval.sigma",
        "eval.levels",
        "cpr.pseudo_defects",
        "cpr.relight",
        "model.photometric",
    },
    "all": {"category.threshold", "run_dir"},
    "fabric": {"category.postprocess.fill_holes"},
    "walnuts": {"category.postprocess.fill_holes"},
}


@pytest.mark.parametrize("category", sorted(ISVL_CODE))
def test_our_hybrid_departs_from_isvl_only_where_docs_hybrid_says(monkeypatch, capsys, category):
    isvl = _flat(cfg_job(monkeypatch, capsys, "suite=isvl", f"category={category}"))
    ours = _flat(cfg_job(monkeypatch, capsys, SUITE, f"category={category}"))
    differing = {k for k in isvl.keys() | ours.keys() if isvl.get(k) != ours.get(k)}
    documented = set().union(
        *(DIFFERENCES.get(key, set()) for key in ("all", ISVL_CODE[category][0], category))
    )
    unexplained = {k for k in differing if not any(k.startswith(d) for d in documented)}
    assert not unexplained
    assert all(any(k.startswith(d) for k in differing) for d in documented)


def test_isvl_cut_paste_needs_its_crop_folders_before_any_work(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ff_train(monkeypatch, "suite=isvl", "category=vial", f"suite.dir={tmp_path / 'suite'}")
    assert exit_info.value.code == 2
    assert "crops_dir=crops/isvl/vial is no folder" in capsys.readouterr().err
    assert not (tmp_path / "suite").exists()


@pytest.mark.slow
def test_suite_isvl_trains_and_reports_the_authors_thresholds(monkeypatch, tmp_path, capsys):
    """suite=isvl end to end on two synthetic categories: 8-bit maps, the published levels as
    fixed thresholds, and every table marking them as chosen on test labels by the authors."""
    import cv2

    data = tmp_path / "data"
    for category in ("can", "vial"):
        make_synthetic_category(data, category=category, image_size=(64, 96), counts=COUNTS)
    for kind in ("tube", "contamination"):  # two of the code's vial crop folders
        crop = np.zeros((40, 12, 4), np.uint8)
        crop[4:36, 3:9] = (40, 200, 90, 255)
        (tmp_path / "crops" / kind).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "crops" / kind / "a.png"), crop)
    suite = tmp_path / "suite"
    threads = torch.get_num_threads()
    args = ["suite=isvl", f"suite.dir={suite}", "suite.categories=[can,vial]", f"data.root={data}"]
    crops = f"cpr:cpr.pseudo_defects.crops_dir={tmp_path / 'crops'}"
    # eval.every=0: the last weights, as the code
    ff_train(monkeypatch, *args, *TINY_SUITE, crops, "eval.every=0")
    torch.set_num_threads(threads)
    capsys.readouterr()
    document = tmp_path / "metrics.json"
    argv = ["--runs-dir", str(suite), "--no-progress", "--json", str(document)]
    assert eval_main([*argv, "--split", "test_public"]) == 0
    table = capsys.readouterr().out
    assert "chosen by the method's authors on test labels" in " ".join(table.split())
    metrics = json.loads(document.read_text())
    assert metrics["selected_on"] == "test_public"
    assert metrics["categories"]["can"]["selected_on"]["threshold"] == "authors_test_labels"
    for category, level in (("can", 79), ("vial", 164)):
        [threshold] = read_thresholds(suite / category / "thresholds.json").values()
        assert (threshold.rule, threshold.value, threshold.source_split) == (
            "fixed",
            level,
            "authors_test_labels",
        )
