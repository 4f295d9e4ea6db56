"""Prediction with trained runs: maps of images at their original size, scores, verdicts.

The engine of ff-predict and of the Python API's ``Run.predict``. :class:`RunExporter` writes a
run's maps in the MVTec AD 2 server's format (float16 TIFFs rescaled by the run's validation
range, masks at the run's threshold, post-processed; resumable) and reads scores back;
:func:`export_submission` does both private splits of every category, checked and packed;
:func:`predict_images` returns maps in memory. A run is read, never written: its threshold
and map range come from thresholds.json, calibrated when training ended.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from filterformer.data.sample import Sample
from filterformer.errors import ConfigError, SubmissionError
from filterformer.evaluation.thresholds import Threshold
from filterformer.export import map_backend
from filterformer.inference.postprocess import for_sample
from filterformer.io import output_path, read_anomaly_map, read_mask, write_csv
from filterformer.lock import lock_output, reading_run, unlock_output
from filterformer.runs.evaluate import require_threshold
from filterformer.runs.run import load_run, read_run_config
from filterformer.runs.run_maps import RunMaps
from filterformer.runs.setting import members
from filterformer.runs.settings import resolve_device
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


@contextmanager
def writing_output(out: Path, *, beside: bool = False) -> Iterator[None]:
    """Be the only writer of the output folder ``out`` while the block runs."""
    lock_output(out, beside=beside)
    try:
        yield
    finally:
        unlock_output(out, beside=beside)


@dataclass
class PredictOptions:
    """How to predict (ff-predict's options, by the same names)."""

    data_root: Path | None = None
    device: str | None = None
    batch_size: int = 8
    no_progress: bool = False
    no_verify: bool = False
    no_pack: bool = False
    backend: str = "torch"
    model: Path | None = None
    threshold: float | None = None
    """The anomaly threshold in score units, for every split (None: the run's calibrated)."""
    category: str | None = None
    """Which category of a multi-class run (its threshold, post-processing, data)."""


class RunExporter:
    """Predicts with one loaded run (one category of a multi-class run: ``category``, else
    ``args.category``) and writes its maps, masks and (optionally) overlays."""

    def __init__(self, run_dir: Path, args: PredictOptions, category: str | None = None) -> None:
        self.device = resolve_device(args.device)
        with reading_run(run_dir):
            self.run = load_run(
                run_dir,
                device=self.device,
                verify=not args.no_verify,
                category=category or args.category,
            )
        backend, model_file = args.backend, args.model
        self.args = args
        self.maps = RunMaps(
            self.run,
            device=self.device,
            data_root=args.data_root,
            progress=not args.no_progress,
            batch_size=args.batch_size,
            backend=map_backend(self.run, backend, model_file),
        )
        self.rescale, self.threshold = self._calibration()
        if args.threshold is not None:
            self.threshold = Threshold(float(args.threshold))  # "given"; one for every split

    def _calibration(self) -> tuple[MapRescale, Threshold]:
        """The run's calibrated threshold and the float16 rescale of its validation range."""
        threshold = require_threshold(self.run)
        if threshold.map_range is None:
            raise ConfigError(
                f"{self.run.run_dir}: the {self.run.mode!r} threshold has no validation map "
                f"range (an older run). Calibrate it again: ff-eval --calibrate --run "
                f"{self.run.run_dir}"
            )
        return MapRescale.from_range(*threshold.map_range), threshold

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
        settings = self.run.postprocess
        writer = SubmissionWriter(
            out,
            self.run.category,
            self.rescale,
            self.threshold.value,
            record_file=record,
            split_thresholds={split: t.value for split, t in self.threshold.splits.items()},
        )

        def overlay(sample: Sample) -> Path:
            """``<out>/overlays/<category>/<relpath>.png``, checked to stay inside ``out``."""
            *folders, name = sample.relpath.parts
            return output_path(out, "overlays", self.run.category, *folders, f"{name}.png")

        todo = [
            s
            for s in samples
            if not writer.is_done(s.relpath) or (overlays and not overlay(s).is_file())
        ]
        if overlays:
            from filterformer.evaluation.figures import colour_scale, write_overlay
        high = float(self.rescale.invert(np.float64(DEFAULT_TARGET)))
        for sample, amap in self.maps.predict(todo):
            step = for_sample(settings, sample.split, sample.load_image)
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
        """scores.csv's rows: each exported sample's score, read back from its map and mask."""
        from filterformer.evaluation.predictions import prediction_row
        from filterformer.evaluation.protocol import image_score

        rows = []
        for sample in samples:
            tiff = image_score(
                read_anomaly_map(map_path(out, self.run.category, sample.relpath)),
                self.run.image_score,
            )
            binary = read_mask(mask_path(out, self.run.category, sample.relpath), sample.shape)
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

        validation = self.maps.validation_summary()
        value = self.threshold.value
        write_score_histogram(
            path,
            [row["score"] for row in rows],
            [s.label for s in samples],
            value,
            f"{self.run.category}: image scores",
            validation=() if validation is None else validation.scores,
            threshold_label=f"threshold {value:.4g} ({self.threshold.describe('images')})",
        )

    def write_predictions(
        self, samples: Sequence[Sample], out: Path, overlays: bool, tag: str = ""
    ) -> str:
        """Maps, masks (overlays) of ``samples`` under ``out`` with scores.csv and the score
        histogram (``tag``: a suffix of their names, e.g. each category's of a multi-class
        run); return the summary ff-predict prints."""
        from filterformer.evaluation.predictions import COLUMNS, prediction_summary

        self.export(samples, out, overlays, out / RESCALE_FILE)
        rows = self.scores(samples, out)
        scores_file = out / f"{Path(SCORES_FILE).stem}{tag}.csv"
        write_csv(scores_file, rows, list(COLUMNS))
        self.histogram(samples, rows, out / f"{Path(HISTOGRAM_FILE).stem}{tag}.png")
        given = self.args.threshold is not None
        how = "given with --threshold" if given else self.threshold.describe("")
        note = f"threshold {self.threshold.value:.6g}, {how}"
        return prediction_summary(rows, note, str(scores_file))


def _runs_by_category(runs_dir: Path, categories: Sequence[str]) -> dict[str, Path]:
    """One run folder per category under ``runs_dir`` (read from each config.yaml; a
    multi-class run serves each of its categories)."""
    found: dict[str, Path] = {}
    for config in sorted(runs_dir.glob("*/config.yaml")):
        for category in (m.key for m in members(read_run_config(config.parent))):
            if category in found:
                raise ConfigError(
                    f"{runs_dir}: two runs for category {category!r} ({found[category]} and "
                    f"{config.parent}); keep one run folder per category."
                )
            found[category] = config.parent
    missing = [c for c in categories if c not in found]
    if missing:
        raise ConfigError(
            f"{runs_dir}: no run folder for {', '.join(missing)}. A submission needs every "
            "category; train them (ff-train category=...) or point --runs at the right folder."
        )
    return {c: found[c] for c in categories}


def submission_counts(runs_dir: Path) -> dict[str, int]:
    """The categories and private-split sizes a submission of ``runs_dir`` must have: MVTec
    AD 2's eight, or, when every run is on synthetic data (``suite=demo``), the runs' own."""
    from omegaconf import OmegaConf

    from filterformer.runs.run import split_samples

    configs = [OmegaConf.load(path) for path in sorted(runs_dir.glob("*/config.yaml"))]
    if not configs or any(config.data.kind != "synthetic" for config in configs):
        return dict(OFFICIAL_COUNTS)
    return {c.category.name: len(split_samples(c, "test_private")) for c in configs}


def export_submission(
    runs_dir: Path,
    out: Path,
    args: PredictOptions,
    counts: Mapping[str, int] | None = None,
) -> Path | None:
    """Both private splits of every category, checked, then packed (unless no_pack).

    ``counts``: category -> images per private split (default :func:`submission_counts`).
    """
    counts = submission_counts(runs_dir) if counts is None else counts
    for category, run_dir in _runs_by_category(runs_dir, list(counts)).items():
        LOG.info("%s: %s", category, run_dir)
        exporter = RunExporter(run_dir, args, category)
        for split in PRIVATE_SPLITS:
            exporter.export(exporter.maps.samples(split), out)
        del exporter
    problems = check_submission(out, args.data_root, counts, progress=not args.no_progress)
    if problems:
        LOG.warning("%s", format_report(problems))
    if any(p.severity == "error" for p in problems):
        raise SubmissionError(f"{out}: the submission fails the upload checks listed above.")
    return None if args.no_pack else pack_submission(out, check=False)


def run_categories(run_dir: Path, chosen: str | None = None) -> list[str]:
    """The categories of a run folder to predict (``chosen``: that one, checked)."""
    keys = [m.key for m in members(read_run_config(run_dir))]
    if chosen is not None and chosen not in keys:
        raise ConfigError(
            f"{run_dir} has no category {chosen!r}; its categories: {', '.join(keys)}."
        )
    return [chosen] if chosen is not None else keys


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


def predict_images(
    run_dir: Path,
    images: Sequence[str | Path],
    *,
    threshold: float | None = None,
    options: PredictOptions | None = None,
) -> list[Prediction]:
    """Maps, scores and verdicts of image files, in memory (nothing is written)."""
    from filterformer.data.folder import file_samples
    from filterformer.evaluation.protocol import image_score

    options = options or PredictOptions(no_progress=True)
    exporter = RunExporter(Path(run_dir), options)
    run = exporter.run
    value = exporter.threshold.value if threshold is None else float(threshold)
    results = []
    samples = file_samples([Path(p) for p in images], category=run.category)
    for sample, amap in exporter.maps.predict(samples):
        mask = amap > value
        step = for_sample(run.postprocess, sample.split, sample.load_image)
        mask = mask if step is None else step(mask)
        score = float(image_score(amap, run.image_score))
        results.append(Prediction(sample.path, amap, score, value, mask.astype(bool)))
    return results
