"""The ad2_sample golden values (from MVTec's own evaluation code) reproduced to 1e-9.

Checked twice: through the library API and through ``ff-eval --maps`` (its --json output).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from filterformer.cli.eval import main
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.evaluation.aupro import ProAccumulator
from filterformer.evaluation.image_metrics import ImageScores
from filterformer.evaluation.segf1 import SegF1Accumulator
from filterformer.evaluation.thresholds import mean_std_threshold, read_thresholds
from filterformer.io import read_anomaly_map, read_mask

SAMPLE = Path(__file__).parent / "data" / "ad2_sample"
DATA_ROOT = SAMPLE / "mvtec_ad_2"
MAPS = SAMPLE / "anomaly_images" / "fakecat"
BINARY = SAMPLE / "anomaly_images_thresholded" / "fakecat"

GOLDEN_PRO = {0.05: 0.386524487147623, 0.3: 0.49089092282509017}
GOLDEN_IMAGE_AUROC = 0.5
GOLDEN_SEG = (162, 2, 404, 0.4438356164383562)
GOLDEN_THRESHOLD = 1.2322586555793770


def test_library_reproduces_golden_values() -> None:
    pro, seg, images = ProAccumulator(), SegF1Accumulator(), ImageScores()
    for sample in MVTecAD2(DATA_ROOT, "fakecat", "test_public"):
        amap = read_anomaly_map(MAPS / f"{sample.relpath}.tiff", shape=sample.shape)
        gt = sample.load_mask()
        pro.update(amap, gt, str(sample.relpath))
        images.update(amap, sample.label == 1)
        seg.update(read_mask(BINARY / f"{sample.relpath}.png", sample.shape), gt)
    result = pro.compute(limits=tuple(GOLDEN_PRO))
    for limit, value in GOLDEN_PRO.items():
        assert result.au_pro[limit] == pytest.approx(value, abs=1e-9)
    assert images.auroc_max() == pytest.approx(GOLDEN_IMAGE_AUROC, abs=1e-12)
    counts = seg.compute()
    assert (counts.tp, counts.fp, counts.fn) == GOLDEN_SEG[:3]
    assert counts.f1 == pytest.approx(GOLDEN_SEG[3], abs=1e-12)


def test_library_reproduces_golden_mean_3std_threshold() -> None:
    validation = read_anomaly_map(MAPS / "validation" / "good" / "000_regular.tiff")
    threshold = mean_std_threshold([validation], k=3)
    assert threshold.value == pytest.approx(GOLDEN_THRESHOLD, abs=1e-12)
    assert (threshold.rule, threshold.params, threshold.source_split) == (
        "mean_std",
        {"k": 3},
        "validation",
    )
    assert read_thresholds(SAMPLE / "threshold.json")["fakecat"].value == pytest.approx(
        threshold.value, abs=1e-12
    )


def test_float32_mode_agrees_on_float16_maps() -> None:
    """The sample's maps are float16 already, so both modes must give the same numbers."""
    modes = [ProAccumulator(float16=True), ProAccumulator(float16=False)]
    for sample in MVTecAD2(DATA_ROOT, "fakecat", "test_public"):
        amap = read_anomaly_map(MAPS / f"{sample.relpath}.tiff")
        for acc in modes:
            acc.update(amap, sample.load_mask())
    values = [acc.compute((0.05, 0.3)).au_pro for acc in modes]
    assert values[0] == pytest.approx(values[1], abs=1e-12)


def test_ff_eval_maps_reproduces_golden_values(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    code = main(
        [
            "--maps",
            str(SAMPLE),
            "--data-root",
            str(DATA_ROOT),
            "--split",
            "test_public",
            "--pro-limit",
            "0.05",
            "0.3",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    row = json.loads(out.read_text())["categories"]["fakecat"]
    assert row["au_pro@0.05"] == pytest.approx(GOLDEN_PRO[0.05], abs=1e-9)
    assert row["au_pro@0.3"] == pytest.approx(GOLDEN_PRO[0.3], abs=1e-9)
    assert row["image_auroc"] == pytest.approx(GOLDEN_IMAGE_AUROC, abs=1e-12)
    assert (row["seg_tp"], row["seg_fp"], row["seg_fn"]) == GOLDEN_SEG[:3]
    assert row["seg_f1"] == pytest.approx(GOLDEN_SEG[3], abs=1e-12)
    assert row["threshold_rule"] == "given binary maps"


def test_ff_eval_calibrates_golden_threshold_without_pngs(tmp_path: Path) -> None:
    """Without thresholded PNGs, ff-eval binarises at validation mean + 3 std."""
    maps = tmp_path / "maps"
    shutil.copytree(MAPS, maps / "fakecat")
    out = tmp_path / "metrics.json"
    assert (
        main(
            [
                "--maps",
                str(maps),
                "--data-root",
                str(DATA_ROOT),
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    row = json.loads(out.read_text())["categories"]["fakecat"]
    assert row["threshold"] == pytest.approx(GOLDEN_THRESHOLD, abs=1e-12)
    assert row["threshold_rule"] == "mean+3std(validation)"
    assert row["au_pro@0.05"] == pytest.approx(GOLDEN_PRO[0.05], abs=1e-9)
    assert np.isfinite(row["seg_f1"])
