"""Your own images (data=folder): category=custom, aspect ratio kept, hold-out validation,
absolute paths in the run's config, and ff-predict --images' scores.csv."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from filterformer.cli import eval as ff_eval
from filterformer.cli import predict as ff_predict
from filterformer.cli import train as ff_train
from filterformer.cli.train import main as train_cli
from filterformer.data.folder import ImageFolderDataset
from filterformer.data.training_set import TrainingImages
from filterformer.errors import ConfigError
from filterformer.inference.predict import predict_maps
from filterformer.runs import train as run_train
from filterformer.runs.run import build_from_config, build_geometry, split_samples

CONFIGS = Path(__file__).parents[1] / "configs"
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
WIDE, TALL = (48, 64), (64, 48)
TINY = [  # the demo recipe cut to one epoch on 28 px inputs
    "preset=demo",
    "data=folder",
    "train.epochs=1",
    "eval.every=1",
    "progress=false",
    "input.resize=[28,28]",
]


def _image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    noise = rng.integers(0, 256, (*shape, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3)
    return np.clip((smooth - smooth.mean()) * 4 + 128, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def factory_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A factory engineer's photos, no masks: good/ (10 for training), test/good (3) and two
    defect folders test/scratch (2) and test/ng (1), with a bright square on the bad ones."""
    root = tmp_path_factory.mktemp("factory")
    rng = np.random.default_rng(1)
    for folder, count in (("good", 10), ("test/good", 3), ("test/scratch", 2), ("test/ng", 1)):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            image = _image(rng, WIDE)
            if folder in ("test/scratch", "test/ng"):
                image[10:22, 14:26] = 255
            cv2.imwrite(str(root / folder / f"{index:02d}.png"), image)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/: 9 wide (48 x 64) and 2 tall images; test/: t0 normal, t1 wide and t2 tall with a
    bright square, masks/ for them."""
    root = tmp_path_factory.mktemp("own_images")
    for name in ("good", "test", "masks"):
        (root / name).mkdir()
    rng = np.random.default_rng(0)
    for index in range(11):
        shape = TALL if index in (3, 7) else WIDE
        cv2.imwrite(str(root / "good" / f"{index:02d}.png"), _image(rng, shape))
    for name, shape in (("t0", WIDE), ("t1", WIDE), ("t2", TALL)):
        image, mask = _image(rng, shape), np.zeros(shape, dtype=np.uint8)
        if name != "t0":
            image[10:22, 14:26] = 255
            mask[10:22, 14:26] = 255
            cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
        cv2.imwrite(str(root / "test" / f"{name}.png"), image)
    return root


def _compose(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


def test_data_folder_selects_the_neutral_custom_category():
    config = _compose("data=folder", "category.name=bottles")
    category = OmegaConf.to_container(config.category)
    assert category["name"] == "bottles" and category["tiling"]["enabled"] is False
    assert category["postprocess"] == {"closing": 0, "fill_holes": False, "erosion": 0}
    assert category["threshold"] == {"rule": "mean_std", "k": 3}
    assert config.input.fit == "short_side" and config.data.validation_fraction == 0.1
    assert _compose(*TINY).category.name == "custom"  # the demo preset does not override it
    assert _compose("data=folder", "category=fabric").category.name == "fabric"  # chosen: kept
    default = _compose()  # MVTec AD 2 keeps its recipe: vial, images stretched
    assert (default.category.name, default.input.fit) == ("vial", "squash")
    assert _compose("preset=demo").category.name == "synthetic"


def test_without_validation_dir_the_splits_share_no_image(folders):
    config = _compose("data=folder", f"data.train_dir={folders / 'good'}", "seed=3")
    train, validation = split_samples(config, "train"), split_samples(config, "validation")
    assert len(validation) == 1 and len(train) == 10  # 10 % of 11, at least one
    assert {s.path for s in train}.isdisjoint(s.path for s in validation)
    assert validation == split_samples(config, "validation")  # reproducible
    with pytest.raises(ConfigError, match="ff-predict --images"):
        split_samples(config, "test_public")  # no data.test_dir


def test_tiling_needs_the_squash_fit():
    config = _compose("data=folder", "category=fabric")
    with pytest.raises(ConfigError, match="input.fit=squash"):
        build_geometry(config)
    build_geometry(_compose("data=folder", "category=fabric", "input.fit=squash"))


def test_mixed_aspect_ratios_share_one_input_and_come_back_at_their_own_size(folders):
    config = run_train.prepare_config(
        _compose(*TINY, f"data.train_dir={folders / 'good'}"), quiet=True
    )
    assert list(config.input.resize) == [28, 42]  # 48 x 64: short side 28, 37.3 -> 3 patches
    geometry = build_geometry(config)
    train = TrainingImages(split_samples(config, "train"), geometry)
    assert {s.shape for s in train.samples} == {WIDE, TALL}
    batch = next(iter(DataLoader(train, batch_size=len(train))))
    assert batch.shape == (len(train), 3, 28, 42)
    model, _ = build_from_config(config)
    test = ImageFolderDataset(folders / "test")
    maps = list(predict_maps(model, test, geometry, mode="inp", batch_size=3, progress=False))
    assert [amap.shape for _, amap in maps] == [WIDE, WIDE, TALL]
    assert all(np.isfinite(amap).all() for _, amap in maps)


@pytest.mark.slow
def test_train_without_validation_dir_then_eval_and_predict_elsewhere(
    folders, tmp_path, monkeypatch, capsys
):
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    relative = Path(os.path.relpath(folders, launch))
    monkeypatch.chdir(launch)
    threads = torch.get_num_threads()
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ff-train",
            *TINY,
            f"data.train_dir={relative / 'good'}",
            f"data.test_dir={relative / 'test'}",
            f"data.mask_dir={relative / 'masks'}",
            "category.name=bottles",
            "run_dir=runs/bottles",
            "hydra.job.chdir=true",  # the job runs inside the run folder: paths still resolve
        ],
    )
    train_cli()
    torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "no validation_dir: 1 of 11 training images" in err and "are held out" in err
    assert "network input 28 x 42 for the typical training image of 48 x 64" in err

    run_dir = launch / "runs" / "bottles"
    config = OmegaConf.load(run_dir / "config.yaml")
    for key, name in (("train_dir", "good"), ("test_dir", "test"), ("mask_dir", "masks")):
        assert Path(config.data[key]) == (folders / name).resolve()  # absolute
    (held,) = config.data.holdout
    assert (folders / "good" / held).is_file()
    assert held not in {s.path.name for s in split_samples(config, "train")}
    assert [s.path.name for s in split_samples(config, "validation")] == [held]

    monkeypatch.chdir(elsewhere)  # the stored absolute paths work from any folder
    assert ff_eval.main(["--run", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test_public" / "metrics.json").read_text()
    )
    assert metrics["categories"]["bottles"]["num_images"] == 3
    args = ["--run", str(run_dir), "--images", str(folders / "test"), "--out", "pred"]
    assert ff_predict.main([*args, "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out

    with open(elsewhere / "pred" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["image"] for row in rows] == ["t0.png", "t1.png", "t2.png"]
    mode = json.loads((run_dir / "fusion.json").read_text())["bottles"]
    threshold = json.loads((run_dir / "thresholds.json").read_text())["bottles"][mode]["value"]
    assert {float(row["threshold"]) for row in rows} == {threshold}  # the run's, in score units
    for row in rows:
        anomalous = row["verdict"] == "anomalous"
        assert row["verdict"] in ("anomalous", "normal")
        assert anomalous == (int(row["anomalous_pixels"]) > 0)
        score = float(row["score"])  # the map's max (eval.image_score), read back from float16
        if abs(score - threshold) > 1e-3 * max(abs(threshold), 1e-6):
            assert anomalous == (score > threshold)
    counted = sum(row["verdict"] == "anomalous" for row in rows)
    assert f"3 images: {counted} anomalous, {3 - counted} normal" in out
    assert "t2.png" in out and "scores.csv" in out


@pytest.mark.slow
def test_factory_flow_good_and_defect_folders_without_masks(
    factory_folders, tmp_path, monkeypatch, capsys
):
    """Train on good/, evaluate test/{good,scratch,ng} (image metrics only, said so, with a
    histogram), predict with the run's threshold and with a given one."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    photos = factory_folders
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ff-train",
            *TINY,
            f"data.train_dir={photos / 'good'}",
            f"data.test_dir={photos / 'test'}",
            "category.name=bottles",
            "run_dir=runs/bottles",
            *(["logger=tensorboard"] if TENSORBOARD else []),
        ],
    )
    ff_train.main()
    torch.set_num_threads(threads)
    capsys.readouterr()
    run_dir = tmp_path / "runs" / "bottles"
    assert (run_dir / "training_curves.png").is_file()
    if TENSORBOARD:  # the tracker got the run: losses per step, the end's overlays
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        with open(run_dir / "train_log.csv", newline="") as fh:
            logged = [int(row["step"]) for row in csv.DictReader(fh)]
        assert [event.step for event in events.Scalars("train/loss")] == logged
        assert any(tag.startswith("overlay/") for tag in events.Tags()["images"])

    assert ff_eval.main(["--run", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    out_dir = run_dir.with_name(run_dir.name + "_eval") / "test_public"
    row = json.loads((out_dir / "metrics.json").read_text())["categories"]["bottles"]
    assert row["num_images"] == 6
    assert row["au_pro@0.05"] is None and row["seg_f1"] is None  # no masks: not computed
    assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["image_ap"] <= 1.0
    counts = [row[k] for k in ("class_tp", "class_fp", "class_fn", "class_tn")]
    assert counts[0] + counts[2] == 3 and counts[1] + counts[3] == 3  # 3 defective, 3 good
    assert "3 defective images have no ground-truth mask" in " ".join(table.split())
    assert "defective images flagged" in table
    with open(out_dir / "scores.csv", newline="") as fh:
        labels = {r["image"]: r["label"] for r in csv.DictReader(fh)}
    assert labels["good/00.png"] == "0" and labels["scratch/01.png"] == "1"
    assert labels["ng/00.png"] == "1"
    assert (out_dir / "score_histogram_bottles.png").is_file()
    assert not (out_dir / "pro_curve_bottles.png").exists()

    def predict(out: str, *extra: str) -> list[dict]:
        args = ["--run", str(run_dir), "--images", str(photos / "test"), "--out", out]
        assert ff_predict.main([*args, *extra, "--no-progress", "--device", "cpu"]) == 0
        with open(tmp_path / out / "scores.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    rows = predict("pred")
    assert (tmp_path / "pred" / "score_histogram.png").is_file()
    assert {r["label"] for r in rows} == {"good", "defective"}
    threshold = float(rows[0]["threshold"])
    assert all(float(r["threshold"]) == threshold for r in rows)
    assert all(float(r["tiff_threshold"]) > 0 for r in rows)
    scores = sorted(float(r["score"]) for r in rows)
    low = 0.5 * (scores[0] + scores[1])  # between the two lowest: five images flagged
    rows = predict("pred_low", "--threshold", repr(low), "--no-overlays")
    assert sum(r["verdict"] == "anomalous" for r in rows) == 5
    assert all(float(r["threshold"]) == low for r in rows)
    assert not (tmp_path / "pred_low" / "overlays").exists()
    high = scores[-1] + 1.0
    rows = predict("pred_high", "--threshold", repr(high), "--no-overlays")
    assert all(r["verdict"] == "normal" and r["anomalous_pixels"] == "0" for r in rows)
    assert "given with --threshold" in capsys.readouterr().out
