"""Image AUROC and the pooled pixel metrics (pixel AUROC, AP, F1-max oracle).

Image scores follow three conventions (:func:`score_by_rule`): the **max** of the map
(MVTec's `evaluate_experiment`), the **mean of the top 1 %** of pixels (INP-Former) and the
**sum of the T largest** values (CPR). The pixel metrics are exact
functions of :class:`~filterformer.evaluation.aupro.PixelCounts`, which the AU-PRO
accumulator collects in the same pass (float16 bins by default).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from filterformer.evaluation.aupro import PixelCounts
from filterformer.evaluation.segf1 import F1Counts

TOP_FRACTION = 0.01
"""INP-Former's image score: mean of the top 1 % of pixels (`max_ratio = 0.01`)."""
SUM_TOP = re.compile(r"sum_top([1-9][0-9]*)(?:@([1-9][0-9]*)x([1-9][0-9]*))?")
"""``sum_top<T>`` or ``sum_top<T>@<H>x<W>``: the sum of the T largest values, T counted on an
H x W map (:func:`top_sum`)."""


def _nan_if_empty(positives: float, negatives: float) -> bool:
    return positives == 0 or negatives == 0


def auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve from counts per distinct score, highest score first.

    Each distinct score is one operating point (``score >= t``), so ties are grouped and the
    curve is integrated with the trapezoid rule, as MVTec's ROC code does. NaN if a class
    is absent.
    """
    tpr = np.concatenate([[0.0], np.cumsum(pos, dtype=np.float64)])
    fpr = np.concatenate([[0.0], np.cumsum(neg, dtype=np.float64)])
    if _nan_if_empty(tpr[-1], fpr[-1]):
        return float("nan")
    return float(np.sum(0.5 * (tpr[1:] + tpr[:-1]) * np.diff(fpr)) / (tpr[-1] * fpr[-1]))


def image_auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Image-level AUROC (label True = anomalous), ties grouped; NaN if a class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    values, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse[labels], minlength=values.size)[::-1]
    neg = np.bincount(inverse[~labels], minlength=values.size)[::-1]
    return auroc_from_counts(pos, neg)


def top_fraction_mean(amap: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Mean of the highest ``floor(fraction * pixels)`` scores (at least one pixel)."""
    flat = np.asarray(amap, dtype=np.float32).ravel()
    k = max(1, int(flat.size * fraction))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean(dtype=np.float64))


def top_sum(amap: np.ndarray, count: int, reference_pixels: int | None = None) -> float:
    """Sum of the ``count`` largest scores (CPR code, test.py, after DeSTSeg: T = 512).

    ``reference_pixels``: the size of the map that ``count`` is meant for (CPR: its 320 x 320
    input). A map of another size sums its max(1, round(count x pixels / reference)) largest
    values, scaled by reference / pixels, so that a map resized from the network's scores
    about as the network's map.
    """
    flat = np.asarray(amap, dtype=np.float32).ravel()
    scale = 1.0 if reference_pixels is None else reference_pixels / flat.size
    k = min(flat.size, max(1, round(count / scale)))
    top = np.partition(flat, flat.size - k)[flat.size - k :]
    return float(top.sum(dtype=np.float64) * scale)


def parse_sum_top(rule: str) -> tuple[int, int | None] | None:
    """(T, H x W or None) of a ``sum_top`` rule (:data:`SUM_TOP`); None for other rules."""
    match = SUM_TOP.fullmatch(rule)
    if match is None:
        return None
    count, height, width = match.groups()
    return int(count), None if height is None else int(height) * int(width)


def score_by_rule(amap: np.ndarray, rule: str) -> float:
    """The image score of a map: ``max``, ``top1`` or ``sum_top<T>[@<H>x<W>]``."""
    if rule == "max":
        return float(np.max(amap))
    if rule == "top1":
        return top_fraction_mean(amap)
    parsed = parse_sum_top(rule)
    if parsed is None:
        raise ValueError(f"unknown image score {rule!r}")
    return top_sum(amap, *parsed)


@dataclass
class ImageScores:
    """Per-image scores and labels of a split, collected one map at a time."""

    rule: str = "max"
    """The rule of :attr:`scores` (:func:`score_by_rule`)."""
    names: list[str] = field(default_factory=list)
    max_scores: list[float] = field(default_factory=list)
    top_scores: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)

    def update(self, amap: np.ndarray, label: bool, name: str = "") -> None:
        """Add one image's map and label (True = anomalous)."""
        self.names.append(name)
        self.max_scores.append(float(np.max(amap)))
        self.top_scores.append(top_fraction_mean(amap))
        self.scores.append(score_by_rule(amap, self.rule))
        self.labels.append(bool(label))

    def auroc(self) -> float:
        """Image AUROC with the scores of :attr:`rule`."""
        return image_auroc(self.scores, self.labels)

    def auroc_max(self) -> float:
        """Image AUROC with the max score (MVTec's convention)."""
        return image_auroc(self.max_scores, self.labels)

    def auroc_top(self) -> float:
        """Image AUROC with the top-1 % mean score (INP-Former's convention)."""
        return image_auroc(self.top_scores, self.labels)


def pixel_auroc(counts: PixelCounts) -> float:
    """Pooled pixel AUROC over the split (exact for the scores the counts were binned by)."""
    return auroc_from_counts(counts.pos, counts.neg)


def pixel_ap(counts: PixelCounts) -> float:
    """Pooled pixel average precision, step-wise: sum_n (R_n - R_{n-1}) P_n (scikit-learn's).

    INP-Former reports a trapezoidal area under the PR curve instead; values differ slightly.
    """
    tp = np.cumsum(counts.pos, dtype=np.float64)
    fp = np.cumsum(counts.neg, dtype=np.float64)
    if tp.size == 0 or _nan_if_empty(tp[-1], fp[-1]):
        return float("nan")
    precision = tp / (tp + fp)
    recall_steps = np.diff(np.concatenate([[0.0], tp])) / tp[-1]
    return float(np.sum(recall_steps * precision))


@dataclass(frozen=True)
class F1Max:
    """Best pooled pixel F1 over all thresholds: an ORACLE (it looks at the GT of the split)."""

    counts: F1Counts
    threshold: float
    """Use with the ``score > threshold`` rule; it lies halfway between the optimal score and
    the next lower score seen, so it reproduces ``score >= optimal score`` on these maps."""


def f1_max(counts: PixelCounts) -> F1Max:
    """The threshold with the best pooled pixel F1 (NaN threshold if no anomalous pixel)."""
    tp = np.cumsum(counts.pos, dtype=np.float64)
    fp = np.cumsum(counts.neg, dtype=np.float64)
    total_pos = tp[-1] if tp.size else 0.0
    if total_pos == 0:
        return F1Max(F1Counts(0, int(fp[-1]) if fp.size else 0, 0), float("nan"))
    best = int(np.argmax(2 * tp / (tp + fp + total_pos)))
    values = counts.values
    below = values[best + 1] if best + 1 < values.size else values[best] - 1.0
    f1 = F1Counts(int(tp[best]), int(fp[best]), int(total_pos - tp[best]))
    return F1Max(f1, float(0.5 * (values[best] + below)))
