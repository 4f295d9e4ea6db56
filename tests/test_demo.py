"""ff-demo: generate, train, evaluate and export the synthetic category end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from filterformer.cli.demo import main

SMALL = [
    "data.image_size=[56,70]",
    "input.resize=[56,70]",
    "data.counts={train: 4, validation: 2, test_public_good: 2, test_public_bad: 3,"
    " test_private: 2, test_private_mixed: 2}",
]


def test_demo_runs_every_step_and_says_where_the_results_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["--out", str(tmp_path), "--epochs", "1", "--no-progress", "--overrides", *SMALL]) == 0
    )
    out = capsys.readouterr().out

    # 1: the layout of the generated category
    assert "test_private_mixed" in out and "no ground truth" in out
    # 3: the evaluation table, with a row for the category and the mean
    table = out.split("== 3/4")[1].split("== 4/4")[0]
    assert "AU-PRO@0.05" in table and "SegF1" in table
    assert any(line.startswith("synthetic") for line in table.splitlines())
    assert any(line.startswith("mean") for line in table.splitlines())
    # 4: the export, with every test image's map at its original size
    export = tmp_path / "export"
    maps = sorted((export / "anomaly_images" / "synthetic").rglob("*.tiff"))
    masks = sorted((export / "anomaly_images_thresholded" / "synthetic").rglob("*.png"))
    assert len(maps) == len(masks) == 2 + 3 + 2 + 2
    first = tifffile.imread(maps[0])
    assert first.dtype == np.float16 and first.shape == (56, 70)
    assert list((export / "overlays").rglob("*.png"))
    assert (tmp_path / "run" / "eval" / "test_public" / "metrics.json").is_file()
    assert "Where things are" in out and str(export) in out
