"""Per-category metrics of a split and their presentation: table and JSON/CSV.

:class:`CategoryMetrics` feeds one image at a time to every accumulator (AU-PRO and the
pooled pixel counts, SegF1/ClassF1, image scores) and turns them into one flat row per
category; the other functions render rows and are shared by ff-eval and ff-predict.
Plots and overlays are in :mod:`filterformer.evaluation.figures`.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.evaluation.aupro import ProAccumulator, ProResult
from filterformer.evaluation.image_metrics import ImageScores, f1_max, pixel_ap, pixel_auroc
from filterformer.evaluation.protocol import INPFORMER, MVTEC_AD2, percent
from filterformer.evaluation.protocol import METRICS as INPFORMER_METRICS
from filterformer.evaluation.segf1 import SegF1Accumulator
from filterformer.evaluation.selection import (
    CHOICES,
    by_authors,
    chosen_on,
    overall,
    unknown_choices,
)
from filterformer.io import write_csv, write_json

TABLE_COLUMNS = (("seg_f1", "SegF1"), ("class_f1", "ClassF1"), ("image_auroc", "I-AUROC"))
"""Columns of the printed table after the AU-PRO ones: (row key, header)."""


def pro_key(limit: float) -> str:
    """Row key of AU-PRO at an integration limit, e.g. ``au_pro@0.05``."""
    return f"au_pro@{limit:g}"


class CategoryMetrics:
    """All metrics of one category and split, accumulated one image at a time."""

    def __init__(self, float16: bool = True, image_score: str = "max") -> None:
        self.image_score = image_score
        """Score of ``image_auroc``: ``max`` or ``top1`` (``eval.image_score``)."""
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
            image_auroc=self.images.auroc_top()
            if self.image_score == "top1"
            else self.images.auroc_max(),
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
    skip |= {"selected_on", "dataset", "trained_on"}  # records and names, not metrics
    keys = [k for k in rows[0] if k not in skip] if rows else []
    mean: dict[str, Any] = {"category": "mean", "num_images": sum(r["num_images"] for r in rows)}
    mean.update({k: float(np.mean([float(r[k]) for r in rows])) for k in keys})
    return mean


def dataset_means(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One mean row per dataset (``mean <dataset>``) when the rows come from several (a
    model trained on several datasets is reported per dataset, as the INP-Former code does)."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows if "dataset" in row))
    if len(datasets) < 2:
        return []
    means = []
    for dataset in datasets:
        mean = mean_row([row for row in rows if row.get("dataset") == dataset])
        means.append({**mean, "category": f"mean {dataset}", "dataset": dataset})
    return means


def _rows_of(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[Mapping]:
    """The category rows a table line stands for (a mean line: those it averages)."""
    if row["category"] == "mean":
        return list(rows)
    if str(row["category"]).startswith("mean ") and "dataset" in row:
        return [r for r in rows if r.get("dataset") == row["dataset"]]
    return [row]


def table_columns(limits: Sequence[float], protocol: str = MVTEC_AD2) -> list[tuple[str, str]]:
    """(row key, header) of the metric columns of a protocol's table."""
    if protocol == INPFORMER:
        return list(INPFORMER_METRICS)
    return [(pro_key(limit), f"AU-PRO@{limit:g}") for limit in limits] + list(TABLE_COLUMNS)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    limits: Sequence[float],
    split: str,
    protocol: str = MVTEC_AD2,
) -> str:
    """Plain-text table: one line per category, then the mean; metrics in percent ("[%]").

    Files (metrics.json / .csv) keep fractions; only this table for people shows percent. The
    columns are the protocol's metric set, the threshold rule (when the rows have one)
    and what was chosen on ``split`` itself (see :mod:`.selection`); footnotes say what that
    means.
    """
    columns = table_columns(limits, protocol)
    rule = any("threshold_rule" in row for row in rows)
    headers = ["category", *(f"{title} [%]" for _, title in columns)]
    headers += (["threshold rule"] if rule else []) + [f"chosen on {split}"]
    lines = []
    for row in [*rows, *dataset_means(rows), mean_row(rows)] if rows else []:
        cells = [str(row["category"])] + [percent(row[key]) for key, _ in columns]
        cells += [str(row.get("threshold_rule", ""))] if rule else []
        cells.append(selection_cell(_rows_of(row, rows), split))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    left = {0, len(widths) - 1} | ({len(widths) - 2} if rule else set())  # names, not numbers
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [f"split: {split}, protocol: {protocol}"]
    out += [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    notes = [*selection_notes(rows, split), *trained_on_notes(rows)]
    out += [textwrap.fill(n, 100, break_on_hyphens=False) for n in notes]
    return "\n".join(line.rstrip() for line in out)


def trained_on_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Footnotes naming the data that trained the model of zero-shot rows."""
    trained = dict.fromkeys(row["trained_on"] for row in rows if row.get("trained_on"))
    return [
        f"zero-shot: the model was trained on {source}, never on the categories above "
        "(no training on them; the INP-Former code's zero-shot evaluation)."
        for source in trained
    ]


def _selections(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, str | None]]:
    return [row["selected_on"] for row in rows if "selected_on" in row]


def selection_cell(rows: Sequence[Mapping[str, Any]], split: str) -> str:
    """What the rows' numbers were chosen on ``split`` by: e.g. ``checkpoint, fusion mode``;
    ``?`` marks a setting whose origin is unknown, ``-`` none."""
    selections = _selections(rows)
    names = []
    for name in CHOICES.values():
        if any(name in chosen_on(s, split) for s in selections):
            names.append(name)
        elif any(name in unknown_choices(s) for s in selections):
            names.append(f"{name}?")
    return ", ".join(names) or "-"


def selection_notes(rows: Sequence[Mapping[str, Any]], split: str) -> list[str]:
    """Footnotes of the table for settings chosen on ``split`` or of unknown origin."""
    selections = _selections(rows)
    notes = []
    if any(chosen_on(s, split) for s in selections):
        notes.append(
            f"chosen on {split}: picked on {split}'s own images or ground truth (the best "
            "checkpoint and fusion mode of training, an F1-optimal threshold), so these "
            "numbers are optimistic (selection-biased). Unbiased figures need a split that "
            "chose nothing, e.g. test_private on the MVTec benchmark server."
        )
    authors = sorted({name for s in selections for name in by_authors(s)})
    if authors and split.startswith("test"):
        notes.append(
            f"{', '.join(authors)}: the published value, chosen by the method's authors on test "
            "labels (by trials on the test splits), so it counts as chosen on every test split."
        )
    if any(unknown_choices(s) for s in selections):
        notes.append(
            "?: where this was chosen is not recorded with the maps or threshold; if it was "
            f"chosen on {split}, these numbers are optimistic too."
        )
    return notes


def write_metrics(
    out_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    split: str,
    limits: Sequence[float],
    protocol: str = MVTEC_AD2,
    image_score: str | None = None,
) -> None:
    """``metrics.json`` (rows per category + mean) and ``metrics.csv`` (one line each).

    In the CSV, a row's ``selected_on`` record becomes ``selected_on.<setting>`` columns.
    """
    out_dir = Path(out_dir)
    all_rows = [_flat(row) for row in [*rows, mean_row(rows)]]
    document = metrics_document(rows, split, limits, protocol, image_score)
    write_json(out_dir / "metrics.json", document)
    fieldnames = list(dict.fromkeys(k for row in all_rows for k in row))
    write_csv(out_dir / "metrics.csv", all_rows, fieldnames)


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its nested records spread into ``<key>.<field>`` entries."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            flat[key] = value
    return flat


def metrics_document(
    rows: Sequence[Mapping[str, Any]],
    split: str,
    limits: Sequence[float],
    protocol: str = MVTEC_AD2,
    image_score: str | None = None,
) -> dict[str, Any]:
    """The JSON document of an evaluation (NaN is written as null).

    ``image_score``: the rule of the image-level metrics' scores (null when not given).
    ``selected_on`` (top level) is ``split`` when any reported setting was chosen on it,
    ``"unknown"`` when that cannot be told, else null; each category row holds the record
    per setting (:mod:`filterformer.evaluation.selection`).
    """

    def clean(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}

    means = dataset_means(rows)
    return {
        "protocol": protocol,
        "image_score": image_score,
        "split": split,
        "selected_on": overall(_selections(rows), split),
        "pro_limits": list(limits),
        "categories": {row["category"]: clean(row) for row in rows},
        **({"dataset_means": {m["dataset"]: clean(m) for m in means}} if means else {}),
        "mean": clean(mean_row(rows)),
    }
