"""Honest labels: which split chose a run's checkpoint, fusion mode and threshold, and how the
table, metrics.json and metrics.csv say so."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from filterformer.evaluation.report import format_table, metrics_document, write_metrics
from filterformer.evaluation.selection import (
    UNKNOWN,
    Selection,
    chosen_on,
    overall,
    run_selection,
    threshold_origin,
)
from filterformer.evaluation.thresholds import Threshold

VALIDATION_RULE = Threshold(0.5, "mean_std", {"k": 3.0}, "validation")
ORACLE_RULE = Threshold(0.4, "f1_optimal", {}, "test_public")


def run_folder(tmp_path: Path, checkpoint: str, fusion: dict | None) -> Path:
    """The files run_selection reads: a checkpoint name and (maybe) fusion.json."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / f"{checkpoint}.safetensors").write_bytes(b"")
    if fusion is not None:
        (tmp_path / "fusion.json").write_text(json.dumps(fusion))
    return tmp_path / "checkpoints" / f"{checkpoint}.safetensors"


def test_a_trained_run_was_selected_on_its_eval_split(tmp_path: Path) -> None:
    checkpoint = run_folder(tmp_path, "best_mean", {"can": "mean"})
    selection = run_selection(tmp_path, "can", "test_public", checkpoint, VALIDATION_RULE)
    assert selection == Selection("test_public", "test_public", "validation")
    assert chosen_on(selection.to_json(), "test_public") == ["checkpoint", "fusion mode"]


def test_converted_runs_and_runs_without_evaluation_chose_nothing(tmp_path: Path) -> None:
    """ff-convert and eval.every=0 leave only `last` and no fusion.json (or another category's)."""
    checkpoint = run_folder(tmp_path, "last", {"rice": "max"})
    selection = run_selection(tmp_path, "can", "test_public", checkpoint, VALIDATION_RULE)
    assert selection.to_json() == {
        "checkpoint": None,
        "fusion_mode": None,
        "threshold": "validation",
    }
    assert chosen_on(selection.to_json(), "test_public") == []


def test_threshold_origin_is_its_source_split() -> None:
    assert threshold_origin(VALIDATION_RULE) == "validation"
    assert threshold_origin(ORACLE_RULE) == "test_public"
    assert threshold_origin(Threshold(1.0)) == UNKNOWN  # a given number
    assert threshold_origin(None, binary_maps_given=True) == UNKNOWN  # given PNGs
    assert threshold_origin(None) is None  # no binary maps at all


@pytest.mark.parametrize(
    ("selections", "flat"),
    [
        ([Selection(None, None, "validation")], None),
        ([Selection(None, None, "validation"), Selection(threshold="validation")], UNKNOWN),
        ([Selection(threshold="validation"), Selection(None, None, "test_public")], "test_public"),
    ],
)
def test_flat_selected_on(selections: list[Selection], flat: str | None) -> None:
    assert overall([s.to_json() for s in selections], "test_public") == flat


def row(category: str, selection: Selection, au_pro: float = 0.25) -> dict:
    """A metrics row as ff-eval makes it (only the keys the report functions read)."""
    return {
        "category": category,
        "num_images": 4,
        "au_pro@0.05": au_pro,
        "seg_f1": 0.5,
        "class_f1": float("nan"),
        "image_auroc": 0.75,
        "threshold": 0.5,
        "threshold_rule": "mean+3std(validation)",
        "selected_on": selection.to_json(),
    }


def test_table_marks_what_was_chosen_on_the_evaluated_split() -> None:
    rows = [
        row("can", Selection("test_public", "test_public", "validation")),
        row("rice", Selection(None, None, "validation")),
    ]
    lines = format_table(rows, (0.05,), "test_public").splitlines()
    assert lines[1].split()[-3:] == ["chosen", "on", "test_public"]
    assert lines[3].endswith("checkpoint, fusion mode") and lines[3].startswith("can ")
    assert lines[4].endswith(" -") and lines[4].startswith("rice ")
    assert lines[5].startswith("mean") and lines[5].endswith("checkpoint, fusion mode")
    note = " ".join(lines[6:])
    assert "optimistic (selection-biased)" in note and "test_private" in note
    clean = format_table([rows[1]], (0.05,), "test_public")
    assert "optimistic" not in clean  # nothing chosen on test_public: no footnote


def test_table_marks_unknown_origins_with_a_question_mark() -> None:
    rows = [row("can", Selection(threshold="validation"))]
    table = format_table(rows, (0.05,), "test_public")
    assert "checkpoint?, fusion mode?" in table and "not recorded" in table


def test_metrics_json_and_csv_carry_the_labels(tmp_path: Path) -> None:
    rows = [row("can", Selection("test_public", "test_public", "test_public"))]
    write_metrics(tmp_path, rows, "test_public", (0.05,))
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc == metrics_document(rows, "test_public", (0.05,))
    assert doc["selected_on"] == "test_public"
    assert doc["categories"]["can"]["selected_on"] == {
        "checkpoint": "test_public",
        "fusion_mode": "test_public",
        "threshold": "test_public",
    }
    assert doc["categories"]["can"]["class_f1"] is None and "selected_on" not in doc["mean"]
    with (tmp_path / "metrics.csv").open() as f:
        can, mean = list(csv.DictReader(f))
    assert can["selected_on.checkpoint"] == "test_public" and can["selected_on.threshold"]
    assert mean["selected_on.checkpoint"] == "" and math.isclose(float(mean["au_pro@0.05"]), 0.25)


def test_an_authors_test_label_threshold_counts_as_chosen_on_every_test_split() -> None:
    record = Selection(checkpoint=None, fusion_mode=None, threshold="authors_test_labels")
    for split in ("test_public", "test_private", "test_private_mixed", "test"):
        assert chosen_on(record.to_json(), split) == ["threshold"]
        assert overall([record.to_json()], split) == split
    assert chosen_on(record.to_json(), "validation") == []
    rows = [row("can", record)]
    table = " ".join(format_table(rows, [0.05], "test_private").split())
    assert "threshold: the published value, chosen by the method's authors on test labels" in table
