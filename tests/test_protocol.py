"""The INP-Former protocol: its metric set, its 256 px ground truth and maps, its settings.

References: scikit-learn for the exact image metrics and F1-max (the INP-Former code calls it);
for the binned pixel metrics a brute-force threshold sweep written here, and the exact pooled
metrics (which 200 bins must approximate closely on smooth maps).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.aupro import ProAccumulator
from filterformer.evaluation.image_metrics import pixel_auroc
from filterformer.evaluation.protocol import (
    METRICS,
    BinnedCurves,
    InpFormerMetrics,
    check_protocol,
    distinct_counts,
    f1_max,
    resolve_image_score,
)
from filterformer.inference.protocol_maps import PROTOCOL_SMOOTHING, protocol_mask


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """The INP-Former code's f1_score_max, written out with scikit-learn."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max((2 * precision * recall / (precision + recall + 1e-7))[:-1]))


def smooth_maps(seed: int, count: int = 8, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random maps, brighter on a few rectangular GT regions (some images without)."""
    rng = np.random.default_rng(seed)
    maps, gts = [], []
    for i in range(count):
        gt = np.zeros((size, size), bool)
        for _ in range(i % 3):
            y, x = rng.integers(4, size - 16, 2)
            gt[y : y + rng.integers(3, 12), x : x + rng.integers(3, 12)] = True
        noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 3)
        maps.append(noise + 0.1 * gt)
        gts.append(gt)
    return np.stack(maps).astype(np.float32), np.stack(gts)


@pytest.mark.parametrize("seed", range(3))
def test_exact_metrics_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) > 0.6
    scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
    counts = distinct_counts(scores, labels)
    assert (np.diff(counts.values) < 0).all() and counts.pos.sum() == labels.sum()
    assert f1_max(counts) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    metrics = InpFormerMetrics()
    maps, gts = smooth_maps(seed, count=6)
    image_scores = rng.random(6)
    image_labels = np.array([0, 1, 1, 0, 1, 0])
    for amap, gt, score, label in zip(maps, gts, image_scores, image_labels, strict=True):
        metrics.update(amap, gt, score, int(label), "map")
    row = metrics.row("cat")
    assert row["image_auroc"] == pytest.approx(roc_auc_score(image_labels, image_scores))
    assert row["image_ap"] == pytest.approx(average_precision_score(image_labels, image_scores))
    assert row["image_f1_max"] == pytest.approx(sklearn_f1_max(image_labels, image_scores))
    assert row["pixel_f1_max"] == pytest.approx(sklearn_f1_max(gts.ravel(), maps.ravel()))
    assert list(row) == ["category", "num_images", *(key for key, _ in METRICS)]


def brute_force_binned(maps: np.ndarray, gts: np.ndarray, weights: np.ndarray):
    """(fpr, tpr, precision, pro) at the 201 bin edges, lowest threshold first.

    Edge j counts the pixels with score >= low + j * width, plus once more every pixel at
    the maximum, for j < 200; edge 200 counts only those extra maximum pixels.
    """
    scores, gts, weights = maps.ravel().astype(np.float64), gts.ravel(), weights.ravel()
    low, high = scores.min(), scores.max()
    top = scores == high
    totals = [(gts.sum() + (top & gts).sum()), ((~gts).sum() + (top & ~gts).sum())]
    pro_total = weights[gts].sum() + weights[top & gts].sum()
    rows = []
    for j in range(201):
        above = scores >= low + j * (high - low) / 200 if j < 200 else np.zeros_like(top)
        tp = (above & gts).sum() + (top & gts).sum()
        fp = (above & ~gts).sum() + (top & ~gts).sum()
        pro = weights[above & gts].sum() + weights[top & gts].sum()
        precision = tp / (tp + fp) if tp + fp else 1.0
        rows.append((fp / totals[1], tp / totals[0], precision, pro / pro_total))
    return np.array(rows).T


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


@pytest.mark.parametrize("seed", range(3))
def test_binned_curves_equal_a_threshold_sweep(seed: int) -> None:
    maps, gts = smooth_maps(seed)
    weights = np.zeros(gts.shape)
    for weight, gt in zip(weights, gts, strict=True):
        count, labels = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
        for region in range(1, count):
            weight[labels == region] = 1.0 / (labels == region).sum()
    curves = BinnedCurves.from_maps(maps, gts, weights)
    fpr, tpr, precision, pro = (v[::-1] for v in brute_force_binned(maps, gts, weights))
    assert curves.auroc() == pytest.approx(trapezoid(fpr, tpr), abs=1e-9)
    assert curves.aupr() == pytest.approx(trapezoid(tpr, precision), abs=1e-9)
    keep = fpr <= 0.3
    i = np.flatnonzero(~keep)[0]  # first edge past the limit: interpolate linearly at 0.3
    pro_at = pro[i - 1] + (pro[i] - pro[i - 1]) * (0.3 - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
    expected = trapezoid(np.append(fpr[keep], 0.3), np.append(pro[keep], pro_at)) / 0.3
    assert curves.au_pro() == pytest.approx(expected, abs=1e-9)


def test_200_bins_approximate_the_exact_pooled_metrics() -> None:
    maps, gts = smooth_maps(7, count=12)
    metrics = InpFormerMetrics()
    exact = ProAccumulator(float16=False)
    for i, (amap, gt) in enumerate(zip(maps, gts, strict=True)):
        metrics.update(amap, gt, float(amap.max()), int(gt.any()), f"map {i}")
        exact.update(amap, gt)
    row = metrics.row("cat")
    assert 0.6 < row["pixel_auroc"] < 1.0 and 0.0 < row["au_pro@0.3"] < 1.0
    assert row["pixel_auroc"] == pytest.approx(pixel_auroc(exact.pixel_counts()), abs=5e-3)
    assert row["au_pro@0.3"] == pytest.approx(exact.compute([0.3]).au_pro[0.3], abs=2e-2)


def test_separable_maps_score_perfectly() -> None:
    maps, gts = smooth_maps(1)
    perfect = np.where(gts, 2.0 + maps, maps).astype(np.float32)
    metrics = InpFormerMetrics()
    for amap, gt in zip(perfect, gts, strict=True):
        metrics.update(amap, gt, float(amap.max()), int(gt.any()), "map")
    row = metrics.row("cat")
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_f1_max"):
        assert row[key] == pytest.approx(1.0, abs=1e-6), key
    for key in ("pixel_auroc", "pixel_ap", "au_pro@0.3"):
        assert row[key] > 0.99, key


def test_undefined_metrics_are_nan_and_bad_input_is_named() -> None:
    metrics = InpFormerMetrics()
    for _ in range(2):
        metrics.update(np.ones((4, 4), np.float32), np.zeros((4, 4), bool), 1.0, 0, "map")
    row = metrics.row("cat")
    assert all(math.isnan(row[key]) for key, _ in METRICS)
    with pytest.raises(DataError, match="img.png: no label"):
        metrics.update(np.ones((4, 4), np.float32), np.zeros((4, 4), bool), 1.0, None, "img.png")
    with pytest.raises(DataError, match=r"img.png: map of shape \(4, 4\) with GT \(5, 5\)"):
        metrics.update(np.ones((4, 4), np.float32), np.zeros((5, 5), bool), 1.0, 1, "img.png")


def official_mask(mask: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """The INP-Former code's GT path, written with torchvision-free PIL/torch steps."""
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((resize, resize), Image.BILINEAR)
    top = int(round((resize - crop) / 2.0))
    tensor = torch.from_numpy(np.asarray(image, np.float32) / 255.0)[top : top + crop]
    tensor = tensor[:, top : top + crop]
    return (F.interpolate(tensor[None, None], size=256, mode="nearest")[0, 0] > 0.5).numpy()


def test_protocol_mask_follows_the_image_geometry() -> None:
    mask = np.zeros((300, 420), bool)
    mask[100:160, 50:71] = True
    mask[10, 10] = True  # one pixel: lost by the bilinear resize and the 0.5 threshold
    geometry = InputGeometry((448, 448), (392, 392), interpolation="pil_bilinear")
    gt = protocol_mask(mask, geometry)
    assert gt.shape == (256, 256) and gt.dtype == bool
    np.testing.assert_array_equal(gt, official_mask(mask, 448, 392))
    assert 0 < gt.sum() < 60 * 21 and not gt[:20, :20].any()


def test_protocol_mask_refuses_a_letterboxed_geometry() -> None:
    geometry = InputGeometry((56, 70), fit="pad")
    with pytest.raises(ConfigError, match="inpformer protocol needs input.fit=squash"):
        protocol_mask(np.zeros((30, 90), bool), geometry)


def test_protocol_settings_and_names() -> None:
    assert (PROTOCOL_SMOOTHING.size, PROTOCOL_SMOOTHING.padding) == ((256, 256), "zero")
    assert (PROTOCOL_SMOOTHING.sigma, PROTOCOL_SMOOTHING.kernel_size) == (4.0, 5)
    assert resolve_image_score(None, "inpformer") == "top1"
    assert resolve_image_score(None, "mvtec_ad2") == "max"
    assert resolve_image_score("max", "inpformer") == "max"
    with pytest.raises(ConfigError, match="eval.image_score 'mean' is unknown"):
        resolve_image_score("mean", "inpformer")
    with pytest.raises(ConfigError, match="eval.protocol 'mvtec' is unknown.*mvtec_ad2, inp"):
        check_protocol("mvtec")
