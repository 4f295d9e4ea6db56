"""SegF1 and ClassF1: F1 scores of binary anomaly maps (as the MVTec AD 2 paper defines them).

SegF1 pools TP, FP and FN over all pixels of all images of a category and split (good
images included), so it is computed from counts, one image at a time. ClassF1 calls an image
anomalous iff its binary map has at least one positive pixel (our reading of the server's
rule; MVTec has published no code for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from filterformer.errors import DataError
from filterformer.evaluation.aupro import check_pair


@dataclass(frozen=True)
class F1Counts:
    """True positives, false positives and false negatives, and the F1 they give."""

    tp: int
    fp: int
    fn: int

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); NaN (not 0) when there is nothing to count."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else float("nan")


def binarize(amap: np.ndarray, threshold: float) -> np.ndarray:
    """MVTec's baseline rule: a pixel is anomalous iff its score is strictly above ``threshold``."""
    return np.asarray(amap) > threshold


def class_f1(predicted: Sequence[bool], labels: Sequence[bool]) -> F1Counts:
    """Image-level F1 with anomalous as the positive class."""
    predicted = np.asarray(predicted, dtype=bool)
    labels = np.asarray(labels, dtype=bool)
    return F1Counts(
        tp=int(np.sum(predicted & labels)),
        fp=int(np.sum(predicted & ~labels)),
        fn=int(np.sum(~predicted & labels)),
    )


class SegF1Accumulator:
    """Pooled pixel TP/FP/FN of binary maps over a split, plus per-image flags for ClassF1.

    ``update`` takes a bool map (already thresholded and post-processed) and the GT mask.
    """

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0
        self.predicted: list[bool] = []
        self.labels: list[bool] = []

    def update(self, binary: np.ndarray, gt: np.ndarray, name: str = "binary map") -> F1Counts:
        """Add one image's binary map (dtype bool) and GT mask (bool or > 0 anomalous).

        Returns that image's own counts (used to rank examples for overlays).
        """
        check_pair(binary, gt, name)
        if binary.dtype != bool:
            raise DataError(
                f"{name}: binary map has dtype {binary.dtype}; threshold it first "
                "(filterformer.evaluation.segf1.binarize) or read the PNG with read_mask."
            )
        gt = np.asarray(gt) > 0
        tp = int(np.count_nonzero(binary & gt))
        positives = int(np.count_nonzero(binary))
        anomalous = int(np.count_nonzero(gt))
        self.tp += tp
        self.fp += positives - tp
        self.fn += anomalous - tp
        self.predicted.append(positives > 0)
        self.labels.append(anomalous > 0)
        return F1Counts(tp, positives - tp, anomalous - tp)

    def update_image(self, predicted: bool, label: bool) -> None:
        """Add one image known only by its label (no mask): it counts for ClassF1 only."""
        self.predicted.append(bool(predicted))
        self.labels.append(bool(label))

    def compute(self) -> F1Counts:
        """Pooled SegF1 counts of every image added so far."""
        return F1Counts(self.tp, self.fp, self.fn)

    def class_f1(self) -> F1Counts:
        """ClassF1 counts: image predicted anomalous iff any pixel is positive."""
        return class_f1(self.predicted, self.labels)
