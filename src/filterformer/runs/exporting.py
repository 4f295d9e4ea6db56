"""Export of a trained run to ONNX or OpenVINO: the engine of ff-export and ``Run.export``.

:func:`export_suite` exports one run per category into one deployable folder (one export
folder per category and suite.json), which :class:`filterformer.runtime.Suite` serves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filterformer.data.folder import ImageFolderDataset
from filterformer.export import default_model_path, export_run
from filterformer.export.formats import FORMATS
from filterformer.export.manifest import write_suite
from filterformer.export.parity import Parity
from filterformer.runs.predict import PredictOptions, RunExporter, runs_by_category


@dataclass(frozen=True)
class ExportResult:
    """Where the exported file went and how closely it matches the torch model."""

    path: Path
    parity: Parity


def export_run_folder(
    run_dir: Path,
    fmt: str = "onnx",
    out: Path | None = None,
    *,
    images: Path | None = None,
    parity_images: int = 16,
    dynamic_size: bool = False,
    fp16: bool = False,
    tolerance: float | None = None,
    options: PredictOptions | None = None,
) -> ExportResult:
    """Export the run's map path after a parity check on ``parity_images`` images (0: all)
    of ``images`` (default: the run's validation split); nothing is written if it fails.

    A multi-class run is exported one category at a time (``options.category``): the same
    weights, with that category's threshold and float16 range in its export.json.
    """
    options = options or PredictOptions(no_progress=True)
    exporter = RunExporter(Path(run_dir), options)  # threshold and range: calibrated by training
    run = exporter.run
    if images is not None:
        samples = ImageFolderDataset(images, "test", category=run.category)
    else:
        samples = exporter.maps.samples("validation")
    if parity_images > 0:
        samples = samples[:parity_images]
    if out is None:
        out = default_model_path(run.run_dir, fmt)
        if options.category is not None:  # one category of a multi-class run: its own folder
            out = out.parent / run.category / out.name
    parity = export_run(
        run,
        out,
        fmt,
        rescale=exporter.rescale,
        threshold=exporter.threshold,
        samples=samples,
        batch_size=options.batch_size,
        dynamic_size=dynamic_size,
        fp16=fp16,
        tolerance=tolerance,
    )
    return ExportResult(out, parity)


def export_suite(
    runs_dir: Path, out: Path, fmt: str = "onnx", **options: Any
) -> dict[str, ExportResult]:
    """Every run folder under ``runs_dir`` (one per category) exported into
    ``out/<category>/model.<suffix>``, then ``out/suite.json``; ``options`` as
    :func:`export_run_folder`'s. Category by category: a failed parity check stops it."""
    base = options.pop("options", None) or PredictOptions(no_progress=True)
    results = {}
    for category, run_dir in runs_by_category(runs_dir).items():
        target = out / category / f"model{FORMATS[fmt]}"
        chosen = replace(base, category=category)  # one category of a multi-class run too
        results[category] = export_run_folder(run_dir, fmt, target, options=chosen, **options)
    write_suite(out, {category: category for category in results})
    return results
