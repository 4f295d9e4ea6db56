"""Evaluation protocols, and the metric set of INP-Former's (no torch needed).

``eval.protocol`` picks how ff-eval scores a run:

- ``mvtec_ad2`` (default for MVTec AD 2): maps at each image's original size; AU-PRO@0.05,
  SegF1 / ClassF1 at a threshold fixed beforehand and image AUROC
  (:class:`~filterformer.evaluation.report.CategoryMetrics`).
- ``inpformer`` (default for MVTec AD and VisA): the evaluation of the INP-Former code, to
  compare with the tables of the INP-Former paper. Maps are made on the network input (the
  centre crop), resized to 256 x 256 and smoothed there
  (:mod:`filterformer.inference.protocol_maps`); :class:`InpFormerMetrics` computes its seven
  metrics per category from those maps as the INP-Former code does:

  - image level, exact: I-AUROC, I-AP (scikit-learn's step-wise average precision) and
    I-F1max = max over thresholds of 2PR / (P + R + 1e-7);
  - P-F1max: the same F1-max, exact, over all pixels of the category;
  - P-AUROC, P-AP and AU-PRO@0.3 from the INP-Former code's metric back-end (the ADEval
    package): pixel counts in 200 equal-width bins over [min, max] of the category's maps,
    one threshold per bin edge, trapezoid areas under the ROC and precision-recall curves
    (so P-AP is a trapezoid AUPR, not the step-wise AP); the PRO curve weights every GT
    pixel by 1 / area of its 8-connected region, is integrated up to FPR 0.3 with linear
    interpolation at 0.3 and divided by 0.3.

  As in that back-end, the pixels holding the maximum score are counted twice (in the top
  bin and again as "at or above the maximum"); the effect is of the order of one pixel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.aupro import PixelCounts, gt_region_weights, integrate_limited
from filterformer.evaluation.image_metrics import (
    image_auroc,
    parse_sum_top,
    pixel_ap,
    score_by_rule,
)
from filterformer.io import write_csv

MVTEC_AD2 = "mvtec_ad2"
INPFORMER = "inpformer"
PROTOCOLS = (MVTEC_AD2, INPFORMER)

ZERO_SHOT_MAPS = ("inp_distance", "reconstruction")
"""Zero-shot evaluation's map: ``inp_distance``, each token's distance to the image's nearest
INP (the INP-Former code's zero-shot map, default), or ``reconstruction``, the run's own map."""

IMAGE_SCORES = ("max", "top1", "sum_top<T>")
"""Image score of a map: its max (MVTec's script), the mean of its top 1 % (INP-Former), or
the sum of its T largest values (CPR; ``sum_top512``), T counted on a map of the network
input's size: ``sum_top512@320x320`` once resolved for a run (:func:`resolve_image_score`)."""
DEFAULT_IMAGE_SCORE = {MVTEC_AD2: "max", INPFORMER: "top1"}
"""Each protocol's own image score, used when ``eval.image_score`` is null."""

NUM_BINS = 200
"""INP-Former code: ADEval accumulator with nstrips=200."""
PRO_LIMIT = 0.3
"""INP-Former code: AU-PRO integrated up to FPR 0.3."""
F1_EPS = 1e-7
"""INP-Former code's f1_score_max: 2PR / (P + R + 1e-7)."""

METRICS = (
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
    ("image_f1_max", "I-F1max"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1max"),
    (f"au_pro@{PRO_LIMIT:g}", f"AU-PRO@{PRO_LIMIT:g}"),
)
"""The INP-Former paper's metric set, in its tables' order: (row key, header)."""


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a ConfigError naming the choices."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"eval.protocol {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}."
        )
    return protocol


def is_image_score(rule: object) -> bool:
    """Whether ``rule`` names an image score (``max``, ``top1``, ``sum_top<T>[@<H>x<W>]``)."""
    return isinstance(rule, str) and (rule in IMAGE_SCORES[:2] or parse_sum_top(rule) is not None)


def resolve_image_score(
    rule: str | None, protocol: str, input_size: tuple[int, int] | None = None
) -> str:
    """``eval.image_score`` if set (validated), else the protocol's own image score.

    A ``sum_top<T>`` rule without a size gets ``@<H>x<W>`` of ``input_size`` (the network
    input, on which T is counted), when given.
    """
    if rule is None:
        return DEFAULT_IMAGE_SCORE[check_protocol(protocol)]
    if not is_image_score(rule):
        raise ConfigError(
            f"eval.image_score {rule!r} is unknown; choose one of {', '.join(IMAGE_SCORES)} "
            "(e.g. sum_top512), or null for the protocol's own."
        )
    if input_size is not None and "@" not in rule and parse_sum_top(rule) is not None:
        return f"{rule}@{input_size[0]}x{input_size[1]}"
    return rule


def image_score(amap: np.ndarray, rule: str) -> float:
    """The image score of a map by ``rule`` (:data:`IMAGE_SCORES`)."""
    return score_by_rule(amap, rule)


def distinct_counts(scores: np.ndarray, labels: np.ndarray) -> PixelCounts:
    """Positive / negative counts per distinct score, highest score first."""
    values, inverse = np.unique(np.ravel(scores), return_inverse=True)
    labels = np.ravel(labels).astype(bool)
    pos = np.bincount(inverse[labels], minlength=values.size).astype(np.float64)
    neg = np.bincount(inverse, minlength=values.size) - pos
    return PixelCounts(values[::-1].astype(np.float64), pos[::-1], neg[::-1])


def f1_max(counts: PixelCounts) -> float:
    """Best 2PR / (P + R + 1e-7) over the thresholds ``score >= t`` (NaN without positives).

    The INP-Former code's ``f1_score_max``: scikit-learn's precision-recall curve without its
    closing (recall 0, precision 1) point.
    """
    tp = np.cumsum(counts.pos)
    fp = np.cumsum(counts.neg)
    if tp.size == 0 or tp[-1] == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.max(2 * precision * recall / (precision + recall + F1_EPS)))


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


@dataclass(frozen=True)
class BinnedCurves:
    """Pixel counts per score bin, the INP-Former code's pixel metric back-end.

    Bin 0 counts scores below the range (none: the range starts at the minimum), bins 1..200
    split [low, high] evenly (the maximum falls in bin 200), and the last bin counts scores
    at or above ``high`` again. ``pro`` sums the PRO weights 1 / |region| of GT pixels.
    """

    pos: np.ndarray
    neg: np.ndarray
    pro: np.ndarray

    @classmethod
    def from_maps(
        cls, maps: np.ndarray, gts: np.ndarray, weights: np.ndarray, num_bins: int = NUM_BINS
    ) -> BinnedCurves:
        """Bin N x H x W maps with their GT (bool) and per-pixel PRO weights (0 off the GT)."""
        scores = np.asarray(maps, dtype=np.float64).ravel()
        low, high = scores.min(), scores.max()
        index = np.floor((scores - low) * num_bins / (high - low)).astype(np.int64)
        index = np.clip(index, 0, num_bins - 1) + 1
        gts, weights = np.ravel(gts), np.ravel(weights)
        counts = np.bincount(index, minlength=num_bins + 2).astype(np.float64)
        pos = np.bincount(index[gts], minlength=num_bins + 2).astype(np.float64)
        pro = np.bincount(index[gts], weights=weights[gts], minlength=num_bins + 2)
        top = scores >= high
        pos[-1], pro[-1] = np.count_nonzero(top & gts), weights[top & gts].sum()
        counts[-1] = np.count_nonzero(top)
        return cls(pos, counts - pos, pro)

    @staticmethod
    def _rates(stat: np.ndarray) -> np.ndarray:
        """Fraction of ``stat`` above each of the bin edges, lowest edge first."""
        total = stat.sum()
        return (total - np.cumsum(stat)[:-1]) / total

    def auroc(self) -> float:
        """Trapezoid area under the binned ROC curve."""
        return _trapezoid(self._rates(self.neg)[::-1], self._rates(self.pos)[::-1])

    def aupr(self) -> float:
        """Trapezoid area under the binned precision-recall curve (precision 1 when empty)."""
        tp = self.pos.sum() - np.cumsum(self.pos)[:-1]
        fp = self.neg.sum() - np.cumsum(self.neg)[:-1]
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
        return _trapezoid(self._rates(self.pos)[::-1], precision[::-1])

    def au_pro(self, limit: float = PRO_LIMIT) -> float:
        """Area under the binned PRO curve up to FPR ``limit``, divided by ``limit``."""
        fpr, pro = self._rates(self.neg)[::-1], self._rates(self.pro)[::-1]
        return integrate_limited(fpr, pro, limit) / limit


@dataclass
class InpFormerMetrics:
    """The INP-Former metric set of one category, from its 256 x 256 maps.

    The maps are kept (256 KiB per image) because the bins span the category's score range,
    which is known only at the end.
    """

    maps: list[np.ndarray] = field(default_factory=list)
    gts: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def update(
        self, amap: np.ndarray, gt: np.ndarray, score: float, label: int | None, name: str
    ) -> None:
        """Add one image: its protocol map, protocol GT (bool), image score and label."""
        if label is None:
            raise DataError(f"{name}: no label; the protocol needs a split with ground truth.")
        if amap.shape != gt.shape or not np.isfinite(amap).all():
            raise DataError(
                f"{name}: map of shape {amap.shape} with GT {gt.shape}; both must be the same "
                "size and the map finite."
            )
        self.maps.append(np.asarray(amap, dtype=np.float32))
        self.gts.append(np.asarray(gt, dtype=bool))
        self.scores.append(float(score))
        self.labels.append(int(label))

    def row(self, category: str) -> dict[str, Any]:
        """One flat row: category, num_images and the seven metrics (NaN where undefined)."""
        nan = float("nan")
        scores, labels = np.asarray(self.scores), np.asarray(self.labels, dtype=bool)
        maps, gts = np.stack(self.maps), np.stack(self.gts)
        image_counts = distinct_counts(scores, labels)
        row: dict[str, Any] = {"category": category, "num_images": len(self.scores)}
        row.update(
            image_auroc=image_auroc(scores, labels),
            image_ap=pixel_ap(image_counts),
            image_f1_max=f1_max(image_counts),
        )
        pixels = [nan, nan, nan]
        if gts.any() and not gts.all() and maps.max() > maps.min():
            weights = np.zeros(gts.shape, dtype=np.float32)  # as the back-end stores them
            for weight, gt in zip(weights, gts, strict=True):
                index, region_weights, _ = gt_region_weights(gt)
                weight.flat[index] = region_weights
            curves = BinnedCurves.from_maps(maps, gts, weights)
            pixels = [curves.auroc(), curves.aupr(), curves.au_pro()]
        row.update(
            pixel_auroc=pixels[0],
            pixel_ap=pixels[1],
            pixel_f1_max=f1_max(distinct_counts(maps, gts)),
        )
        row[METRICS[-1][0]] = pixels[2]
        return row


def write_scores(
    path: str | os.PathLike, images: Sequence[str], scores: Sequence[float], labels: Sequence[Any]
) -> None:
    """``scores.csv``: image (path relative to the category folder), score, label."""
    rows = [
        {"image": image, "score": repr(float(score)), "label": "" if label is None else int(label)}
        for image, score, label in zip(images, scores, labels, strict=True)
    ]
    write_csv(path, rows, ["image", "score", "label"])


def percent(value: float) -> str:
    """A metric for the tables: percent with two decimals, ``n/a`` for NaN."""
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"
