"""ff-train and ff-eval on MVTec AD and VisA trees: train, then the INP-Former metric set."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from filterformer.cli.eval import main as eval_main
from filterformer.cli.train import main as train_main
from filterformer.evaluation.protocol import METRICS

TINY = [
    "preset=demo",
    "train.epochs=1",
    "eval.every=0",
    "progress=false",
    "input.resize=[56,70]",
]
"""The demo preset cut to one epoch at 4 x 5 tokens."""


@pytest.mark.parametrize(
    ("data", "category", "images"),
    [
        ("mvtec_ad", "carpet", ["test/cut/000.png", "test/cut/001.png", "test/good/000.png"]),
        ("visa", "candle", ["Data/Images/Anomaly/000.JPG", "Data/Images/Anomaly/001.JPG"]),
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
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()
    assert not (run_dir / "map_stats.json").exists()  # no validation split: no statistics
    capsys.readouterr()

    assert (
        eval_main(["--run", str(run_dir), "--no-progress"]) == 0
    )  # split and protocol: the data's
    table = capsys.readouterr().out
    assert "split: test, protocol: inpformer" in table and category in table
    document = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert (document["protocol"], document["split"], document["image_score"]) == (
        "inpformer",
        "test",
        "top1",
    )
    row = document["categories"][category]
    assert row["num_images"] == 5
    for key, _ in METRICS:
        assert 0.0 <= row[key] <= 1.0, key
    with open(run_dir / "eval" / "test" / "scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    assert [r["image"] for r in scores][: len(images)] == images
    assert sorted(int(r["label"]) for r in scores) == [0, 0, 1, 1, 1]

    # the MVTec AD 2 protocol needs a threshold, which needs a validation split these lack
    assert eval_main(["--run", str(run_dir), "--protocol", "mvtec_ad2", "--no-progress"]) == 2
    assert "Unknown split 'validation'" in capsys.readouterr().err
