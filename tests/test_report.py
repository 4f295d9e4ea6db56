"""ff-eval's metrics without masks: image metrics from the labels, written out by hand here,
and a table that says what it could not compute and why."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from filterformer.data.sample import Sample
from filterformer.errors import DataError
from filterformer.evaluation.report import CategoryMetrics, format_table

# image scores (the max of each map) and labels: 0 good, 1 defective
SCORES = [0.1, 0.3, 0.2, 0.4, 0.25]
LABELS = [0, 0, 0, 1, 1]
THRESHOLD = 0.22


def _sample(index: int, label: int | None) -> Sample:
    return Sample(
        path=Path(f"/photos/{index}.png"),
        category="bottles",
        split="test",
        relpath=PurePosixPath(f"{'good' if label == 0 else 'ng'}/{index}"),
        label=label,
        condition="unknown",
        mask_path=None,
        height=4,
        width=4,
    )


def test_without_masks_the_image_metrics_follow_the_labels() -> None:
    samples = [_sample(i, label) for i, label in enumerate(LABELS)]
    metrics = CategoryMetrics.for_samples(samples)
    for sample, score in zip(samples, SCORES, strict=True):
        amap = np.full((4, 4), score / 2, dtype=np.float32)
        amap[0, 0] = score
        metrics.add(sample, amap, amap > THRESHOLD, str(sample.relpath))
    row = metrics.row("bottles", metrics.result([0.05]), THRESHOLD, "given")
    # I-AUROC: of the 6 (defective, good) pairs, 0.4 beats all 3 and 0.25 beats 0.1 and 0.2
    assert row["image_auroc"] == pytest.approx(5 / 6)
    # I-AP: ranked 0.4 (defective), 0.3, 0.25 (defective): precision 1 and 2/3 at recall 1/2, 1
    assert row["image_ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # at 0.22: 0.3, 0.4, 0.25 flagged -> TP 2, FP 1, FN 0, TN 2; ClassF1 = 4 / (4 + 1)
    counts = [row[k] for k in ("class_tp", "class_fp", "class_fn", "class_tn")]
    assert counts == [2, 1, 0, 2] and row["class_f1"] == pytest.approx(0.8)
    assert all(math.isnan(row[k]) for k in ("au_pro@0.05", "seg_f1", "pixel_auroc"))
    table = " ".join(format_table([row], [0.05], "test_public").split())
    assert "2 of 2 defective images have no ground-truth mask" in table
    assert "2 of 2 defective images flagged, 1 of 3 good ones flagged" in table
    assert "I-AP [%]" in table and "83.33" in table


def test_unlabelled_images_cannot_be_evaluated() -> None:
    with pytest.raises(DataError, match="labels unknown.*good/"):
        CategoryMetrics.for_samples([_sample(0, None), _sample(1, None)])
