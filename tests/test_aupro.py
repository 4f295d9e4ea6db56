"""AU-PRO: equal to a brute-force restatement of MVTec's algorithm on random splits.

The brute force evaluates FPR and PRO at every distinct score with ``>=``, with regions
labelled by scipy (8-connectivity), independent of the library's OpenCV labelling and bins.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from filterformer.errors import DataError
from filterformer.evaluation.aupro import (
    KEY_VALUES,
    ProAccumulator,
    au_pro,
    float16_keys,
    integrate_limited,
)

LIMITS = (0.05, 0.3)


def brute_force_au_pro(maps: list[np.ndarray], gts: list[np.ndarray], limit: float) -> float:
    labelled = np.stack([ndimage.label(gt, structure=np.ones((3, 3)))[0] for gt in gts])
    scores = np.stack(maps)
    regions = [(i, lab == k) for i, lab in enumerate(labelled) for k in range(1, lab.max() + 1)]
    thresholds = np.unique(scores)[::-1]
    above = scores[None] >= thresholds[:, None, None, None]  # T x N x H x W
    fpr = (above & (labelled == 0)).sum(axis=(1, 2, 3)) / (labelled == 0).sum()
    pro = np.mean([(above[:, i] & r).sum(axis=(1, 2)) / r.sum() for i, r in regions], axis=0)
    xs = [0.0, *np.minimum(fpr, 1.0)]
    ys = [0.0, *np.minimum(pro, 1.0)]
    xs.append(1.0)
    ys.append(1.0)
    x, y = np.array(xs), np.array(ys)
    inside = x <= limit
    px, py = list(x[inside]), list(y[inside])
    if limit not in px:
        j = int(np.argmax(x > limit))
        px.append(limit)
        py.append(y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1]))
    px, py = np.array(px), np.array(py)
    return float(np.sum((px[1:] - px[:-1]) * (py[1:] + py[:-1]) / 2) / limit)


def random_split(rng: np.random.Generator, levels: int | None) -> tuple[list, list]:
    """A few small images with blob GT; ``levels`` quantises scores to force ties."""
    maps, gts = [], []
    for i in range(int(rng.integers(2, 5))):
        gt = np.zeros((12, 16), bool)
        if i % 3:
            for _ in range(int(rng.integers(1, 3))):
                r, c = rng.integers(0, 10), rng.integers(0, 14)
                gt[r : r + rng.integers(1, 4), c : c + rng.integers(1, 4)] = True
        amap = rng.normal(size=gt.shape) + 1.5 * gt
        if levels:
            amap = np.round(amap * levels / 4) / (levels / 4)
        maps.append(amap.astype(np.float32))
        gts.append(gt)
    if not any(g.any() for g in gts):
        gts[0][3:5, 3:5] = True
    return maps, gts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 6])
def test_float16_mode_equals_brute_force_on_float16_rounded_maps(seed: int, levels) -> None:
    maps, gts = random_split(np.random.default_rng(seed), levels)
    rounded = [m.astype(np.float16).astype(np.float64) for m in maps]
    result = au_pro(maps, gts, LIMITS, float16=True)
    acc = ProAccumulator(float16=True)
    for m, g in zip(maps, gts, strict=True):
        acc.update(m, g)
    exact = acc.compute(LIMITS, fpr_float32=False)
    for limit in LIMITS:
        expected = brute_force_au_pro(rounded, gts, limit)
        assert exact.au_pro[limit] == pytest.approx(expected, abs=1e-12)
        assert result.au_pro[limit] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_float32_mode_equals_brute_force_on_float32_maps(seed: int) -> None:
    maps, gts = random_split(np.random.default_rng(100 + seed), None)
    maps = maps * 3  # more images than merges: exercises the pending/merged tables
    gts = gts * 3
    acc = ProAccumulator(float16=False)
    for m, g in zip(maps, gts, strict=True):
        acc.update(m, g)
    result = acc.compute(LIMITS, fpr_float32=False)
    for limit in LIMITS:
        expected = brute_force_au_pro([m.astype(np.float64) for m in maps], gts, limit)
        assert result.au_pro[limit] == pytest.approx(expected, abs=1e-12)


def test_diagonal_neighbours_form_one_region() -> None:
    gt = np.zeros((6, 6), bool)
    gt[1, 1] = gt[2, 2] = True  # touch at a corner only: one region under 8-connectivity
    gt[4, 4] = True
    amap = np.zeros((6, 6), np.float32)
    amap[1, 1] = 1.0  # half of the diagonal region, none of the single pixel
    result = au_pro([amap], [gt], (0.3,))
    assert result.num_regions == 2
    assert result.num_ok_pixels == 33
    # Threshold 1: FPR 0 and PRO (1/2 + 0)/2 = 0.25, then (1, 1).
    assert result.au_pro[0.3] == pytest.approx(brute_force_au_pro([amap], [gt], 0.3))
    assert result.pro[1] == pytest.approx(0.25)


def test_single_region_perfect_map_scores_one() -> None:
    gt = np.zeros((8, 8), bool)
    gt[2:5, 3:6] = True
    result = au_pro([gt.astype(np.float32)], [gt], LIMITS)
    assert result.au_pro == {0.05: pytest.approx(1.0), 0.3: pytest.approx(1.0)}


def test_all_equal_map_is_one_threshold_and_gives_half_the_limit() -> None:
    gt = np.zeros((8, 8), bool)
    gt[1:3, 1:3] = True
    result = au_pro([np.full((8, 8), 0.7, np.float32)], [gt], LIMITS)
    np.testing.assert_array_equal(result.fpr, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(result.pro, [0.0, 1.0, 1.0])
    assert result.au_pro[0.05] == pytest.approx(0.025)
    assert result.au_pro[0.3] == pytest.approx(0.15)


def test_no_ground_truth_region_gives_nan() -> None:
    result = au_pro([np.random.default_rng(0).random((5, 5))], [np.zeros((5, 5), bool)])
    assert result.num_regions == 0
    assert np.isnan(result.au_pro[0.05])


def test_curve_starts_at_origin_ends_at_one_and_is_monotone() -> None:
    maps, gts = random_split(np.random.default_rng(7), None)
    result = au_pro(maps, gts, LIMITS)
    assert (result.fpr[0], result.pro[0], result.fpr[-1], result.pro[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(result.fpr) >= 0) and np.all(np.diff(result.pro) >= 0)
    assert result.thresholds.size == result.fpr.size - 2
    assert np.all(np.diff(result.thresholds) < 0)


def test_float32_fpr_parity_changes_little() -> None:
    maps, gts = random_split(np.random.default_rng(3), None)
    acc = ProAccumulator()
    for m, g in zip(maps, gts, strict=True):
        acc.update(m, g)
    parity, exact = acc.compute(LIMITS), acc.compute(LIMITS, fpr_float32=False)
    for limit in LIMITS:
        assert parity.au_pro[limit] == pytest.approx(exact.au_pro[limit], abs=1e-6)


def test_negative_and_positive_zero_are_one_score() -> None:
    gt = np.zeros((2, 4), bool)
    gt[0, :2] = True
    signed = np.array([[0.0, -0.0, 1.0, -0.0], [0.0, -0.0, 0.5, 0.0]], np.float32)
    result = au_pro([signed], [gt], (0.3,))
    assert result.au_pro == au_pro([np.abs(signed)], [gt], (0.3,)).au_pro
    assert result.thresholds.tolist() == [1.0, 0.5, 0.0]


def test_float16_keys_sort_like_values() -> None:
    finite = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = finite[np.isfinite(finite)]
    keys, counts = float16_keys(finite)
    assert counts.sum() == finite.size
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(finite[order].astype(np.float64)) >= 0)
    np.testing.assert_array_equal(KEY_VALUES[keys], finite.astype(np.float64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 70000.0])
def test_non_finite_scores_are_refused_naming_the_image(bad: float) -> None:
    amap = np.zeros((4, 4), np.float32)
    amap[1, 2] = bad
    with pytest.raises(DataError, match="bad/007_regular.tiff"):
        ProAccumulator().update(amap, np.zeros((4, 4), bool), name="bad/007_regular.tiff")


def test_float32_mode_refuses_nan_naming_the_image() -> None:
    amap = np.full((3, 3), np.nan, np.float32)
    with pytest.raises(DataError, match="img_3"):
        ProAccumulator(float16=False).update(amap, np.zeros((3, 3), bool), name="img_3")


def test_map_and_mask_of_different_size_are_refused() -> None:
    with pytest.raises(DataError, match="map_x.*shape"):
        ProAccumulator().update(np.zeros((4, 5)), np.zeros((4, 4), bool), name="map_x")


def test_integrate_limited_interpolates_at_the_limit() -> None:
    x = np.array([0.0, 0.1, 1.0])
    y = np.array([0.0, 1.0, 1.0])
    assert integrate_limited(x, y, 0.05) == pytest.approx(0.5 * 0.05 * 0.5)
    assert integrate_limited(x, y, 0.1) == pytest.approx(0.05)
    assert integrate_limited(np.array([0.0, 0.0, 0.2, 1.0]), np.array([0, 0.5, 0.5, 1]), 0.1) == (
        pytest.approx(0.05)
    )
