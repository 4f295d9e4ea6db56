"""Prediction with trained runs: maps of images at their original size, scores, verdicts.

The engine of ff-predict and of the Python API's ``Run.predict``. :class:`RunExporter` writes a
run's maps in the MVTec AD 2 server's format (float16 TIFFs rescaled by the run's validation
range, masks at the run's threshold, post-processed; resumable) and reads scores back;
:func:`export_submission` does both private splits of every category, checked and packed;
:func:`predict_images` returns maps in memory. A run is read, never written: its threshold
and map range come from thresholds.json, calibrated when training ended.

With ``backend`` ``onnxruntime`` or ``openvino`` the run's export (:func:`open_export`) runs in
the torch-free runtime (:mod:`filterformer.runtime`) instead: the torch model is not loaded,
and the export must be of the run as it is now. Writing, scores, histograms and submissions
are the runtime's one implementation (:class:`~filterformer.runtime.outputs.CategoryMaps`)
for both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from filterformer.data.sample import Sample
from filterformer.errors import ConfigError
from filterformer.evaluation.thresholds import Threshold
from filterformer.export.exporter import export_folder
from filterformer.export.manifest import verify_export
from filterformer.lock import reading_run
from filterformer.runs.evaluate import require_threshold
from filterformer.runs.run import (
    build_geometry,
    current_state,
    load_run,
    read_run_config,
    split_samples,
)
from filterformer.runs.run_maps import RunMaps
from filterformer.runs.setting import member, members
from filterformer.runs.settings import resolve_device
from filterformer.runtime import Deployment
from filterformer.runtime.outputs import (
    CategoryMaps,
    Prediction,
    deployment_options,
    write_submission,
)
from filterformer.submission import OFFICIAL_COUNTS, MapRescale

LOG = logging.getLogger("filterformer")


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
    threads: int | None = None
    """Intra-op threads of an export's runtime (default: its own choice)."""
    threshold: float | None = None
    """The anomaly threshold in score units, for every split (None: the run's calibrated)."""
    category: str | None = None
    """Which category of a multi-class run (its threshold, post-processing, data)."""


class RunExporter(CategoryMaps):
    """Predicts with one loaded run's torch model (one category of a multi-class run:
    ``category``, else ``args.category``); writes as :class:`CategoryMaps` does."""

    def __init__(self, run_dir: Path, args: PredictOptions, category: str | None = None) -> None:
        self.device = resolve_device(args.device)
        with reading_run(run_dir):
            self.run = load_run(
                run_dir,
                device=self.device,
                verify=not args.no_verify,
                category=category or args.category,
            )
        self.args = args
        self.category, self.image_score = self.run.category, self.run.image_score
        self.postprocess = self.run.postprocess
        self.maps = RunMaps(
            self.run,
            device=self.device,
            data_root=args.data_root,
            progress=not args.no_progress,
            batch_size=args.batch_size,
        )
        self.rescale, self.threshold = self._calibration()
        self.threshold_given = args.threshold is not None
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

    def predict_maps(self, samples: Sequence[Sample]) -> Iterable[tuple[Sample, np.ndarray]]:
        """The torch model's original-size maps (the run's mode, smoothing, tiling)."""
        return self.maps.predict(samples)

    def samples(self, split: str) -> Sequence[Sample]:
        """The run's samples of ``split`` (under ``data_root`` if given)."""
        return self.maps.samples(split)

    def validation_scores(self) -> Sequence[float]:
        """The validation split's image scores (one pass, remembered; none without one)."""
        validation = self.maps.validation_summary()
        return () if validation is None else validation.scores


class RunDeployment(Deployment):
    """A run's export in the torch-free runtime, reading the run's own splits (its data
    source, or ``data_root``) as the torch model would."""

    def __init__(self, folder: Path, config: DictConfig, **options: Any) -> None:
        super().__init__(folder, **options)
        self.config = config

    def samples(self, split: str) -> Sequence[Sample]:
        """The run's samples of ``split``."""
        return split_samples(self.config, split, root=self.data_root)


def open_export(run_dir: Path, args: PredictOptions, category: str | None = None) -> RunDeployment:
    """The run's export (``args.model``, else ``<run>_export``) in the torch-free runtime,
    after checking it is an export of the run as it is now; the torch model is not loaded.
    A multi-class run's export is one category's (``category``, else ``args.category``)."""
    folder = export_folder(run_dir) if args.model is None else args.model.parent
    name = None if args.model is None else args.model.name
    category = category or args.category
    with reading_run(run_dir):
        state = current_state(run_dir, category)
    config = read_run_config(run_dir)
    view = members(config)[0].config if category is None else member(config, category).config
    input_size = build_geometry(view).input_size
    name = verify_export(folder, name, args.backend, state, input_size, run_dir)
    return RunDeployment(folder, view, model=name, **deployment_options(args))


def run_maps(
    run_dir: Path, args: PredictOptions, category: str | None = None
) -> RunExporter | RunDeployment:
    """The run's torch model, or its export in ``args.backend`` (:func:`open_export`)."""
    if args.backend == "torch":
        if args.model is not None:
            raise ConfigError("--model is for --backend onnxruntime or openvino.")
        return RunExporter(run_dir, args, category)
    return open_export(run_dir, args, category)


def runs_by_category(runs_dir: Path, categories: Sequence[str] | None = None) -> dict[str, Path]:
    """One run folder per category under ``runs_dir`` (read from each config.yaml; a
    multi-class run serves each of its categories); with ``categories``, exactly those
    (every one required)."""
    found: dict[str, Path] = {}
    for config in sorted(runs_dir.glob("*/config.yaml")):
        for category in (m.key for m in members(read_run_config(config.parent))):
            if category in found:
                raise ConfigError(
                    f"{runs_dir}: two runs for category {category!r} ({found[category]} and "
                    f"{config.parent}); keep one run folder per category."
                )
            found[category] = config.parent
    if categories is None:
        if not found:
            raise ConfigError(f"{runs_dir}: no run folders (*/config.yaml) in it.")
        return found
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
    """Both private splits of every category, checked, then packed (unless no_pack): each
    run's torch model, or its export in the torch-free runtime (``args.backend``).

    ``counts``: category -> images per private split (default :func:`submission_counts`).
    """
    counts = submission_counts(runs_dir) if counts is None else counts
    runs = runs_by_category(runs_dir, list(counts))

    def categories() -> Iterator[CategoryMaps]:
        for category, run_dir in runs.items():
            LOG.info("%s: %s", category, run_dir)
            yield run_maps(run_dir, args, category)

    return write_submission(
        categories(),
        out,
        data_root=args.data_root,
        counts=counts,
        pack=not args.no_pack,
        progress=not args.no_progress,
    )


def run_categories(run_dir: Path, chosen: str | None = None) -> list[str]:
    """The categories of a run folder to predict (``chosen``: that one, checked)."""
    keys = [m.key for m in members(read_run_config(run_dir))]
    if chosen is not None and chosen not in keys:
        raise ConfigError(
            f"{run_dir} has no category {chosen!r}; its categories: {', '.join(keys)}."
        )
    return [chosen] if chosen is not None else keys


def predict_images(
    run_dir: Path,
    images: Sequence[str | Path],
    *,
    threshold: float | None = None,
    options: PredictOptions | None = None,
) -> list[Prediction]:
    """Maps, scores and verdicts of image files, in memory (nothing is written)."""
    from filterformer.data.folder import file_samples

    options = options or PredictOptions(no_progress=True)
    source = run_maps(Path(run_dir), options)
    value = source.threshold.value if threshold is None else float(threshold)
    samples = file_samples([Path(p) for p in images], category=source.category)
    return source.predictions(samples, value)
