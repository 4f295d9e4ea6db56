"""ff-eval --maps end to end on copies of the ad2_sample: outputs, options and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from filterformer.cli.eval import main
from filterformer.runs.files import sign_run
from filterformer.runs.run import load_run
from filterformer.training.checkpoint import read_checkpoint_meta, save_checkpoint

SAMPLE = Path(__file__).parent / "data" / "ad2_sample"
DATA_ROOT = SAMPLE / "mvtec_ad_2"
GOLDEN_PRO = 0.386524487147623


def maps_copy(tmp_path: Path, with_pngs: bool = False) -> Path:
    """A writable copy of the sample's maps (``anomaly_images`` layout)."""
    out = tmp_path / "pred"
    shutil.copytree(SAMPLE / "anomaly_images", out / "anomaly_images")
    if with_pngs:
        shutil.copytree(SAMPLE / "anomaly_images_thresholded", out / "anomaly_images_thresholded")
    return out


def run(args: list[str], tmp_path: Path) -> tuple[int, dict | None]:
    out = tmp_path / "result.json"
    code = main([*args, "--data-root", str(DATA_ROOT), "--json", str(out), "--no-progress"])
    return code, json.loads(out.read_text()) if out.is_file() else None


@pytest.mark.slow
def test_out_folder_gets_metrics_pro_curve_and_overlays(tmp_path: Path, capsys) -> None:
    code, doc = run(["--maps", str(SAMPLE), "--out", str(tmp_path / "eval")], tmp_path)
    assert code == 0
    table = capsys.readouterr().out
    assert "fakecat" in table and "mean" in table and "AU-PRO@0.05" in table
    csv_lines = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("category,") and len(csv_lines) == 3
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == doc
    assert (tmp_path / "eval" / "pro_curve_fakecat.png").stat().st_size > 0
    overlays = sorted(p.name for p in (tmp_path / "eval" / "overlays").iterdir())
    assert [name.split("_")[1] for name in overlays] == ["best", "median", "worst"]


def test_given_thresholds_override_pngs_and_are_post_processed(tmp_path: Path) -> None:
    thresholds = tmp_path / "thr.json"
    thresholds.write_text(json.dumps({"fakecat": 1.0}))
    maps = maps_copy(tmp_path, with_pngs=True)
    _, plain = run(["--maps", str(maps), "--thresholds", str(thresholds)], tmp_path)
    _, closed = run(
        ["--maps", str(maps), "--thresholds", str(thresholds), "--closing", "5", "--fill-holes"],
        tmp_path,
    )
    row, row_closed = plain["categories"]["fakecat"], closed["categories"]["fakecat"]
    assert row["threshold"] == 1.0 and row["threshold_rule"] == "given"
    assert row["seg_tp"] + row["seg_fp"] < row_closed["seg_tp"] + row_closed["seg_fp"]


def test_float32_flag_gives_the_same_numbers_on_float16_maps(tmp_path: Path) -> None:
    _, doc = run(["--maps", str(SAMPLE), "--float32"], tmp_path)
    assert doc["categories"]["fakecat"]["au_pro@0.05"] == pytest.approx(GOLDEN_PRO, abs=1e-9)


def test_without_thresholds_or_validation_maps_segf1_is_not_computed(tmp_path, capsys) -> None:
    maps = maps_copy(tmp_path)
    shutil.rmtree(maps / "anomaly_images" / "fakecat" / "validation")
    code, doc = run(["--maps", str(maps), "--categories", "fakecat"], tmp_path)
    assert code == 0
    assert doc["categories"]["fakecat"]["seg_f1"] is None
    assert doc["categories"]["fakecat"]["au_pro@0.05"] == pytest.approx(GOLDEN_PRO, abs=1e-9)
    assert "SegF1 and ClassF1 are not computed" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["test_private", "test_private_mixed"])
def test_private_splits_point_to_ff_predict(split: str, tmp_path: Path, capsys) -> None:
    code, doc = run(["--maps", str(SAMPLE), "--split", split], tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and doc is None
    assert "no public ground truth" in err and "ff-predict" in err and "Traceback" not in err


def corrupt(maps: Path, relpath: str, data: np.ndarray | None) -> Path:
    path = maps / "anomaly_images" / "fakecat" / relpath
    if data is None:
        path.unlink()
    else:
        tifffile.imwrite(path, data)
    return path


@pytest.mark.parametrize(
    "relpath, data, message",
    [
        ("test_public/bad/001_overexposed.tiff", None, "not found"),
        ("test_public/good/000_regular.tiff", np.zeros((40, 64), np.float16), "original image"),
        ("test_public/bad/000_regular.tiff", np.full((48, 64), np.nan, np.float16), "NaN"),
        ("validation/good/000_regular.tiff", np.full((48, 64), np.inf, np.float32), "NaN or inf"),
        ("validation/good/000_regular.tiff", None, "not found"),
    ],
)
def test_bad_maps_exit_2_naming_the_file(tmp_path, capsys, relpath, data, message) -> None:
    path = corrupt(maps_copy(tmp_path), relpath, data)
    code, _ = run(["--maps", str(path.parents[3])], tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and message in err and "Traceback" not in err


def test_unknown_category_and_missing_maps_folder_exit_2(tmp_path, capsys) -> None:
    assert run(["--maps", str(SAMPLE), "--categories", "nocat"], tmp_path)[0] == 2
    assert "nocat" in capsys.readouterr().err
    assert run(["--maps", str(tmp_path / "absent")], tmp_path)[0] == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.slow
def test_maps_path_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from filterformer.cli.eval import main; "
        f"rc = main(['--maps', {str(SAMPLE)!r}, '--data-root', {str(DATA_ROOT)!r}, "
        "'--no-progress']); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_maps_or_runs_the_message_says_what_to_pass(tmp_path, capsys) -> None:
    code, _ = run(["--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert code == 2
    assert "no run folders" in capsys.readouterr().err


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run folder of a randomly initialised tiny model, and a small synthetic data root."""
    from hydra import compose, initialize_config_dir

    from filterformer.data.synthetic import make_synthetic_category
    from filterformer.runs.run import build_from_config, create_run
    from filterformer.training.checkpoint import save_checkpoint

    base = tmp_path_factory.mktemp("run_eval")
    counts = {
        "train": 1,
        "validation": 2,
        "test_public_good": 2,
        "test_public_bad": 3,
        "test_private": 1,
        "test_private_mixed": 1,
    }
    root = base / "data"
    make_synthetic_category(root, "synthetic", image_size=(64, 80), counts=counts)
    configs = Path(__file__).parents[1] / "configs"
    overrides = [
        "encoder=tiny_random",
        "data=synthetic",
        "category=synthetic",
        "~preset",
        f"run_dir={base / 'run'}",
        "+input.resize=[56,70]",
    ]
    with initialize_config_dir(str(configs), version_base=None):
        config = compose("train", overrides=overrides)
    run_dir = create_run(base / "run", config, "random")
    model, identity = build_from_config(config)
    save_checkpoint(run_dir / "checkpoints" / "last", model, meta={**identity, "step": 0})
    sign_run(run_dir)  # as its writer does
    return run_dir, root


def calibrate(run_dir: Path, data_root: Path) -> int:
    """ff-eval --calibrate: the run's writer stores every fusion mode's threshold."""
    args = ["--calibrate", "--run", str(run_dir), "--data-root", str(data_root)]
    return main([*args, "--no-progress", "--device", "cpu"])


@pytest.mark.slow
def test_calibrate_stores_every_mode_and_the_run_path_only_reads_it(untrained_run) -> None:
    run_dir, root = untrained_run
    args = ["--run", str(run_dir), "--data-root", str(root), "--no-progress", "--device", "cpu"]
    assert calibrate(run_dir, root) == 0
    stored = json.loads((run_dir / "thresholds.json").read_text())["synthetic"]
    assert set(stored) == {"inp", "filter"}  # fused modes need map statistics: none here
    record = stored["filter"]  # the run's mode (no fusion.json: the model's own)
    assert record["rule"] == "mean_std" and record["source_split"] == "validation"
    assert len(record["checkpoint"]) == 64 and record["map_range"][0] < record["map_range"][1]
    assert main(args) == 0
    out = run_dir.with_name(run_dir.name + "_eval") / "test_public"
    row = json.loads((out / "metrics.json").read_text())["categories"]["synthetic"]
    assert row["threshold"] == record["value"] and row["num_images"] == 5
    assert 0.0 <= row["au_pro@0.05"] <= 1.0 and 0.0 <= row["seg_f1"] <= 1.0
    assert (out / "pro_curve_synthetic.png").is_file() and any((out / "overlays").iterdir())
    assert json.loads((run_dir / "thresholds.json").read_text())["synthetic"] == stored


@pytest.mark.slow
def test_run_on_a_folder_dataset_is_evaluated_with_overlays(untrained_run, tmp_path) -> None:
    """Custom data (data=folder): samples have bare-stem relpaths and split "test"."""
    from hydra import compose, initialize_config_dir

    from filterformer.runs.run import build_from_config, create_run
    from filterformer.training.checkpoint import save_checkpoint

    _, root = untrained_run
    images = root / "synthetic"
    overrides = [
        "encoder=tiny_random",
        "data=folder",
        f"data.train_dir={images / 'train' / 'good'}",
        f"data.validation_dir={images / 'validation' / 'good'}",
        f"data.test_dir={images / 'test_public' / 'bad'}",
        f"data.mask_dir={images / 'test_public' / 'ground_truth' / 'bad'}",
        "category=synthetic",
        "category.name=bricks",
        "~preset",
        f"run_dir={tmp_path / 'run'}",
        "+input.resize=[56,70]",
    ]
    with initialize_config_dir(str(Path(__file__).parents[1] / "configs"), version_base=None):
        config = compose("train", overrides=overrides)
    run_dir = create_run(tmp_path / "run", config, "random")
    model, identity = build_from_config(config)
    save_checkpoint(run_dir / "checkpoints" / "last", model, meta={**identity, "step": 0})
    sign_run(run_dir)

    assert main(["--calibrate", "--run", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    assert main(["--run", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    overlays = sorted(
        (run_dir.with_name(run_dir.name + "_eval") / "test_public" / "overlays").iterdir()
    )
    assert overlays and all(p.name.startswith("bricks_") for p in overlays)


def scaled_float32_maps(tmp_path: Path, factor: float) -> Path:
    """The sample's maps as float32 TIFFs times ``factor`` (same ranking, other range)."""
    maps = maps_copy(tmp_path)
    for path in (maps / "anomaly_images").rglob("*.tiff"):
        tifffile.imwrite(path, tifffile.imread(path).astype(np.float32) * np.float32(factor))
    return maps


def test_tiny_float32_maps_warn_with_pixel_counts_and_float32_is_exact(tmp_path, capsys) -> None:
    maps = scaled_float32_maps(tmp_path, 1e-10)  # every score below float16's 2**-25: all 0
    code, rounded = run(["--maps", str(maps)], tmp_path)
    err = capsys.readouterr().err
    assert code == 0 and "ff-eval: warning:" in err
    assert "9216 (100.0%) flush to zero" in err and "--float32" in err  # 3 maps of 48 x 64
    assert rounded["categories"]["fakecat"]["au_pro@0.05"] < GOLDEN_PRO / 2
    code, exact = run(["--maps", str(maps), "--float32"], tmp_path)
    assert code == 0 and "warning" not in capsys.readouterr().err
    assert exact["categories"]["fakecat"]["au_pro@0.05"] == pytest.approx(GOLDEN_PRO, abs=1e-9)


def test_well_scaled_float32_maps_pass_without_a_warning(tmp_path, capsys) -> None:
    code, doc = run(["--maps", str(scaled_float32_maps(tmp_path, 1.0)), "--strict"], tmp_path)
    assert code == 0 and capsys.readouterr().err == ""
    assert doc["categories"]["fakecat"]["au_pro@0.05"] == pytest.approx(GOLDEN_PRO, abs=1e-9)


def test_extra_and_integer_maps_warn_and_strict_refuses_writing_nothing(tmp_path, capsys) -> None:
    maps = maps_copy(tmp_path)
    extra = corrupt(maps, "test_public/bad/999_unknown.tiff", np.zeros((48, 64), np.float16))
    integer = corrupt(maps, "test_public/good/000_regular.tiff", np.ones((48, 64), np.uint8))
    code, _ = run(["--maps", str(maps)], tmp_path)
    warnings = capsys.readouterr().err.splitlines()
    assert code == 0 and len(warnings) == 2
    assert "without an image" in warnings[0] and str(extra) in warnings[0]
    assert "integer TIFFs (uint8" in warnings[1] and str(integer) in warnings[1]
    out = tmp_path / "strict_out"
    code, doc = run(["--maps", str(maps), "--strict", "--out", str(out)], tmp_path / "x")
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and doc is None and not out.exists()
    assert len(err) == 1 and err[0].startswith("ff-eval: error: ") and "--strict" in err[0]
    assert str(extra) in err[0] and str(integer) in err[0]


def test_maps_rows_say_where_their_settings_were_chosen(tmp_path, capsys) -> None:
    """--maps cannot know the checkpoint and fusion mode; the threshold tells its own split."""
    _, doc = run(["--maps", str(maps_copy(tmp_path))], tmp_path)
    assert doc["selected_on"] == "unknown"
    assert doc["categories"]["fakecat"]["selected_on"] == {
        "checkpoint": "unknown",
        "fusion_mode": "unknown",
        "threshold": "validation",  # calibrated here: validation mean + 3 std
    }
    assert "checkpoint?, fusion mode?\n" in capsys.readouterr().out
    _, doc = run(["--maps", str(SAMPLE)], tmp_path)  # given PNGs: their threshold is unknown
    assert doc["categories"]["fakecat"]["selected_on"]["threshold"] == "unknown"
    oracle = tmp_path / "oracle.json"
    record = {"value": 1.0, "rule": "f1_optimal", "source_split": "test_public"}
    oracle.write_text(json.dumps({"fakecat": record}))
    _, doc = run(["--maps", str(SAMPLE), "--thresholds", str(oracle)], tmp_path)
    row = doc["categories"]["fakecat"]
    assert doc["selected_on"] == "test_public" and row["selected_on"]["threshold"] == "test_public"
    assert row["threshold_rule"].endswith("ORACLE")
    table = capsys.readouterr().out
    assert "checkpoint?, fusion mode?, threshold" in table and "optimistic" in table


def run_copy(untrained_run: tuple[Path, Path], tmp_path: Path) -> Path:
    """A writable copy of the untrained run folder, without what evaluating it added."""
    ignore = shutil.ignore_patterns("thresholds.json", "eval")
    run_dir = Path(shutil.copytree(untrained_run[0], tmp_path / "run", ignore=ignore))
    sign_run(run_dir)  # as its writer would have, without those files
    return run_dir


def eval_run(run_dir: Path, data_root: Path, *extra: str) -> tuple[int, dict | None]:
    """Calibrate the run as it is now (as training would have), then evaluate it."""
    assert calibrate(run_dir, data_root) == 0
    out = run_dir.with_name("result.json")
    code = main(
        ["--run", str(run_dir), "--data-root", str(data_root), "--json", str(out)]
        + ["--no-progress", "--device", "cpu", *extra]
    )
    return code, json.loads(out.read_text()) if out.is_file() else None


@pytest.mark.slow
def test_run_without_selection_is_labelled_as_choosing_nothing(untrained_run, tmp_path) -> None:
    """`last` and no fusion.json (as ff-convert or eval.every=0 leave it): nothing chosen."""
    run_dir = run_copy(untrained_run, tmp_path)
    code, doc = eval_run(run_dir, untrained_run[1])
    assert code == 0 and doc["selected_on"] is None
    expected = {"checkpoint": None, "fusion_mode": None, "threshold": "validation"}
    assert doc["categories"]["synthetic"]["selected_on"] == expected
    stored = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test_public" / "metrics.json").read_text()
    )
    assert stored["categories"]["synthetic"]["selected_on"] == expected


@pytest.mark.slow
def test_best_checkpoint_and_fusion_json_are_labelled_with_eval_split(
    untrained_run, tmp_path, capsys
) -> None:
    """What ff-train's evaluation leaves: best_<mode> and fusion.json, chosen on eval.split."""
    run_dir = run_copy(untrained_run, tmp_path)
    config = run_dir / "config.yaml"  # as trained with eval.split=test_public (the report's)
    config.write_text(config.read_text().replace("split: validation_pseudo", "split: test_public"))
    sign_run(run_dir)
    last = load_run(run_dir, checkpoint="last")
    meta = read_checkpoint_meta(run_dir / "checkpoints" / "last")
    save_checkpoint(run_dir / "checkpoints" / "best_inp", last.model, meta={**meta, "mode": "inp"})
    (run_dir / "fusion.json").write_text(json.dumps({"synthetic": "inp"}))
    sign_run(run_dir)
    code, doc = eval_run(run_dir, untrained_run[1])
    assert code == 0 and doc["selected_on"] == "test_public"
    selection = doc["categories"]["synthetic"]["selected_on"]
    assert selection == {
        "checkpoint": "test_public",
        "fusion_mode": "test_public",
        "threshold": "validation",
    }
    table = capsys.readouterr().out
    assert "checkpoint, fusion mode" in table and "selection-biased" in table
    code, doc = eval_run(run_dir, untrained_run[1], "--split", "validation")
    assert code == 0 and doc["selected_on"] == "validation"  # the threshold's split
    assert doc["categories"]["synthetic"]["selected_on"]["checkpoint"] == "test_public"


@pytest.mark.slow
def test_a_mode_without_threshold_is_refused_naming_calibrate(untrained_run, tmp_path, capsys):
    run_dir = run_copy(untrained_run, tmp_path)
    other = {"value": 7.0, "rule": "mean_std", "k": 3, "source_split": "validation"}
    (run_dir / "thresholds.json").write_text(json.dumps({"synthetic": {"inp": other}}))
    sign_run(run_dir)
    before = (run_dir / "thresholds.json").read_bytes()
    args = ["--run", str(run_dir), "--data-root", str(untrained_run[1]), "--no-progress"]
    assert main(args) == 2  # the run's mode is "filter": no threshold, nothing written
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "'filter' has no calibrated threshold" in err[0]
    assert "ff-eval --calibrate --run" in err[0]
    assert (run_dir / "thresholds.json").read_bytes() == before
    code, doc = eval_run(run_dir, untrained_run[1])
    stored = json.loads((run_dir / "thresholds.json").read_text())["synthetic"]
    assert code == 0 and stored["filter"]["rule"] == "mean_std" and stored["inp"] != other
    assert doc["categories"]["synthetic"]["threshold"] == stored["filter"]["value"]


@pytest.mark.slow
def test_f1_optimal_rule_is_calibrated_on_test_public_and_labelled_an_oracle(
    untrained_run, tmp_path
) -> None:
    from omegaconf import OmegaConf

    run_dir = run_copy(untrained_run, tmp_path)
    config = OmegaConf.load(run_dir / "config.yaml")
    config.category.threshold = {"rule": "f1_optimal"}
    OmegaConf.save(config, run_dir / "config.yaml")
    sign_run(run_dir)
    code, doc = eval_run(run_dir, untrained_run[1])
    row = doc["categories"]["synthetic"]
    assert code == 0 and row["threshold_rule"] == "f1_optimal(test_public) ORACLE"
    assert row["selected_on"]["threshold"] == "test_public" and doc["selected_on"] == "test_public"


@pytest.mark.slow
def test_calibration_without_validation_split_is_one_clear_error(untrained_run, tmp_path, capsys):
    run_dir = run_copy(untrained_run, tmp_path)
    data = Path(shutil.copytree(untrained_run[1], tmp_path / "data"))
    shutil.rmtree(data / "synthetic" / "validation")
    assert calibrate(run_dir, data) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "no fusion mode could be calibrated" in err[0] and "validation" in err[0]
    assert not (run_dir / "thresholds.json").exists()
