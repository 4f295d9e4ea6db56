"""Exact, streaming AU-PRO (area under the per-region-overlap curve up to an FPR limit).

The algorithm is that of MVTec's evaluation code for MVTec AD 2, restated in our words:
ground-truth regions are the 8-connected components of every mask, pooled over the split
(K regions, N_ok normal pixels). Every distinct score t is a threshold with ``score >= t``;
FPR(t) = #normal pixels >= t / N_ok and PRO(t) = (1/K) sum_k |R_k >= t| / |R_k|. Both are
clipped at 1, the curve gets (0, 0) and (1, 1) end points, is cut at the limit L by linear
interpolation and integrated with the trapezoid rule; AU-PRO_L = area / L.

Maps arrive one image at a time (:meth:`ProAccumulator.update`), so a split never sits in
memory. In the default float16 mode (what the benchmark server reads) every score is
rounded to float16 and the per-pixel weights are summed per float16 value: a histogram over
the 65,536 bit patterns is exact, since there are no other thresholds, and its memory
(1 MiB) does not depend on the number of pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from filterformer.errors import DataError

SERVER_LIMIT = 0.05
"""AU-PRO integration limit of the MVTec AD 2 benchmark server (Heckler-Kram et al., "The
MVTec AD 2 Dataset", 2025; MVTec's evaluation code)."""

NUM_KEYS = 1 << 16
"""One key per float16 bit pattern."""


def _float16_order_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables for float16 bit patterns: pattern -> key, key -> value, key -> is not finite.

    Keys sort like the values: positive patterns keep their order above 0x8000, negative
    ones are reversed below it, and -0.0 shares the key of +0.0. Keys of NaN and +-inf have
    the value NaN.
    """
    bits = np.arange(NUM_KEYS, dtype=np.uint32)
    keys = np.where(bits & 0x8000, 0xFFFF - bits, bits | 0x8000).astype(np.uint16)
    keys[0x8000] = keys[0x0000]
    values = bits.astype(np.uint16).view(np.float16).astype(np.float64)
    finite = np.isfinite(values)
    key_values = np.full(NUM_KEYS, np.nan)
    key_values[keys[finite]] = values[finite]
    key_values[keys[0]] = 0.0  # +0.0, not the -0.0 that shares its key
    nonfinite_keys = np.zeros(NUM_KEYS, dtype=bool)
    nonfinite_keys[keys[~finite]] = True
    return keys, key_values, nonfinite_keys


_BITS_TO_KEY, KEY_VALUES, _NONFINITE_KEYS = _float16_order_table()
"""KEY_VALUES[key] is the float16 value of a key (NaN for keys of NaN/inf or unused)."""


def float16_keys(amap: np.ndarray, name: str = "anomaly map") -> tuple[np.ndarray, np.ndarray]:
    """Round a map to float16: its flat monotone uint16 keys and the pixel count per key.

    Raises DataError naming ``name`` if a value is NaN or not finite in float16 (|x| > 65504).
    """
    with np.errstate(over="ignore"):  # overflow to inf is reported below, naming the image
        half = np.ascontiguousarray(amap, dtype=np.float16)
    keys = _BITS_TO_KEY[half.view(np.uint16).ravel()]
    counts = np.bincount(keys, minlength=NUM_KEYS)
    if counts[_NONFINITE_KEYS].any():
        raise DataError(
            f"{name}: holds NaN or inf after rounding to float16 (|score| > 65504 overflows). "
            "Rescale the scores with one monotone transform per category before evaluation."
        )
    return keys, counts


def check_pair(amap: np.ndarray, gt: np.ndarray, name: str) -> None:
    """Refuse a map and mask of different shapes (masks are never resized for metrics)."""
    if amap.ndim != 2 or amap.shape != gt.shape:
        raise DataError(
            f"{name}: anomaly map has shape {amap.shape} but its ground truth is {gt.shape}. "
            "Maps must be H x W at the original image size."
        )


def gt_region_weights(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """8-connected regions of a mask: (flat indices of region pixels, weight 1/|R|, count).

    Only the bounding box of the anomalous pixels is labelled: masks are mostly empty.
    """
    mask = gt if gt.dtype == bool else np.asarray(gt) > 0
    index = np.flatnonzero(mask)
    if index.size == 0:
        return index, np.empty(0), 0
    rows, cols = np.divmod(index, mask.shape[1])
    r0, c0 = rows.min(), cols.min()
    box = mask[r0 : rows.max() + 1, c0 : cols.max() + 1].astype(np.uint8)
    count, labels = cv2.connectedComponents(box, connectivity=8)
    region = labels[rows - r0, cols - c0]
    return index, 1.0 / np.bincount(region)[region], count - 1


@dataclass(frozen=True)
class ProResult:
    """AU-PRO per integration limit plus the full curve (for plots)."""

    au_pro: dict[float, float]
    fpr: np.ndarray
    pro: np.ndarray
    thresholds: np.ndarray = field(repr=False)
    """thresholds[i] is the score of curve point i + 1 (points 0 and -1 are the end points)."""
    num_regions: int
    num_ok_pixels: int


def integrate_limited(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) for x <= limit, interpolating y linearly at the limit.

    ``x`` must be non-decreasing and end beyond or at ``limit``. Equal x (vertical steps)
    add no area. Non-finite points are dropped, as MVTec's code does.
    """
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    area = 0.0
    if not np.any(x == limit):
        i = int(np.searchsorted(x, limit, side="right"))
        if not 0 < i < len(x):
            return float("nan")
        y_at = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area = 0.5 * (y_at + y[i - 1]) * (limit - x[i - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return float(area + np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def pro_curve_result(
    fp: np.ndarray,
    pro_weight: np.ndarray,
    thresholds: np.ndarray,
    num_ok: int,
    num_regions: int,
    limits: Sequence[float],
    fpr_float32: bool = True,
) -> ProResult:
    """AU-PRO from per-threshold FP counts and PRO weights, given in descending score order.

    ``fpr_float32`` rounds the cumulative FP counts and the FPR values to float32 exactly as
    MVTec's ``compute_pro`` stores them (the server's numbers; the effect on AU-PRO is of the
    order of 1e-9). False keeps them in float64.
    """
    cum_fp = np.cumsum(fp, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if fpr_float32:
            fpr = (cum_fp.astype(np.float32).astype(np.float64) / num_ok).astype(np.float32)
        else:
            fpr = cum_fp / num_ok
        fpr = np.minimum(fpr.astype(np.float64), 1.0)
        pro = np.minimum(np.cumsum(pro_weight, dtype=np.float64) / num_regions, 1.0)
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    pro = np.concatenate([[0.0], pro, [1.0]])
    undefined = num_regions == 0 or num_ok == 0
    values = {
        float(L): float("nan") if undefined else integrate_limited(fpr, pro, L) / L for L in limits
    }
    return ProResult(values, fpr, pro, thresholds, num_regions, num_ok)


@dataclass(frozen=True)
class PixelCounts:
    """Pooled pixel counts per distinct score, in descending score order.

    ``neg[i]`` / ``pos[i]``: normal / anomalous pixels whose score equals ``values[i]``.
    Pixel AUROC, AP and the F1-max oracle are exact functions of these counts.
    """

    values: np.ndarray
    pos: np.ndarray
    neg: np.ndarray


class ProAccumulator:
    """Streaming AU-PRO over a split: ``update`` once per image, then ``compute``.

    For every distinct score it sums the normal-pixel count (FP weight), the anomalous-pixel
    count and the PRO weight 1/|R_k|, all in float64, so :meth:`pixel_counts` also gives the
    pooled counts the other pixel metrics need without reading the split again.

    ``float16=True`` (default, the server's view): exact for the float16-rounded maps with
    constant memory (three 65,536-bin histograms, 1.5 MiB). ``float16=False``: exact for the
    float32 maps; it keeps one (value, counts, weight) row per distinct score of the split
    (32 bytes each), merged with sorts as images arrive. Network maps upsampled to full size
    have almost all scores distinct, so this costs up to ~32 bytes per pixel of the split
    (about 48 GB for 1.5 Gpx): use it for small splits or cross-checks only.
    """

    def __init__(self, float16: bool = True) -> None:
        self.float16 = float16
        self.num_ok = 0
        self.num_regions = 0
        self._table = (np.empty(0, np.float32), np.empty(0), np.empty(0), np.empty(0))
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_size = 0
        if float16:
            self._table = (KEY_VALUES, *(np.zeros(NUM_KEYS) for _ in range(3)))

    def update(self, amap: np.ndarray, gt: np.ndarray, name: str = "anomaly map") -> None:
        """Add one image: its H x W map and H x W ground truth (bool or > 0 anomalous)."""
        check_pair(amap, gt, name)
        index, weights, count = gt_region_weights(gt)
        self.num_regions += count
        self.num_ok += amap.size - index.size
        if self.float16:
            keys, counts = float16_keys(amap, name)
            _, neg, pos, pro = self._table
            region_keys = keys[index]
            region_counts = np.bincount(region_keys, minlength=NUM_KEYS)
            neg += counts - region_counts
            pos += region_counts
            pro += np.bincount(region_keys, weights=weights, minlength=NUM_KEYS)
            return
        flat = np.asarray(amap, dtype=np.float32).ravel()
        if not np.isfinite(flat).all():
            raise DataError(f"{name}: anomaly map holds NaN or inf values. Rescale the scores.")
        values, inverse = np.unique(flat, return_inverse=True)
        pos = np.bincount(inverse[index], minlength=values.size).astype(np.float64)
        neg = np.bincount(inverse, minlength=values.size) - pos
        pro = np.bincount(inverse[index], weights=weights, minlength=values.size)
        self._pending.append((values, neg, pos, pro))
        self._pending_size += values.size
        if self._pending_size > self._table[0].size:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending per-image rows into the sorted distinct-score table (float32 mode)."""
        parts = [self._table, *self._pending]
        values, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
        sums = [
            np.bincount(inverse, weights=np.concatenate([p[j] for p in parts])) for j in (1, 2, 3)
        ]
        self._table = (values, *sums)
        self._pending, self._pending_size = [], 0

    def _descending(self) -> tuple[np.ndarray, ...]:
        """(values, neg, pos, pro) of the scores seen, highest score first."""
        if not self.float16:
            self._merge()
        values, neg, pos, pro = self._table
        used = np.flatnonzero((neg > 0) | (pos > 0))[::-1]
        return values[used].astype(np.float64), neg[used], pos[used], pro[used]

    def pixel_counts(self) -> PixelCounts:
        """Pooled normal/anomalous pixel counts per distinct score (descending)."""
        values, neg, pos, _ = self._descending()
        return PixelCounts(values, pos, neg)

    def compute(
        self, limits: Sequence[float] = (SERVER_LIMIT,), fpr_float32: bool = True
    ) -> ProResult:
        """AU-PRO per limit (NaN when the split has no GT region or no normal pixel).

        ``fpr_float32``: see :func:`pro_curve_result` (default: MVTec's float32 FPR values).
        """
        values, neg, _, pro = self._descending()
        return pro_curve_result(
            neg, pro, values, self.num_ok, self.num_regions, limits, fpr_float32
        )


def au_pro(
    maps: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    limits: Sequence[float] = (SERVER_LIMIT,),
    float16: bool = True,
) -> ProResult:
    """AU-PRO of a list of maps and masks (convenience wrapper around ProAccumulator)."""
    acc = ProAccumulator(float16=float16)
    for i, (amap, gt) in enumerate(zip(maps, gts, strict=True)):
        acc.update(amap, gt, name=f"map {i}")
    return acc.compute(limits)
