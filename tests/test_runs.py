"""Run folders: what ff-train writes, and load_run giving back a ready model and its settings."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from filterformer.errors import CheckpointError, ConfigError
from filterformer.evaluation.thresholds import Threshold, write_thresholds
from filterformer.inference.predict import Smoothing
from filterformer.models.encoder import weights_sha256
from filterformer.runs.compose import config_dir
from filterformer.runs.files import sign_run
from filterformer.runs.run import (
    build_smoothing,
    build_tiling,
    create_run,
    image_score_rule,
    load_run,
    resolve_run_paths,
)
from filterformer.runs.train import run_training
from filterformer.training.checkpoint import checkpoint_files

TINY = [  # the demo preset shrunk to seconds: 56 x 70 images, 1 epoch
    "preset=demo",
    "data.image_size=[56,70]",
    "input.resize=[56,70]",
    "data.counts={train: 4, validation: 2, test_public_good: 2, test_public_bad: 2, "
    "test_private: 1, test_private_mixed: 1}",
    "train.epochs=1",
    "train.batch_size=2",
    "eval.every=1",
    "progress=false",
]


def compose_train(*overrides):
    with initialize_config_dir(str(config_dir()), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("run")
    run_training(compose_train(*TINY, f"run_dir={run_dir}"))
    torch.set_num_threads(threads)
    return run_dir


@pytest.mark.slow
def test_run_folder_holds_the_contract_files(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.yaml",
        "versions.json",
        "train_log.csv",
        "checkpoints",
        "map_stats.json",
        "fusion.json",
        "thresholds.json",
    } <= names
    versions = json.loads((tiny_run / "versions.json").read_text())
    assert {
        "python",
        "torch",
        "timm",
        "numpy",
        "filterformer",
        "git_commit",
        "seed",
        "encoder_weights",
    } <= set(versions)
    assert versions["encoder_weights"] == "random:seed=1"
    assert {p.name for p in (tiny_run / "checkpoints").glob("best_*.json")} == {
        f"best_{m}.json" for m in ("inp", "filter", "mean", "max", "product")
    }


@pytest.mark.slow
def test_load_run_gives_the_model_of_the_chosen_mode_and_its_settings(tiny_run):
    run = load_run(tiny_run)
    mode = json.loads((tiny_run / "fusion.json").read_text())["synthetic"]
    assert run.mode == mode and run.category == "synthetic"
    assert run.checkpoint == checkpoint_files(tiny_run / "checkpoints" / f"best_{mode}")[0]
    assert not run.model.training
    assert run.geometry.input_size == (56, 70)
    assert set(run.map_stats) == {"inp", "filter"}
    assert run.tiling is None
    assert run.threshold.rule == "mean_std"  # calibrated when training ended, on this checkpoint
    assert run.threshold.checkpoint == weights_sha256(run.checkpoint)
    assert run.postprocess == {"closing": 0, "fill_holes": False, "erosion": 0}
    assert run.data_root == tiny_run / "data"
    assert run.smoothing == Smoothing(sigma=4.0, kernel_size=5, padding="replicate", size=None)
    assert run.image_score == "max" and run.geometry.interpolation == "area"
    with torch.no_grad():
        maps = run.model.anomaly_maps(torch.zeros(1, 3, 56, 70))
    assert set(maps) == {"inp", "filter"}


@pytest.mark.slow
def test_load_run_reads_thresholds_of_its_checkpoint_only(tiny_run, tmp_path):
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    run = load_run(run_dir, checkpoint="last")
    assert run.checkpoint == checkpoint_files(run_dir / "checkpoints" / "last").weights
    # a threshold comes with the checkpoint only if it was calibrated on the same weights
    assert run.threshold is None or run.threshold.checkpoint == weights_sha256(run.checkpoint)
    best = load_run(run_dir).checkpoint
    for sha, expected in ((weights_sha256(best), 0.7), ("0" * 64, None)):
        threshold = Threshold(0.7, "mean_std", {"k": 3.0}, "validation", checkpoint=sha)
        write_thresholds(run_dir / "thresholds.json", {"synthetic": threshold}, mode=run.mode)
        sign_run(run_dir)  # as the run's writer (its calibration) does
        if expected is None:
            with pytest.raises(CheckpointError, match="another checkpoint.*ff-eval --calibrate"):
                load_run(run_dir)
        else:
            assert load_run(run_dir).threshold.value == expected


@pytest.mark.slow
def test_load_run_refuses_a_checkpoint_of_another_encoder(tiny_run, tmp_path):
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    meta_file = checkpoint_files(run_dir / "checkpoints" / "last")[1]
    original = meta_file.read_text()
    meta_file.write_text(json.dumps({**json.loads(original), "encoder_weights": "random:seed=2"}))
    sign_run(run_dir)  # a consistent run, of another encoder
    with pytest.raises(CheckpointError, match="encoder_weights: checkpoint has 'random:seed=2'"):
        load_run(run_dir, checkpoint="last")


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_run(tmp_path / "missing")


def test_create_run_stores_the_resolved_config(tmp_path):
    cfg = compose_train("preset=inpformer_paper", f"run_dir={tmp_path}")
    create_run(tmp_path, cfg, encoder_weights="abc")
    text = (tmp_path / "config.yaml").read_text()
    assert "${" not in text and f"run_dir: {tmp_path}" in text
    assert json.loads((tmp_path / "versions.json").read_text())["encoder_weights"] == "abc"


def test_eval_protocol_and_training_tiles_come_from_the_config():
    cfg = compose_train(
        "category=can",
        "eval.protocol_size=[256,256]",
        "eval.blur_padding=zero",
        "eval.image_score=top1",
        "eval.sigma=2",
    )
    assert build_smoothing(cfg) == Smoothing(2.0, 5, "zero", (256, 256))
    assert image_score_rule(cfg) == "top1"
    assert build_tiling(cfg, training=True).tile == (1024, 1024)
    inference_only = compose_train("category=can", "category.tiling.train=false")
    assert build_tiling(inference_only) is not None
    assert build_tiling(inference_only, training=True) is None
    assert build_tiling(compose_train("category=vial"), training=True) is None
    grid = compose_train("category=can", "category.tiling.mode=grid")
    assert build_tiling(grid).record() == {"grid": [4, 2], "pyramid": [[4, 2]]}
    assert build_tiling(grid, training=True).pyramid == [(2, 1), (4, 2)]  # the ISVL code's
    older = OmegaConf.create({"eval": {"default_mode": None}})  # a run made before these keys
    assert build_smoothing(older) == Smoothing() and image_score_rule(older) == "max"
    with pytest.raises(ConfigError, match="eval.image_score 'mean' is unknown"):
        image_score_rule(OmegaConf.create({"eval": {"image_score": "mean"}}))


def test_relative_encoder_weights_are_read_from_the_run_folder(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "encoder.safetensors").touch()
    (tmp_path / "elsewhere.safetensors").touch()
    monkeypatch.chdir(tmp_path)
    config = OmegaConf.create({"encoder": {"weights": "encoder.safetensors"}})
    resolved = resolve_run_paths(config, run_dir)
    assert resolved.encoder.weights == str(run_dir / "encoder.safetensors")
    assert config.encoder.weights == "encoder.safetensors"  # a copy: the input is untouched
    # not in the run folder, or absolute: left as given (relative to the working folder)
    for given in ("elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors")):
        config.encoder.weights = given
        assert resolve_run_paths(config, run_dir).encoder.weights == given


@pytest.mark.slow
def test_each_checkpoint_is_used_with_the_map_statistics_of_its_own_weights(tiny_run, tmp_path):
    """Fused maps normalise by validation statistics, which differ between checkpoints: a best
    checkpoint brings its own; `last` uses map_stats.json (computed after the last epoch)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    mode = json.loads((run_dir / "fusion.json").read_text())["synthetic"]
    meta_file = run_dir / "checkpoints" / f"best_{mode}.json"
    meta = json.loads(meta_file.read_text())
    assert set(meta["map_stats"]) == {"inp", "filter"}  # written by the training loop
    meta["map_stats"] = {"inp": [0.25, 0.5], "filter": [0.75, 1.5]}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{meta_file}: was changed since"):
        load_run(run_dir)  # not by the run's writer: refused
    sign_run(run_dir)

    assert load_run(run_dir).map_stats == {"inp": (0.25, 0.5), "filter": (0.75, 1.5)}
    final = json.loads((run_dir / "map_stats.json").read_text())
    assert load_run(run_dir, checkpoint="last").map_stats == {
        name: (v["mean"], v["std"]) for name, v in final.items()
    }


@pytest.mark.slow
def test_a_changed_weights_file_is_refused_by_name_unless_the_user_skips_the_check(
    tiny_run, tmp_path, capsys
):
    """One flipped bit in best_<mode>: load_run, ff-eval and ff-predict refuse it, naming the
    file; --no-verify (verify=False) is the user's explicit choice to use it anyway."""
    from filterformer.cli.eval import main as eval_cli
    from filterformer.cli.predict import main as predict_cli

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    weights = load_run(run_dir).checkpoint
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match=rf"{weights}: SHA-256 differs"):
        load_run(run_dir)
    assert load_run(run_dir, checkpoint="last").checkpoint != weights  # `last` is intact
    out = tmp_path / "maps"
    predict = ["--run", str(run_dir), "--out", str(out), "--split", "test_public", "--no-progress"]
    evaluate = ["--run", str(run_dir), "--no-progress"]
    for cli, args in ((predict_cli, predict), (eval_cli, evaluate)):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{weights}: SHA-256 differs" in err
    assert load_run(run_dir, verify=False).checkpoint == weights
    assert predict_cli([*predict, "--no-verify"]) == 0
