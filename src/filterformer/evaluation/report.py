"""Per-category metrics of a split and their presentation: table and JSON/CSV.

:class:`CategoryMetrics` feeds one image at a time to every accumulator (AU-PRO and the
pooled pixel counts, SegF1/ClassF1, image scores) and turns them into one flat row per
category; the other functions render rows and are shared by ff-eval and ff-predict.
Plots and overlays are in :mod:`filterformer.evaluation.figures`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.evaluation.aupro import ProAccumulator, ProResult
from filterformer.evaluation.image_metrics import ImageScores, f1_max, pixel_ap, pixel_auroc
from filterformer.evaluation.segf1 import SegF1Accumulator
from filterformer.io import write_csv, write_json

TABLE_COLUMNS = (("seg_f1", "SegF1"), ("class_f1", "ClassF1"), ("image_auroc", "I-AUROC"))
"""Columns of the printed table after the AU-PRO ones: (row key, header)."""


def pro_key(limit: float) -> str:
    """Row key of AU-PRO at an integration limit, e.g. ``au_pro@0.05``."""
    return f"au_pro@{limit:g}"


class CategoryMetrics:
    """All metrics of one category and split, accumulated one image at a time."""

    def __init__(self, float16: bool = True) -> None:
        self.pro = ProAccumulator(float16=float16)
        self.seg = SegF1Accumulator()
        self.images = ImageScores()
        self.image_f1: list[float] = []
        """Per-image pixel F1 of the binary map (NaN without one): ranks overlay examples."""
        self.score_range = (math.inf, -math.inf)

    def update(
        self, amap: np.ndarray, gt: np.ndarray, binary: np.ndarray | None, name: str
    ) -> None:
        """Add one image: continuous map, GT mask and (optionally) its final binary map."""
        self.pro.update(amap, gt, name)
        self.images.update(amap, bool(gt.any()), name)
        self.score_range = (
            min(self.score_range[0], float(amap.min())),
            max(self.score_range[1], float(amap.max())),
        )
        if binary is None:
            self.image_f1.append(float("nan"))
            return
        self.image_f1.append(self.seg.update(binary, gt, name).f1)

    def result(self, limits: Sequence[float]) -> ProResult:
        """The AU-PRO result (with its curve) at the given limits."""
        return self.pro.compute(limits)

    def row(
        self, category: str, pro: ProResult, threshold: float | None, threshold_rule: str
    ) -> dict[str, Any]:
        """One flat row of every metric (NaN where undefined, e.g. no binary maps)."""
        counts = self.pro.pixel_counts()
        has_binary = bool(self.seg.labels)
        seg = self.seg.compute()
        cls = self.seg.class_f1()
        nan = float("nan")
        row: dict[str, Any] = {"category": category, "num_images": len(self.images.labels)}
        row.update({pro_key(limit): value for limit, value in pro.au_pro.items()})
        row.update(
            seg_f1=seg.f1 if has_binary else nan,
            seg_tp=seg.tp,
            seg_fp=seg.fp,
            seg_fn=seg.fn,
            class_f1=cls.f1 if has_binary else nan,
            image_auroc=self.images.auroc_max(),
            image_auroc_top1=self.images.auroc_top(),
            pixel_auroc=pixel_auroc(counts),
            pixel_ap=pixel_ap(counts),
            pixel_f1_max_oracle=f1_max(counts).counts.f1,
            threshold=nan if threshold is None else threshold,
            threshold_rule=threshold_rule,
        )
        return row

    def examples(self) -> dict[str, int]:
        """Indices of the best, median and worst anomalous image by per-image F1 (or max score)."""
        labels = np.asarray(self.images.labels, dtype=bool)
        quality = np.asarray(self.image_f1)
        if np.isnan(quality[labels]).all():
            quality = np.asarray(self.images.max_scores)
        candidates = np.flatnonzero(labels & ~np.isnan(quality))
        if candidates.size == 0:
            return {}
        ranked = candidates[np.argsort(quality[candidates], kind="stable")]
        return {
            "worst": int(ranked[0]),
            "median": int(ranked[ranked.size // 2]),
            "best": int(ranked[-1]),
        }


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over categories of every metric (NaN if any category is NaN)."""
    skip = {"category", "num_images", "seg_tp", "seg_fp", "seg_fn", "threshold", "threshold_rule"}
    keys = [k for k in rows[0] if k not in skip] if rows else []
    mean: dict[str, Any] = {"category": "mean", "num_images": sum(r["num_images"] for r in rows)}
    mean.update({k: float(np.mean([float(r[k]) for r in rows])) for k in keys})
    return mean


def format_table(rows: Sequence[Mapping[str, Any]], limits: Sequence[float], split: str) -> str:
    """Plain-text table: one line per category, then the mean; metrics in percent ("[%]").

    Files (metrics.json / .csv) keep fractions; only this table for people shows percent.
    """
    headers = ["category", *(f"AU-PRO@{limit:g} [%]" for limit in limits)]
    headers += [f"{title} [%]" for _, title in TABLE_COLUMNS] + ["threshold rule"]
    keys = [pro_key(limit) for limit in limits] + [key for key, _ in TABLE_COLUMNS]
    lines = []
    for row in [*rows, mean_row(rows)] if rows else []:
        cells = [str(row["category"])]
        cells += ["n/a" if math.isnan(row[k]) else f"{100 * row[k]:.2f}" for k in keys]
        cells.append(str(row.get("threshold_rule", "")))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    fmt = "  ".join(
        f"{{:<{w}}}" if i in (0, len(widths) - 1) else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    out = [f"split: {split}", fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(line.rstrip() for line in out)


def write_metrics(
    out_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    split: str,
    limits: Sequence[float],
) -> None:
    """``metrics.json`` (rows per category + mean) and ``metrics.csv`` (one line each)."""
    out_dir = Path(out_dir)
    all_rows = [*rows, mean_row(rows)]
    write_json(out_dir / "metrics.json", metrics_document(rows, split, limits))
    fieldnames = list(dict.fromkeys(k for row in all_rows for k in row))
    write_csv(out_dir / "metrics.csv", all_rows, fieldnames)


def metrics_document(
    rows: Sequence[Mapping[str, Any]], split: str, limits: Sequence[float]
) -> dict[str, Any]:
    """The JSON document of an evaluation (NaN is written as null)."""

    def clean(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}

    return {
        "split": split,
        "pro_limits": list(limits),
        "categories": {row["category"]: clean(row) for row in rows},
        "mean": clean(mean_row(rows)),
    }
