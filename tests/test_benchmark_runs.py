"""ff-train and ff-eval on MVTec AD, VisA and Real-IAD trees, then the INP-Former metric set."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from filterformer.cli.eval import main as eval_main
from filterformer.cli.train import main as train_main
from filterformer.evaluation.protocol import METRICS
from filterformer.training.checkpoint import has_checkpoint

TINY = [
    "preset=demo",
    "train.epochs=1",
    "eval.every=0",
    "progress=false",
    "input.resize=[56,70]",
]
"""The demo preset cut to one epoch at 4 x 5 tokens."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "category", "images"),
    [
        ("mvtec_ad", "carpet", ["test/cut/000.png", "test/cut/001.png", "test/good/000.png"]),
        ("visa", "candle", ["Data/Images/Anomaly/000.JPG", "Data/Images/Anomaly/001.JPG"]),
        ("real_iad", "audiojack", ["NG/HS/S0101/audiojack_0101_NG_HS_C2_2023.jpg"]),
    ],
)
def test_train_and_evaluate_a_benchmark_category(
    data: str, category: str, images: list[str], request, tmp_path: Path, monkeypatch, capsys
) -> None:
    root = request.getfixturevalue(f"{data}_root")
    run_dir = tmp_path / "run"
    overrides = [f"data={data}", f"category={category}", f"data.root={root}", f"run_dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", ["ff-train", *TINY, *overrides])
    train_main()
    assert has_checkpoint(run_dir / "checkpoints" / "last")
    assert not (run_dir / "map_stats.json").exists()  # no validation split: no statistics
    capsys.readouterr()

    assert (
        eval_main(["--run", str(run_dir), "--no-progress"]) == 0
    )  # split and protocol: the data's
    table = capsys.readouterr().out
    assert "split: test, protocol: inpformer" in table and category in table
    document = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test" / "metrics.json").read_text()
    )
    assert (document["protocol"], document["split"], document["image_score"]) == (
        "inpformer",
        "test",
        "top1",
    )
    row = document["categories"][category]
    assert row["num_images"] == 5
    for key, _ in METRICS:
        assert 0.0 <= row[key] <= 1.0, key
    with open(
        run_dir.with_name(run_dir.name + "_eval") / "test" / "scores.csv", newline=""
    ) as handle:
        scores = list(csv.DictReader(handle))
    assert [r["image"] for r in scores][: len(images)] == images
    assert sorted(int(r["label"]) for r in scores) == [0, 0, 1, 1, 1]

    # the MVTec AD 2 protocol needs a threshold; training could not calibrate one without a
    # validation split, so ff-eval names both ways to give one
    assert eval_main(["--run", str(run_dir), "--protocol", "mvtec_ad2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has no calibrated threshold" in err and "--thresholds FILE" in err


@pytest.mark.slow
def test_mvtec_ad2_protocol_honours_image_score_and_writes_scores(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        "data=mvtec_ad2",
        "category=synthetic",
        f"data.root={synthetic_root}",
        f"run_dir={run_dir}",
        "eval.image_score=top1",
    ]
    monkeypatch.setattr(sys, "argv", ["ff-train", *TINY, *overrides])
    train_main()
    capsys.readouterr()
    assert eval_main(["--run", str(run_dir), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "split: test_public, protocol: mvtec_ad2" in table and "SegF1" in table
    document = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test_public" / "metrics.json").read_text()
    )
    assert (document["protocol"], document["image_score"]) == ("mvtec_ad2", "top1")
    row = document["categories"]["synthetic"]
    assert row["image_auroc"] == row["image_auroc_top1"]
    with open(
        run_dir.with_name(run_dir.name + "_eval") / "test_public" / "scores.csv", newline=""
    ) as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == row["num_images"] == 12
    assert scores[0]["image"] == "test_public/bad/000_regular.png"


def fake_run(folder: Path, kind: str, protocol: str) -> Path:
    """A run folder with just enough config.yaml for ff-eval to read its defaults."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"model: {{name: inpformer}}\ncategory: {{name: x}}\ndata: {{kind: {kind}}}\n"
        f"eval: {{protocol: {protocol}}}\n"
    )
    return folder


def test_runs_of_different_benchmarks_are_not_mixed_in_one_table(tmp_path: Path, capsys):
    ad = fake_run(tmp_path / "ad", "mvtec_ad", "inpformer")
    ad2 = fake_run(tmp_path / "ad2", "mvtec_ad2", "mvtec_ad2")
    assert eval_main(["--run", str(ad), "--run", str(ad2), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different default protocols" in err and f"{ad}: inpformer" in err
    assert "pass --protocol" in err
    maps = ["--maps", str(tmp_path), "--protocol", "inpformer"]
    assert eval_main(maps) == 2
    assert "--protocol inpformer needs the network's maps" in capsys.readouterr().err
