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

from filterformer.data.folder import missing_pixel_truth
from filterformer.data.sample import Sample
from filterformer.errors import DataError
from filterformer.evaluation.aupro import ProAccumulator, ProResult
from filterformer.evaluation.image_metrics import ImageScores, f1_max, pixel_ap, pixel_auroc
from filterformer.evaluation.protocol import INPFORMER, MVTEC_AD2, distinct_counts, percent
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

TABLE_COLUMNS = (
    ("seg_f1", "SegF1"),
    ("class_f1", "ClassF1"),
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
)
"""Columns of the printed table after the AU-PRO ones: (row key, header)."""


def pro_key(limit: float) -> str:
    """Row key of AU-PRO at an integration limit, e.g. ``au_pro@0.05``."""
    return f"au_pro@{limit:g}"


PIXEL_METRICS = ("au_pro", "seg_f1", "pixel_auroc", "pixel_ap", "pixel_f1_max_oracle")
"""Row keys (``au_pro`` as a prefix) that need pixel ground truth."""
CLASS_COUNTS = ("class_tp", "class_fp", "class_fn", "class_tn")
"""Image confusion counts at the threshold: defective flagged, good flagged, defective
missed, good passed."""


class CategoryMetrics:
    """All metrics of one category and split, accumulated one image at a time.

    ``no_pixel_truth``: why the split has no pixel ground truth (e.g. defective photos without
    masks). Then only the image metrics are computed, from each image's label; the pixel
    metrics are NaN and the row says why (``not_computed``).
    """

    def __init__(
        self, float16: bool = True, image_score: str = "max", no_pixel_truth: str | None = None
    ) -> None:
        self.image_score = image_score
        """Score of ``image_auroc`` (``eval.image_score``: max, top1 or sum_top<T>)."""
        self.no_pixel_truth = no_pixel_truth
        self.pro = ProAccumulator(float16=float16)
        self.seg = SegF1Accumulator()
        self.images = ImageScores(rule=image_score)
        self.image_f1: list[float] = []
        """Per-image pixel F1 of the binary map (NaN without one): ranks overlay examples."""
        self.score_range = (math.inf, -math.inf)

    @classmethod
    def for_samples(
        cls, samples: Sequence[Sample], float16: bool = True, image_score: str = "max"
    ) -> CategoryMetrics:
        """Metrics for ``samples``: pixel ones when every mask is known, else image ones.

        Refuses samples without labels (nothing to evaluate against), saying how to label them.
        """
        gap = missing_pixel_truth(samples)
        if gap is not None and gap.startswith("labels"):
            where = samples[0].path.parent if samples else "the split"
            raise DataError(f"{where}: cannot evaluate, {gap}.")
        return cls(float16=float16, image_score=image_score, no_pixel_truth=gap)

    def truth(self, sample: Sample) -> np.ndarray | None:
        """The sample's ground-truth mask when the metrics use pixels, else None."""
        return sample.load_mask() if self.no_pixel_truth is None else None

    def add(self, sample: Sample, amap: np.ndarray, binary: np.ndarray | None, name: str) -> None:
        """:meth:`update` with the sample's own ground truth (mask or label)."""
        self.update(amap, self.truth(sample), binary, name, sample.label)

    def update(
        self,
        amap: np.ndarray,
        gt: np.ndarray | None,
        binary: np.ndarray | None,
        name: str,
        label: int | None = None,
    ) -> None:
        """Add one image: continuous map, GT mask and (optionally) its final binary map.

        Without pixel truth (``no_pixel_truth``), ``gt`` is ignored and ``label`` is needed.
        """
        self.score_range = (
            min(self.score_range[0], float(amap.min())),
            max(self.score_range[1], float(amap.max())),
        )
        if self.no_pixel_truth is not None or gt is None:
            if label is None or self.no_pixel_truth is None:
                raise DataError(f"{name}: no ground truth (mask or label) to evaluate against.")
            self.images.update(amap, bool(label), name)
            self.image_f1.append(float("nan"))
            if binary is not None:
                self.seg.update_image(bool(binary.any()), bool(label))
            return
        self.pro.update(amap, gt, name)
        self.images.update(amap, bool(gt.any()), name)
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
        images = self.images
        labels = np.asarray(images.labels, dtype=bool)
        predicted = np.asarray(self.seg.predicted, dtype=bool)
        row: dict[str, Any] = {"category": category, "num_images": len(images.labels)}
        row.update({pro_key(limit): value for limit, value in pro.au_pro.items()})
        row.update(
            seg_f1=seg.f1 if has_binary else nan,
            seg_tp=seg.tp,
            seg_fp=seg.fp,
            seg_fn=seg.fn,
            class_f1=cls.f1 if has_binary else nan,
            image_auroc=images.auroc(),
            image_auroc_top1=images.auroc_top(),
            image_ap=pixel_ap(distinct_counts(np.asarray(images.scores), labels))
            if images.scores
            else nan,
            pixel_auroc=pixel_auroc(counts),
            pixel_ap=pixel_ap(counts),
            pixel_f1_max_oracle=f1_max(counts).counts.f1,
            threshold=nan if threshold is None else threshold,
            threshold_rule=threshold_rule,
        )
        if has_binary:
            row.update(
                class_tp=cls.tp,
                class_fp=cls.fp,
                class_fn=cls.fn,
                class_tn=int(np.sum(~predicted & ~np.asarray(self.seg.labels, dtype=bool))),
            )
        if self.no_pixel_truth is not None:
            row.update({k: nan for k in row if k.startswith(PIXEL_METRICS)})
            row.update(seg_tp=0, seg_fp=0, seg_fn=0, not_computed=self.no_pixel_truth)
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
    skip |= {"selected_on", "dataset", "trained_on", "not_computed", *CLASS_COUNTS}
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
    nan = float("nan")
    columns = table_columns(limits, protocol)
    rule = any("threshold_rule" in row for row in rows)
    headers = ["category", *(f"{title} [%]" for _, title in columns)]
    headers += (["threshold rule"] if rule else []) + [f"chosen on {split}"]
    lines = []
    for row in [*rows, *dataset_means(rows), mean_row(rows)] if rows else []:
        cells = [str(row["category"])] + [percent(row.get(key, nan)) for key, _ in columns]
        cells += [str(row.get("threshold_rule", ""))] if rule else []
        cells.append(selection_cell(_rows_of(row, rows), split))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    left = {0, len(widths) - 1} | ({len(widths) - 2} if rule else set())  # names, not numbers
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [f"split: {split}, protocol: {protocol}"]
    out += [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    notes = [*truth_notes(rows), *selection_notes(rows, split), *trained_on_notes(rows)]
    out += [textwrap.fill(n, 100, break_on_hyphens=False) for n in notes]
    return "\n".join(line.rstrip() for line in out)


def truth_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per category: what the image verdicts at its threshold were, and what was not computed."""
    notes = []
    for row in rows:
        if "class_tp" in row:
            tp, fp, fn, tn = (int(row[k]) for k in CLASS_COUNTS)
            value = float(row.get("threshold", float("nan")))
            at = "with the given binary maps" if math.isnan(value) else f"at threshold {value:.4g}"
            notes.append(
                f"{row['category']} {at}: {tp} of {tp + fn} "
                f"defective images flagged, {fp} of {fp + tn} good ones flagged "
                f"(TP {tp}, FN {fn}, FP {fp}, TN {tn})."
            )
        if row.get("not_computed"):
            notes.append(
                f"{row['category']}: pixel metrics (AU-PRO, SegF1, pixel AUROC) not computed: "
                f"{row['not_computed']}. Image metrics (I-AUROC, I-AP, ClassF1) use the labels."
            )
    return notes


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
