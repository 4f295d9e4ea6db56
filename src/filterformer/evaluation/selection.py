"""Which split chose the checkpoint, the fusion mode and the threshold behind reported numbers.

Metrics measured on a split that chose one of these are optimistic (selection-biased), so
ff-eval labels them (``selected_on`` in metrics.json, a column and a footnote in its table).
Everything is read from the run folder's own files, so trained, resumed and converted runs
and runs trained without evaluation are labelled alike:

- checkpoint: ``checkpoints/best_<mode>`` was kept for the best score on ``eval.split`` of
  config.yaml (its ground truth); ``last`` was chosen on no data (None).
- fusion mode: an entry in fusion.json was chosen by the same evaluation, on ``eval.split``;
  a mode from ``eval.default_mode`` or the model's own map was chosen on no data (None).
- threshold: its ``source_split`` in thresholds.json (``validation`` for mean_std and
  quantile, the labelled test split for f1_optimal: ``test_public``, or ``test`` for MVTec AD;
  ``authors_test_labels`` for a published number its authors chose on test labels, which
  counts as chosen on every test split); a given number without one is ``"unknown"``.

Maps given to ``ff-eval --maps`` carry no record of their checkpoint or fusion mode: both
are ``"unknown"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from filterformer.evaluation.thresholds import AUTHORS, Threshold

UNKNOWN = "unknown"
"""Where a setting was chosen is not recorded."""
CHOICES = {"checkpoint": "checkpoint", "fusion_mode": "fusion mode", "threshold": "threshold"}
"""Settings that can be chosen on a split: JSON key -> name in tables."""


@dataclass(frozen=True)
class Selection:
    """Per setting, the split whose data chose it; None when no data chose it."""

    checkpoint: str | None = UNKNOWN
    fusion_mode: str | None = UNKNOWN
    threshold: str | None = UNKNOWN

    def to_json(self) -> dict[str, str | None]:
        """``{"checkpoint": ..., "fusion_mode": ..., "threshold": ...}`` for metrics.json."""
        return asdict(self)


def chosen_on(selection: Mapping[str, str | None], split: str) -> list[str]:
    """Table names of the settings in a ``selected_on`` record chosen on ``split``; a setting
    its authors chose on test labels (:data:`AUTHORS`) counts as chosen on every test split."""
    return [name for key, name in CHOICES.items() if _chose(selection.get(key), split)]


def _chose(origin: str | None, split: str) -> bool:
    return origin == split or (origin == AUTHORS and split.startswith("test"))


def by_authors(selection: Mapping[str, str | None]) -> list[str]:
    """Table names of the settings in a ``selected_on`` record chosen by a method's authors on
    test labels (e.g. the ISVL hybrid's published thresholds)."""
    return [name for key, name in CHOICES.items() if selection.get(key) == AUTHORS]


def unknown_choices(selection: Mapping[str, str | None]) -> list[str]:
    """Table names of the settings in a ``selected_on`` record with an unknown origin."""
    return [name for key, name in CHOICES.items() if selection.get(key) == UNKNOWN]


def overall(selections: Iterable[Mapping[str, str | None]], split: str) -> str | None:
    """The flat ``selected_on`` of a document: ``split`` if any setting was chosen on it,
    else ``"unknown"`` if any origin is unknown, else None."""
    selections = list(selections)
    if any(chosen_on(s, split) for s in selections):
        return split
    return UNKNOWN if any(unknown_choices(s) for s in selections) else None


def threshold_origin(threshold: Threshold | None, binary_maps_given: bool = False) -> str | None:
    """The split that chose a threshold (``"unknown"`` for given binary maps or numbers)."""
    if threshold is None:
        return UNKNOWN if binary_maps_given else None
    return threshold.source_split or UNKNOWN


def run_selection(
    run_dir: Path,
    category: str,
    eval_split: str,
    checkpoint: Path,
    threshold: Threshold | None,
) -> Selection:
    """What chose the settings a loaded run uses (see the module docstring).

    ``eval_split`` is config.yaml's ``eval.split``; ``checkpoint`` the loaded weights file.
    """
    fusion_file = run_dir / "fusion.json"
    from_fusion = fusion_file.is_file() and bool(json.loads(fusion_file.read_text()).get(category))
    return Selection(
        checkpoint=eval_split if checkpoint.name.startswith("best_") else None,
        fusion_mode=eval_split if from_fusion else None,
        threshold=threshold_origin(threshold),
    )
