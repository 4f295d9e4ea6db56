"""Training you can watch: ``training_curves.png`` in the run folder, refreshed every epoch, and
the run's experiment tracker (:mod:`filterformer.training.trackers`).

The curves are drawn from the run's own logs (train_log.csv: every step's losses and learning
rate; eval_log.csv: the selection metric per fusion mode at each evaluation), so a resumed run
draws its whole history. The tracker gets the same numbers as they come: the config once, the
step rows, each evaluation, and at the end the curves and a few overlays.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.evaluation.figures import figure_array, save_figure, training_curves_figure
from filterformer.training.trackers import Tracker

CURVES_FILE = "training_curves.png"
TRAIN_LOG = "train_log.csv"
EVAL_LOG = "eval_log.csv"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV log (empty when it does not exist yet)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class TrainingWatch:
    """Keeps the curves PNG current and feeds ``tracker`` (main process only)."""

    def __init__(self, run_dir: Path, metric: str, title: str, tracker: Tracker | None = None):
        self.run_dir, self.metric, self.title = run_dir, metric, title
        self.tracker = tracker or Tracker()
        self.step = 0

    def start(self, settings: Mapping[str, Any]) -> None:
        """Record the resolved config (flattened to dotted keys)."""
        self.tracker.config(settings)

    def steps(self, step: int, row: Mapping[str, float]) -> None:
        """One logged training step: its losses and learning rate."""
        self.step = step
        values = {f"train/{k}": v for k, v in row.items() if k not in ("step", "epoch")}
        self.tracker.metrics(values, step)

    def epoch(
        self, epoch: int, step: int, scores: Mapping[str, Mapping[str, float]] | None
    ) -> None:
        """After an epoch's checkpoint: redraw the curves; send the evaluation, if one ran."""
        self.step = step
        save_figure(self.run_dir / CURVES_FILE, self.figure())
        if scores:
            values = {
                f"eval/{mode}/{name}": value
                for mode, metrics in scores.items()
                for name, value in metrics.items()
                if np.isfinite(value)
            }
            self.tracker.metrics({**values, "epoch": epoch}, step)

    def figure(self):
        """The curves of everything logged so far."""
        steps = read_log(self.run_dir / TRAIN_LOG)
        evaluations = [
            row
            for row in read_log(self.run_dir / EVAL_LOG)
            if row.get(self.metric) not in ("", None)
        ]
        return training_curves_figure(steps, evaluations, self.metric, self.title)

    def finish(
        self, summary: Mapping[str, float], images: Sequence[tuple[str, np.ndarray]]
    ) -> None:
        """At the end: final numbers, the curves and a few overlays; close the tracker."""
        if summary:
            self.tracker.metrics(summary, self.step)
        self.tracker.image("training_curves", figure_array(self.figure()), self.step)
        for name, image in images:
            self.tracker.image(name, image, self.step)
        self.tracker.close()
