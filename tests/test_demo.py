"""ff-demo: every step, its explanations, re-runs, its output folder, and --encoder-weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import timm
import torch
from omegaconf import OmegaConf

import filterformer.cli.demo as demo
from filterformer.cli.demo import MARKER, PREVIOUS, demo_config, main
from filterformer.errors import DataError
from filterformer.models import build_encoder

SMALL = [
    "data.image_size=[56,70]",
    "input.resize=[56,70]",
    "data.counts={train: 4, validation: 2, test_public_good: 1, test_public_bad: 2,"
    " test_private: 1, test_private_mixed: 1}",
]


def _demo(out: Path, *extra: str) -> int:
    return main(
        ["--out", str(out), "--epochs", "1", "--no-progress", *extra, "--overrides", *SMALL]
    )


@pytest.mark.slow
def test_demo_runs_every_step_explains_itself_and_runs_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    (tmp_path / "neighbour.txt").write_text("not the demo's")
    assert _demo(out) == 0
    text = capsys.readouterr().out

    # 1: the layout of the generated category
    assert "test_private_mixed" in text and "no ground truth" in text
    # 3: the evaluation table in percent, saying so, with a row for the category and the mean
    table = text.split("== 3/4")[1].split("== 4/4")[0]
    assert "AU-PRO@0.05 [%]" in table and "SegF1 [%]" in table and "I-AUROC [%]" in table
    assert any(line.startswith("synthetic") for line in table.splitlines())
    assert any(line.startswith("mean") for line in table.splitlines())
    # 4: the export, with every test image's map at its original size, and its overlays
    export = out / "export"
    maps = sorted((export / "anomaly_images" / "synthetic").rglob("*.tiff"))
    masks = sorted((export / "anomaly_images_thresholded" / "synthetic").rglob("*.png"))
    assert len(maps) == len(masks) == 1 + 2 + 1 + 1
    first = tifffile.imread(maps[0])
    assert first.dtype == np.float16 and first.shape == (56, 70)
    overlays = export / "overlays" / "synthetic" / "test_public"
    assert sorted(p.parent.name for p in overlays.rglob("*.png")) == ["bad", "bad", "good"]
    assert sorted(p.name for p in export.iterdir()) == [
        "anomaly_images",
        "anomaly_images_thresholded",
        "overlays",
        "rescale.json",
    ]
    assert (out / "run_eval" / "test_public" / "metrics.json").is_file()
    assert "Where things are" in text and str(overlays.parent) in text
    # 5: what the numbers mean, what the random encoder gives, and what real weights change
    summary = text.split("What the numbers mean")[1]
    for name in ("AU-PRO@0.05", "SegF1", "ClassF1", "I-AUROC", "chance [%]", "expected [%]"):
        assert name in summary
    assert "--encoder-weights" in summary
    marker = json.loads((out / MARKER).read_text())
    metrics = json.loads((out / "run_eval" / "test_public" / "metrics.json").read_text())
    assert marker["status"] == "complete" and marker["encoder"] == "tiny_random"
    assert marker["metrics"]["seg_f1"] == metrics["categories"]["synthetic"]["seg_f1"]  # fraction
    assert marker["chance"]["au_pro@0.05"] == 0.025 and marker["chance"]["image_auroc"] == 0.5
    assert all(0.0 <= value <= 1.0 for value in marker["metrics"].values() if value is not None)

    # a second run replaces the first and writes nothing beside the output folder
    first_run = (out / "run" / "config.yaml").stat().st_mtime_ns
    assert _demo(out) == 0
    assert (out / "run" / "config.yaml").stat().st_mtime_ns != first_run
    assert not (out / PREVIOUS).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "neighbour.txt"]


def _previous_demo(out: Path) -> None:
    """A finished demo's folder (its marker and one result file)."""
    (out / "run").mkdir(parents=True)
    (out / "run" / "result.txt").write_text("previous")
    (out / MARKER).write_text(json.dumps({"status": "complete"}))


def test_a_failed_run_brings_the_previous_demo_back(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "demo"
    _previous_demo(out)

    def fail(*_args, **_kwargs) -> None:
        assert (out / PREVIOUS / "run" / "result.txt").is_file()  # set aside, not deleted
        (out / "run").mkdir()
        raise DataError("training data went missing")

    monkeypatch.setattr(demo, "run_steps", fail)
    assert _demo(out) == 2
    assert capsys.readouterr().err.strip() == "ff-demo: error: training data went missing"
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "run"]
    assert (out / "run" / "result.txt").read_text() == "previous"


def test_an_interrupted_run_is_discarded_and_the_complete_demo_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _previous_demo(out / PREVIOUS)
    (out / "data").mkdir()  # what a killed run left, with its marker still "running"
    (out / MARKER).write_text(json.dumps({"status": "running"}))
    demo.claim_output(out)
    assert sorted(p.name for p in out.iterdir()) == [PREVIOUS]
    demo.restore_previous(out)  # as after a failure: the complete demo is back
    assert (out / "run" / "result.txt").read_text() == "previous"


def test_a_folder_with_other_files_is_refused_untouched(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert _demo(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ff-demo: error: --out") and "did not write" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.fixture(scope="module")
def vits_weights(tmp_path_factory, write_meta_weights) -> Path:
    """A randomly initialised ViT-S/14-reg in Meta's file layout, under its official name."""
    vit = timm.create_model(
        "vit_small_patch14_reg4_dinov2", img_size=518, dynamic_img_size=True, num_classes=0
    )
    state_dict = {k: v.contiguous() for k, v in vit.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_reg4_pretrain.pth"
    return write_meta_weights(state_dict, path)


def test_encoder_weights_pick_the_encoder_config_and_load_the_file(
    tmp_path: Path, vits_weights: Path
) -> None:
    cfg, overrides = demo_config(tmp_path / "demo", None, [], False, weights=vits_weights)
    assert cfg.encoder.variant == "dinov2_vits14_reg"
    assert cfg.encoder.weights == str(vits_weights)
    assert cfg.train.epochs == 10 and cfg.train.threads is None  # a short CPU schedule
    assert cfg.model.name == "filterformer" and cfg.data.kind == "synthetic"  # the same demo
    encoder_args = OmegaConf.to_container(cfg.encoder)
    encoder = build_encoder(encoder_args.pop("variant"), **encoder_args)
    stored = torch.load(vits_weights, weights_only=True)
    qkv = encoder.vit.blocks[0].attn.qkv.weight
    assert torch.equal(qkv, stored["blocks.0.attn.qkv.weight"])
    assert not (tmp_path / "demo").exists()  # composing the config writes nothing


def test_encoder_weights_of_another_size_are_refused_before_any_output(
    tmp_path: Path, capsys
) -> None:
    fake = {"patch_embed.proj.weight": torch.zeros(1024, 3, 14, 14)}
    fake |= {f"blocks.{i}.norm1.weight": torch.ones(1) for i in range(24)}
    weights = tmp_path / "dinov2_vitl14_reg4_pretrain.pth"
    torch.save(fake, weights)
    assert main(["--out", str(tmp_path / "demo"), "--encoder-weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert "dinov2_vitl14_reg" in err and "ViT-S/14 or ViT-B/14" in err and "\n" not in err
    assert not (tmp_path / "demo").exists()


def test_the_summary_says_whether_test_public_chose_anything():
    biased = demo._selection_note(
        {"checkpoint": "test_public", "fusion_mode": "test_public", "threshold": "validation"}
    )
    assert "checkpoint and fusion mode" in biased and "optimistic" in biased
    label_free = {"checkpoint": "validation_pseudo", "fusion_mode": None, "threshold": "validation"}
    assert "unbiased" in demo._selection_note(label_free)
