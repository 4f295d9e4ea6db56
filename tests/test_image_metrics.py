"""Image AUROC (max and top-1 % scores) and pooled pixel AUROC / AP / F1-max oracle.

References: scikit-learn for the AUROC and AP definitions, a brute-force threshold sweep
for F1-max.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from filterformer.evaluation.aupro import ProAccumulator
from filterformer.evaluation.image_metrics import (
    ImageScores,
    f1_max,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    top_fraction_mean,
)


def split_counts(seed: int):
    rng = np.random.default_rng(seed)
    acc = ProAccumulator()
    maps, gts = [], []
    for _ in range(3):
        gt = rng.random((10, 12)) > 0.8
        amap = np.round(rng.normal(size=gt.shape) + gt, 1).astype(np.float32)  # ties
        acc.update(amap, gt)
        maps.append(amap.astype(np.float16).astype(np.float64).ravel())
        gts.append(gt.ravel())
    return acc.pixel_counts(), np.concatenate(maps), np.concatenate(gts)


@pytest.mark.parametrize("seed", range(4))
def test_image_auroc_with_ties_equals_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=30).astype(float)
    labels = rng.random(30) > 0.5
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_image_auroc_is_nan_with_one_class_only() -> None:
    assert math.isnan(image_auroc([0.1, 0.9], [True, True]))


def test_image_scores_use_max_and_top_one_percent_mean() -> None:
    amap = np.arange(1000, dtype=np.float32).reshape(20, 50)
    assert top_fraction_mean(amap) == pytest.approx(np.mean(np.arange(990, 1000)))
    assert top_fraction_mean(np.ones((5, 5))) == 1.0  # fewer than 100 pixels: the max
    scores = ImageScores()
    scores.update(amap, True)
    scores.update(amap * 0.5, False)
    assert scores.max_scores == [999.0, 499.5]
    assert scores.auroc_max() == 1.0 and scores.auroc_top() == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_and_ap_equal_scikit_learn_on_float16_scores(seed: int) -> None:
    counts, scores, labels = split_counts(seed)
    assert pixel_auroc(counts) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert pixel_ap(counts) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_f1_max_is_the_best_threshold_and_its_value_reproduces_it(seed: int) -> None:
    counts, scores, labels = split_counts(seed)

    def f1(pred):
        tp = np.sum(pred & labels)
        return 2 * tp / (2 * tp + np.sum(pred & ~labels) + np.sum(~pred & labels))

    best = max(f1(scores >= t) for t in np.unique(scores))
    result = f1_max(counts)
    assert result.counts.f1 == pytest.approx(best, abs=1e-12)
    assert f1(scores > result.threshold) == pytest.approx(best, abs=1e-12)


def test_pixel_metrics_without_anomalous_pixels_are_nan() -> None:
    acc = ProAccumulator()
    acc.update(np.random.default_rng(0).random((4, 4)), np.zeros((4, 4), bool))
    counts = acc.pixel_counts()
    assert math.isnan(pixel_auroc(counts)) and math.isnan(pixel_ap(counts))
    assert math.isnan(f1_max(counts).threshold)
