"""ff-predict's ``scores.csv`` and its printed summary: one row per image, in two units.

Scores and thresholds are given in the model's **score units** (an image's score is the max of
its anomaly map, or the mean of its top 1 % with ``eval.image_score=top1``: the units of
``ff-predict --threshold`` and of the run's thresholds.json). The float16 TIFF maps hold the
same scores rescaled, ``(score - offset) * scale`` (the run's rescale.json): the ``tiff_*``
columns give those values, so a reader of the TIFFs can compare them directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = (
    "image",
    "label",
    "score",
    "threshold",
    "verdict",
    "anomalous_pixels",
    "tiff_score",
    "tiff_threshold",
)
"""scores.csv's columns; ``label`` is empty when the image's folder does not say it."""
SHOWN = 5
"""How many of the highest-scoring images the summary lists."""
LABELS = {0: "good", 1: "defective", None: ""}


def prediction_row(
    image: str,
    label: int | None,
    score: float,
    threshold: float,
    anomalous_pixels: int,
    tiff: tuple[float, float],
) -> dict[str, Any]:
    """One row of scores.csv; ``tiff`` is (score, threshold) in the TIFF's rescaled units.

    The verdict is ``anomalous`` when the image's final binary map has any pixel (above the
    threshold, after the run's post-processing): the image rule of ClassF1.
    """
    return {
        "image": image,
        "label": LABELS[label],
        "score": float(score),
        "threshold": float(threshold),
        "verdict": "anomalous" if anomalous_pixels else "normal",
        "anomalous_pixels": int(anomalous_pixels),
        "tiff_score": float(tiff[0]),
        "tiff_threshold": float(tiff[1]),
    }


def prediction_summary(rows: Sequence[Mapping[str, Any]], threshold_note: str, path: str) -> str:
    """The lines ff-predict prints: counts (per label when known), the top scores, the file."""
    anomalous = sum(row["verdict"] == "anomalous" for row in rows)
    lines = [
        f"{len(rows)} images: {anomalous} anomalous, {len(rows) - anomalous} normal "
        f"({threshold_note}; anomalous = any pixel of the map above it; scores in score units)"
    ]
    for label in ("defective", "good"):
        group = [row for row in rows if row["label"] == label]
        if group:
            flagged = sum(row["verdict"] == "anomalous" for row in group)
            lines.append(f"  {label} (by folder): {flagged} of {len(group)} called anomalous")
    top = sorted(rows, key=lambda row: -row["score"])[:SHOWN]
    width = max(len("image"), *(len(row["image"]) for row in top))
    lines.append(f"{'image':<{width}}  {'score':>10}  verdict")
    lines += [f"{row['image']:<{width}}  {row['score']:>10.6g}  {row['verdict']}" for row in top]
    lines.append(f"every image: {path}")
    return "\n".join(lines)
