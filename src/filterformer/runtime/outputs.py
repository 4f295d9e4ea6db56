"""What predictions become: results in memory, one category's maps, masks, overlays, scores
and score histogram on disk, and a whole checked submission.

Shared by every backend of ff-predict and the Python API: :class:`CategoryMaps` is the base of
the torch path (``runs.predict.RunExporter``) and of an export in the runtime
(:class:`~filterformer.runtime.Deployment`); each gives its original-size maps
(:meth:`CategoryMaps.predict_maps`) and everything after (threshold, post-processing, image
score, float16 rescale, overlays, scores.csv, the histogram, upload checks, packing) is this one
implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.data.sample import Sample
from filterformer.errors import SubmissionError
from filterformer.evaluation.predictions import COLUMNS, prediction_row, prediction_summary
from filterformer.evaluation.protocol import image_score
from filterformer.evaluation.thresholds import Threshold
from filterformer.inference.postprocess import for_sample
from filterformer.io import output_path, read_anomaly_map, read_mask, write_csv
from filterformer.submission import (
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    MapRescale,
    SubmissionWriter,
    check_submission,
    format_report,
    pack_submission,
)
from filterformer.submission.mvtec_submission import map_path, mask_path
from filterformer.submission.rescale import DEFAULT_TARGET

LOG = logging.getLogger("filterformer")
RESCALE_FILE = "rescale.json"
"""The float16 rescale record ff-predict writes beside the maps of ``--run``."""
SCORES_FILE = "scores.csv"
"""Per image: label, score, threshold, verdict (evaluation/predictions.py)."""
HISTOGRAM_FILE = "score_histogram.png"


@dataclass(frozen=True)
class Prediction:
    """One image's result: its map at the original size, image score and verdict."""

    path: Path
    anomaly_map: np.ndarray
    """H x W float32 at the image's original size, in the run's score units."""
    score: float
    """The run's image score of the map (``eval.image_score``)."""
    threshold: float
    """The threshold the verdict and ``mask`` used (the run's, unless one was given)."""
    mask: np.ndarray
    """H x W bool: map above the threshold, post-processed as the run's category says."""

    @property
    def anomalous(self) -> bool:
        """The verdict: any pixel of the mask is set."""
        return bool(self.mask.any())


class CategoryMaps:
    """One category's maps and what is written from them (see module doc).

    Subclasses set ``category``, ``rescale``, ``threshold``, ``postprocess``, ``image_score``
    and ``threshold_given`` (a threshold from the user rather than the run's calibration), and
    give :meth:`predict_maps`, :meth:`samples` and :meth:`validation_scores`.
    """

    category: str
    rescale: MapRescale
    threshold: Threshold
    postprocess: Mapping[str, Any]
    image_score: str
    threshold_given: bool = False

    def predict_maps(self, samples: Sequence[Sample]) -> Iterable[tuple[Sample, np.ndarray]]:
        """(sample, H x W float32 map at its original size), in order."""
        raise NotImplementedError

    def samples(self, split: str) -> Sequence[Sample]:
        """The category's samples of ``split``."""
        raise NotImplementedError

    def validation_scores(self) -> Sequence[float]:
        """The image scores of the validation split (empty when there is none)."""
        raise NotImplementedError

    def predictions(self, samples: Sequence[Sample], threshold: float) -> list[Prediction]:
        """The :class:`Prediction` of each sample at ``threshold`` (in memory)."""
        results = []
        for sample, amap in self.predict_maps(samples):
            step = for_sample(self.postprocess, sample.split, sample.load_image)
            mask = amap > threshold
            mask = mask if step is None else step(mask)
            score = float(image_score(amap, self.image_score))
            results.append(Prediction(sample.path, amap, score, threshold, mask.astype(bool)))
        return results

    def export(
        self,
        samples: Sequence[Sample],
        out: Path,
        overlays: bool = False,
        record: Path | None = None,
    ) -> int:
        """Write maps and masks of ``samples`` under ``out`` (resuming); return how many.

        ``record``: the rescale record file (default: beside ``out``, see SubmissionWriter).
        """
        writer = SubmissionWriter(
            out,
            self.category,
            self.rescale,
            self.threshold.value,
            record_file=record,
            split_thresholds={split: t.value for split, t in self.threshold.splits.items()},
        )

        def overlay(sample: Sample) -> Path:
            """``<out>/overlays/<category>/<relpath>.png``, checked to stay inside ``out``."""
            *folders, name = sample.relpath.parts
            return output_path(out, "overlays", self.category, *folders, f"{name}.png")

        todo = [
            s
            for s in samples
            if not writer.is_done(s.relpath) or (overlays and not overlay(s).is_file())
        ]
        if overlays:
            from filterformer.evaluation.figures import colour_scale, write_overlay
        high = float(self.rescale.invert(np.float64(DEFAULT_TARGET)))
        for sample, amap in self.predict_maps(todo):
            step = for_sample(self.postprocess, sample.split, sample.load_image)
            writer.write(sample.relpath, amap, sample.shape, step, sample.split)
            threshold = self.threshold.for_split(sample.split).value
            if overlays:
                write_overlay(
                    overlay(sample),
                    sample.load_image(),
                    amap,
                    read_mask(writer.paths(sample.relpath)[1], sample.shape),
                    sample.load_mask() if sample.mask_path or not sample.label else None,
                    colour_scale(self.rescale.offset, threshold, high),
                    threshold,
                    name=str(sample.relpath),
                )
        return len(todo)

    def scores(self, samples: Sequence[Sample], out: Path) -> list[dict]:
        """scores.csv's rows: each written sample's score, read back from its map and mask."""
        rows = []
        for sample in samples:
            tiff = image_score(
                read_anomaly_map(map_path(out, self.category, sample.relpath)), self.image_score
            )
            binary = read_mask(mask_path(out, self.category, sample.relpath), sample.shape)
            threshold = self.threshold.for_split(sample.split).value
            row = prediction_row(
                f"{sample.relpath}{sample.path.suffix}",
                sample.label,
                float(self.rescale.invert(np.float64(tiff))),
                threshold,
                int(binary.sum()),
                (tiff, self.rescale.threshold(threshold)),
            )
            rows.append(row)
        return rows

    def histogram(self, samples: Sequence[Sample], rows: Sequence[Mapping], path: Path) -> None:
        """The score histogram of ``rows`` (by label) with the validation scores, as a PNG."""
        from filterformer.evaluation.figures import write_score_histogram

        value = self.threshold.value
        write_score_histogram(
            path,
            [row["score"] for row in rows],
            [s.label for s in samples],
            value,
            f"{self.category}: image scores",
            validation=self.validation_scores(),
            threshold_label=f"threshold {value:.4g} ({self.threshold.describe('images')})",
        )

    def write_predictions(
        self, samples: Sequence[Sample], out: Path, overlays: bool, tag: str = ""
    ) -> str:
        """Maps, masks (overlays) of ``samples`` under ``out`` with scores.csv and the score
        histogram (``tag``: a suffix of their names, e.g. each category's of a multi-class
        run); return the summary ff-predict prints."""
        self.export(samples, out, overlays, out / RESCALE_FILE)
        rows = self.scores(samples, out)
        scores_file = out / f"{Path(SCORES_FILE).stem}{tag}.csv"
        write_csv(scores_file, rows, list(COLUMNS))
        self.histogram(samples, rows, out / f"{Path(HISTOGRAM_FILE).stem}{tag}.png")
        how = "given with --threshold" if self.threshold_given else self.threshold.describe("")
        note = f"threshold {self.threshold.value:.6g}, {how}"
        return prediction_summary(rows, note, str(scores_file))


def deployment_options(options: Any) -> dict[str, Any]:
    """:class:`~filterformer.runtime.Deployment` keywords from ff-predict's options (its
    namespace or ``PredictOptions``): the backend is ONNX Runtime unless another is named."""
    return {
        "backend": "onnxruntime" if options.backend == "torch" else options.backend,
        "threads": options.threads,
        "batch_size": options.batch_size,
        "progress": not options.no_progress,
        "data_root": options.data_root,
        "threshold": options.threshold,
    }


def write_submission(
    categories: Iterable[CategoryMaps] | Iterator[CategoryMaps],
    out: Path,
    *,
    data_root: Path | None,
    counts: Mapping[str, int] = OFFICIAL_COUNTS,
    pack: bool = True,
    progress: bool = True,
) -> Path | None:
    """Both private splits of every category, checked, then packed (unless ``pack`` is off).

    ``categories`` is consumed one at a time (a loaded model can go before the next loads).
    """
    for source in categories:
        LOG.info("%s: writing %s", source.category, ", ".join(PRIVATE_SPLITS))
        for split in PRIVATE_SPLITS:
            source.export(source.samples(split), out)
    problems = check_submission(out, data_root, counts, progress=progress)
    if problems:
        LOG.warning("%s", format_report(problems))
    if any(p.severity == "error" for p in problems):
        raise SubmissionError(f"{out}: the submission fails the upload checks listed above.")
    return pack_submission(out, check=False) if pack else None
