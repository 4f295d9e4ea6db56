"""The Python API: train, load, evaluate, predict and export runs from scripts and notebooks.

    import filterformer as ff
    run = ff.train("preset=demo", "run_dir=runs/demo")   # the same overrides as ff-train
    run = ff.load_run("runs/demo")
    metrics = run.evaluate(split="test_public")           # per category + mean, fractions
    results = run.predict(["part1.png", "part2.png"])    # maps at original size, scores, verdicts
    run.export(format="onnx", out="deploy/model.onnx")

The command-line tools are thin shells over these calls. Nothing here prints: results are
typed (dataclasses), notes go to the ``filterformer`` logger, progress bars to stderr, and
every problem with the input is a :class:`~filterformer.errors.FilterformerError` whose
message names the bad input and the fix. A run folder is written only by the call that
trains (or calibrates) it; evaluate, predict and export only read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from filterformer.errors import ConfigError
from filterformer.lock import writing_output
from filterformer.runs.calibrate import Calibration, calibrate_run
from filterformer.runs.compose import compose_config
from filterformer.runs.evaluate import EvalOptions, EvaluationReport, evaluate
from filterformer.runs.exporting import ExportResult, export_run_folder
from filterformer.runs.predict import (
    Prediction,
    PredictOptions,
    RunExporter,
    predict_images,
)
from filterformer.runs.run import read_run_config
from filterformer.runs.setting import members
from filterformer.runs.train import TrainOutcome, run_training
from filterformer.runtime.outputs import RESCALE_FILE

__all__ = [
    "Calibration",
    "EvaluationReport",
    "ExportResult",
    "Prediction",
    "TrainedRun",
    "load_run",
    "train",
]


@dataclass(frozen=True)
class TrainedRun:
    """A trained run folder, and what can be done with it.

    Loading is lazy: each call reads the run as it is on disk (so a run being trained by
    another process is refused rather than read half-written).
    """

    path: Path
    outcome: TrainOutcome | None = None
    """How training went, when this object came from :func:`train`."""

    @property
    def config(self) -> DictConfig:
        """The run's resolved config (config.yaml)."""
        return read_run_config(self.path)

    @property
    def category(self) -> str:
        """The run's category (a multi-class run: see :attr:`categories`)."""
        return str(self.config.category.name)

    @property
    def categories(self) -> list[str]:
        """Every category the run's model was trained on (one, unless multi-class)."""
        return [m.key for m in members(self.config)]

    def evaluate(
        self,
        split: str | None = None,
        *,
        data_root: str | Path | None = None,
        out: str | Path | None = None,
        device: str | None = None,
        protocol: str | None = None,
        progress: bool = False,
        categories: Sequence[str] | None = None,
        data: str | None = None,
        zero_shot_map: str = "inp_distance",
    ) -> EvaluationReport:
        """Metrics of the run on ``split`` (default: its data's test split), per category
        (``categories``: those) and their mean. ``data``: zero-shot on that dataset's
        categories, which the run never trained on (``zero_shot_map``: the INP distance, as the
        INP-Former code, or ``reconstruction``).

        Outputs (metrics.json/.csv, PRO curve, overlays, scores.csv) go to
        ``<out>/<run name>/<split>``, or beside the run (``<run>_eval/<split>``).
        """
        options = EvalOptions(
            run=[self.path],
            split=split,
            categories=None if categories is None else list(categories),
            data=data,
            zero_shot_map=zero_shot_map,
            data_root=None if data_root is None else Path(data_root),
            out=None if out is None else Path(out),
            device=device,
            protocol=protocol,
            no_progress=not progress,
        )
        return evaluate(options)

    def predict(
        self,
        images: Sequence[str | Path],
        *,
        threshold: float | None = None,
        device: str | None = None,
    ) -> list[Prediction]:
        """Maps (original size), scores and verdicts of image files, in memory.

        ``threshold``: in score units; default the run's calibrated one.
        """
        if isinstance(images, str | Path):
            images = [images]
        options = PredictOptions(device=device, no_progress=True)
        return predict_images(self.path, list(images), threshold=threshold, options=options)

    def write_maps(
        self,
        out: str | Path,
        splits: Sequence[str] = ("test_private", "test_private_mixed"),
        *,
        overlays: bool = False,
        data_root: str | Path | None = None,
        device: str | None = None,
        progress: bool = False,
    ) -> Path:
        """Write the maps and masks of ``splits`` in the MVTec AD 2 server's layout under
        ``out`` (as ``ff-predict --run RUN --out OUT --split ...``; resumable); return ``out``."""
        out = Path(out)
        options = PredictOptions(
            data_root=None if data_root is None else Path(data_root),
            device=device,
            no_progress=not progress,
        )
        with writing_output(out):
            exporter = RunExporter(self.path, options)
            for split in splits:
                exporter.export(exporter.maps.samples(split), out, overlays, out / RESCALE_FILE)
        return out

    def export(
        self,
        format: str = "onnx",  # noqa: A002 (the CLI's --format)
        out: str | Path | None = None,
        *,
        fp16: bool = False,
        dynamic_size: bool = False,
        images: str | Path | None = None,
        device: str | None = None,
    ) -> ExportResult:
        """The run's map path as an ONNX or OpenVINO file with export.json, parity-checked
        against torch first (nothing is written when it fails). ``out`` defaults to
        ``<run>_export/model.onnx`` (or ``.xml``)."""
        return export_run_folder(
            self.path,
            format,
            None if out is None else Path(out),
            images=None if images is None else Path(images),
            fp16=fp16,
            dynamic_size=dynamic_size,
            options=PredictOptions(device=device, no_progress=True),
        )

    def calibrate(self, device: str | None = None) -> list[Calibration]:
        """Store a threshold for every fusion mode (training does this when it ends; for
        older runs). This writes the run folder: its only writer call."""
        from filterformer.runs.settings import resolve_device

        return calibrate_run(self.path, device=resolve_device(device))


def train(*overrides: str) -> TrainedRun:
    """Train a run as ``ff-train <overrides>`` would (one run; suites and sweeps: ff-train).

    Example: ``ff.train("preset=demo", "run_dir=runs/demo", "progress=false")``.
    """
    if any(o.split("=", 1)[0] in ("suite", "-m", "--multirun") for o in overrides):
        raise ConfigError(
            "ff.train trains one run; for suites and sweeps run ff-train suite=... or "
            "ff-train -m ..., or call ff.train once per category."
        )
    outcome = run_training(compose_config(overrides))
    return TrainedRun(outcome.run_dir, outcome)


def load_run(path: str | Path) -> TrainedRun:
    """The trained run in folder ``path`` (checked to hold an ff-train run config)."""
    run_dir = Path(path).expanduser()
    read_run_config(run_dir)
    return TrainedRun(run_dir)
