"""End to end, as the README documents it: ff-train model=ear, then model=fader on that run,
and INP-Former / Filter-Former with model.attenuation=fader; ff-eval and ff-predict on each.

Tiny sizes (the demo preset on a few 56 x 70 images, one epoch): these check that the three
models train through the standard loop and that their run folders work with the standard
tools, not how well they detect.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from conftest import TINY_UNET
from filterformer.cli.eval import main as eval_cli
from filterformer.cli.predict import main as predict_cli
from filterformer.cli.train import main as train_cli
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.submission import MAPS_DIR, PRIVATE_SPLITS

pytestmark = pytest.mark.slow  # every test trains and runs ff-eval and ff-predict


def ff_train(monkeypatch, *args: str) -> None:
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["ff-train", *args])
    train_cli()
    torch.set_num_threads(threads)


def check_eval_and_predict(run_dir: Path, out: Path) -> dict:
    """ff-eval on test_public and ff-predict of the private splits; the metrics row."""
    assert eval_cli(["--run", str(run_dir), "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test_public" / "metrics.json").read_text()
    )
    row = metrics["categories"]["synthetic"]
    assert 0.0 <= row["au_pro@0.05"] <= 1.0 and 0.0 <= row["seg_f1"] <= 1.0
    assert predict_cli(["--run", str(run_dir), "--out", str(out), "--no-progress"]) == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    root = Path(config["data"]["root"])
    samples = [s for split in PRIVATE_SPLITS for s in MVTecAD2(root, "synthetic", split)]
    tiffs = sorted((out / MAPS_DIR / "synthetic").rglob("*.tiff"))
    assert len(tiffs) == len(samples) > 0
    for tiff in tiffs:
        amap = tifffile.imread(tiff)
        assert amap.shape == (56, 70) and np.isfinite(amap).all()
    return row


def logged(run_dir: Path) -> list[str]:
    with open(run_dir / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh).fieldnames)


@pytest.fixture(scope="module")
def ear_run(tiny_ear_run: Path, tmp_path_factory) -> Path:
    """A copy of conftest's EAR run (the tiny U-Net on the tiny demo data): ff-eval writes
    beside the run it evaluates, and the session's run is shared."""
    return Path(shutil.copytree(tiny_ear_run, tmp_path_factory.mktemp("fader_e2e") / "A"))


def test_ear_trains_evaluates_and_predicts(ear_run, tmp_path) -> None:
    assert logged(ear_run)[3:] == ["loss", "mse", "ssim", "msgms"]
    assert json.loads((ear_run / "map_stats.json").read_text()).keys() == {"msgms"}
    check_eval_and_predict(ear_run, tmp_path / "maps")


def test_fader_trains_on_the_ear_run_evaluates_and_predicts(tiny_fader_run, tmp_path) -> None:
    """conftest's FADeR run (copied): model=fader on the tiny demo data, from the EAR run."""
    run_dir = Path(shutil.copytree(tiny_fader_run, tmp_path / "B"))
    assert logged(run_dir)[3:] == ["loss", "mse", "ssim", "msgms", "rank"]
    check_eval_and_predict(run_dir, tmp_path / "maps")


@pytest.mark.parametrize("model", ["inpformer", "filterformer"])
def test_attenuated_inp_former_trains_evaluates_and_predicts(
    model, tiny_ear_run, tiny_demo_overrides, monkeypatch, tmp_path
) -> None:
    run_dir = tmp_path / "C"
    ff_train(
        monkeypatch,
        *tiny_demo_overrides,
        f"model={model}",
        "model.attenuation=fader",
        f"data.root={tiny_ear_run.parent / 'data'}",  # the session's data, only read
        f"run_dir={run_dir}",
    )
    assert "rank" in logged(run_dir)
    check_eval_and_predict(run_dir, tmp_path / "maps")


@pytest.mark.parametrize(("data", "category"), [("mvtec_ad", "carpet"), ("visa", "candle")])
def test_ear_and_fader_on_a_benchmark_category(
    data, category, request, tmp_path, monkeypatch, capsys
) -> None:
    """The FADeR paper's datasets (Tables 1-5): image and pixel AUROC from ff-eval."""
    root = request.getfixturevalue(f"{data}_root")
    common = [
        "preset=demo",
        "train.epochs=1",
        "eval.every=0",
        "progress=false",
        "input.resize=[56,70]",
        *TINY_UNET,
        f"data={data}",
        f"category={category}",
        f"data.root={root}",
    ]
    ear_dir, fader_dir = tmp_path / "A", tmp_path / "B"
    ff_train(monkeypatch, "model=ear", *common, f"run_dir={ear_dir}")
    ff_train(
        monkeypatch, "model=fader", *common, f"model.ear_run={ear_dir}", f"run_dir={fader_dir}"
    )
    for run_dir in (ear_dir, fader_dir):
        assert eval_cli(["--run", str(run_dir), "--no-progress"]) == 0
        metrics = json.loads(
            (run_dir.with_name(run_dir.name + "_eval") / "test" / "metrics.json").read_text()
        )
        row = metrics["categories"][category]
        assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["pixel_auroc"] <= 1.0
    capsys.readouterr()
