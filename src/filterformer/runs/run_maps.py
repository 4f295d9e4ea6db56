"""The maps of one loaded run on any split, and the threshold its category's rule gives.

Shared by ff-eval, ff-predict (and ff-export through it) and the threshold study, so that every
command predicts and calibrates a run the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from filterformer.data.datasets import evaluated_split
from filterformer.data.sample import Sample
from filterformer.errors import DataError
from filterformer.evaluation.thresholds import Threshold, threshold_by_rule

if TYPE_CHECKING:
    from filterformer.inference.predict import MapBackend
    from filterformer.runs.run import Run


@dataclass(frozen=True)
class ValidationSummary:
    """What the validation maps of a run say about its scores (for histograms and colours)."""

    scores: list[float]
    """Each validation image's score by the run's image-score rule."""
    low: float
    """The lowest map value: the offset of the overlay colour scale (and of the TIFF rescale)."""
    high: float


class RunMaps:
    """Original-size maps of ``run`` (through ``backend``: its torch model by default)."""

    def __init__(
        self,
        run: Run,
        *,
        device: str,
        data_root: str | Path | None = None,
        progress: bool = True,
        batch_size: int = 8,
        backend: MapBackend | None = None,
    ) -> None:
        self.run, self.device, self.data_root = run, device, data_root
        self.progress, self.batch_size = progress, batch_size
        self.backend = backend if backend is not None else run.model
        self._validation: ValidationSummary | None = None

    def samples(self, split: str) -> Sequence[Sample]:
        """The split's samples: from ``data_root`` if given, else from the run's data."""
        from filterformer.runs.run import split_samples

        return split_samples(self.run.config, split, root=self.data_root)

    def pseudo(self, mixed: bool = False) -> Sequence[Sample]:
        """The run's validation_pseudo(_mixed) samples (cached in the run folder)."""
        from filterformer.runs.run import run_pseudo_samples

        return run_pseudo_samples(self.run, self.data_root, mixed)

    def predict(self, samples: Sequence[Sample]) -> Iterable[tuple[Sample, np.ndarray]]:
        """Original-size maps with the run's fusion mode, statistics, smoothing and tiling."""
        from filterformer.inference.predict import predict_maps

        run = self.run
        return predict_maps(
            self.backend,
            samples,
            run.geometry,
            mode=run.mode,
            map_stats=run.map_stats,
            smoothing=run.smoothing,
            tiling=run.tiling,
            device=self.device,
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def validation_summary(self) -> ValidationSummary | None:
        """One pass over the validation maps (remembered); None when the data has none."""
        if self._validation is None:
            from filterformer.data.datasets import SPLITS
            from filterformer.evaluation.protocol import image_score

            if "validation" not in SPLITS.get(self.run.config.data.kind, ("validation",)):
                return None  # MVTec AD and VisA have none
            try:
                samples = self.samples("validation")
            except DataError:  # e.g. an MVTec AD 2-layout folder without validation/
                return None
            scores, low, high = [], np.inf, -np.inf
            for _, amap in self.predict(samples):
                scores.append(image_score(amap, self.run.image_score))
                low, high = min(low, float(amap.min())), max(high, float(amap.max()))
            self._validation = ValidationSummary(scores, low, high)
        return self._validation

    def threshold(self, validation: Callable[[], Iterator[np.ndarray]] | None = None) -> Threshold:
        """A threshold for the run's fusion mode by its category's rule.

        mean_std and quantile read the validation maps (``validation``, e.g. a pass that also
        records their range; default: predicted here), f1_pseudo the pseudo-defect splits,
        f1_optimal the ground truth of the data's test split (an oracle there).
        """
        run = self.run
        test_split = evaluated_split(run.config.data.kind)
        return threshold_by_rule(
            run.threshold_rule,
            validation or (lambda: (amap for _, amap in self.predict(self.samples("validation")))),
            lambda: ((a, s.load_mask()) for s, a in self.predict(self.samples(test_split))),
            f"{run.run_dir}: {run.category}",
            pseudo=lambda mixed: ((a, s.load_mask()) for s, a in self.predict(self.pseudo(mixed))),
            labelled_split=test_split,
        )
