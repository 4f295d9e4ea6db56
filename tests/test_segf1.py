"""SegF1 (pooled pixel F1 over a split) and ClassF1 (image anomalous iff any positive pixel)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from filterformer.errors import DataError
from filterformer.evaluation.segf1 import F1Counts, SegF1Accumulator, binarize, class_f1


def test_counts_are_pooled_over_all_images_including_good_ones() -> None:
    gt_bad = np.zeros((4, 4), bool)
    gt_bad[:2, :2] = True  # 4 anomalous pixels
    pred_bad = np.zeros((4, 4), bool)
    pred_bad[:2, :1] = True  # 2 TP
    pred_bad[3, 3] = True  # 1 FP
    pred_good = np.zeros((4, 4), bool)
    pred_good[0, :3] = True  # 3 FP on a good image
    acc = SegF1Accumulator()
    acc.update(pred_bad, gt_bad)
    acc.update(pred_good, np.zeros((4, 4), bool))
    counts = acc.compute()
    assert (counts.tp, counts.fp, counts.fn) == (2, 4, 2)
    assert counts.f1 == pytest.approx(2 * 2 / (2 * 2 + 4 + 2))


def test_pooled_f1_is_not_the_mean_of_per_image_f1() -> None:
    acc = SegF1Accumulator()
    big, small = np.ones((10, 10), bool), np.zeros((10, 10), bool)
    small[0, 0] = True
    per_image = [acc.update(big, big).f1, acc.update(np.zeros_like(small), small).f1]
    assert per_image == [1.0, 0.0]
    assert acc.compute().f1 == pytest.approx(200 / 201)


def test_nothing_predicted_and_nothing_anomalous_is_nan_not_zero() -> None:
    acc = SegF1Accumulator()
    acc.update(np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    assert math.isnan(acc.compute().f1)
    assert math.isnan(acc.class_f1().f1)


def test_binarize_is_strictly_greater_than() -> None:
    amap = np.array([[0.5, 0.50001, 0.4]])
    np.testing.assert_array_equal(binarize(amap, 0.5), [[False, True, False]])


def test_class_f1_calls_an_image_anomalous_iff_any_pixel_is_positive() -> None:
    acc = SegF1Accumulator()
    one_pixel = np.zeros((5, 5), bool)
    one_pixel[4, 4] = True
    acc.update(one_pixel, one_pixel)  # TP image
    acc.update(one_pixel, np.zeros((5, 5), bool))  # FP image
    acc.update(np.zeros((5, 5), bool), one_pixel)  # FN image
    acc.update(np.zeros((5, 5), bool), np.zeros((5, 5), bool))  # TN image
    assert acc.class_f1() == F1Counts(tp=1, fp=1, fn=1)
    assert class_f1([True, True, False, False], [True, False, True, False]).f1 == pytest.approx(0.5)


def test_continuous_maps_are_refused() -> None:
    with pytest.raises(DataError, match="img_9.*threshold it first"):
        SegF1Accumulator().update(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool), "img_9")


def test_size_mismatch_is_refused_naming_the_map() -> None:
    with pytest.raises(DataError, match="bad/001.png"):
        SegF1Accumulator().update(np.zeros((2, 3), bool), np.zeros((3, 2), bool), "bad/001.png")
