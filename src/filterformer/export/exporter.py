"""Export a loaded run's map path, check it against torch, and load it back for ff-predict.

:func:`export_run` traces the run's :class:`~filterformer.export.graph.MapGraph` to ONNX
(converted to OpenVINO on request), runs the parity check on real network inputs in the
format's runtime, and only then moves the file to ``out`` and lists it in export.json.
:func:`map_backend` gives ff-predict the backend it asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from filterformer.data.sample import Sample
from filterformer.errors import DeployError
from filterformer.evaluation.thresholds import Threshold
from filterformer.export.formats import (
    FORMATS,
    check_out_path,
    move_into_place,
    onnx_to_openvino,
    staged,
    weights_to_float16,
)
from filterformer.export.graph import MapGraph, check_exportable, export_onnx
from filterformer.export.manifest import add_file, run_record, verify_export
from filterformer.export.parity import FP16_TOLERANCE, FP32_TOLERANCE, Parity, check_parity
from filterformer.export.runtime import RUNTIMES, ExportedBackend, open_session
from filterformer.inference.predict import MapBackend
from filterformer.inference.run import Run
from filterformer.submission.rescale import MapRescale

EXPORT_SUFFIX = "_export"
"""A run's default export folder is ``<run>_export`` beside it (a run folder is never written
by a reader)."""
"""Where ff-export puts a run's export by default: ``<run>/export/model.onnx`` (or .xml)."""


def default_model_path(run_dir: Path, fmt: str) -> Path:
    """The default export file of a run for a format (``onnx`` or ``openvino``)."""
    return run_dir.with_name(run_dir.name + EXPORT_SUFFIX) / f"model{FORMATS[fmt]}"


def parity_batches(
    samples: Sequence[Sample], run: Run, batch_size: int, *, dynamic_size: bool
) -> Iterator[torch.Tensor]:
    """Network inputs of ``samples`` in batches; a dynamic-size export is also checked at a
    second size, one patch taller and two wider (the same inputs, resized bilinearly)."""
    patch = run.model.encoder.patch_size
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        inputs = torch.stack([run.geometry.to_tensor(s.load_image()) for s in batch])
        yield inputs
        if dynamic_size:
            h, w = inputs.shape[-2:]
            size = (h + patch, w + 2 * patch)
            yield F.interpolate(inputs, size=size, mode="bilinear", align_corners=False)


def _check_dynamic(run: Run, fmt: str) -> None:
    """Refuse the --dynamic-size exports whose position table would be wrong at other sizes."""
    if fmt == "openvino":
        raise DeployError(
            "--dynamic-size with --format openvino: OpenVINO resizes the encoder's position "
            "table differently from torch (antialiased bicubic; maps off by about 1e-2), so "
            "export one OpenVINO file per input size, or use --format onnx for any size."
        )
    if run.model.encoder.official_pos_interp:
        raise DeployError(
            f"--dynamic-size: {run.run_dir} resamples the position table the official DINOv2 "
            "way (encoder.official_pos_interp), by a scale factor that the trace fixes to the "
            "example's size; export one file per input size."
        )


def _write(graph: MapGraph, run: Run, stage: Path, fmt: str, dynamic: bool, fp16: bool) -> Path:
    """The exported model in the staging folder (fp32 ONNX first, then what was asked)."""
    onnx_file = stage / "fp32.onnx"
    export_onnx(graph, run.geometry.input_size, onnx_file, dynamic_size=dynamic)
    if fmt == "openvino":
        onnx_to_openvino(onnx_file, stage / "model.xml", fp16=fp16)
        return stage / "model.xml"
    if fp16:
        weights_to_float16(onnx_file, stage / "model.onnx")
        return stage / "model.onnx"
    return onnx_file


def export_run(
    run: Run,
    out: Path,
    fmt: str,
    *,
    rescale: MapRescale,
    threshold: Threshold,
    samples: Sequence[Sample],
    batch_size: int = 8,
    dynamic_size: bool = False,
    fp16: bool = False,
    tolerance: float | None = None,
) -> Parity:
    """Export ``run`` to ``out`` as ``fmt`` if the parity check on ``samples`` passes.

    The check runs in the format's runtime (ONNX Runtime or OpenVINO) on the CPU, with the
    tolerance of :mod:`~filterformer.export.parity` unless one is given. On failure a
    :class:`DeployError` is raised and nothing is written at ``out``.
    """
    check_out_path(out, fmt)
    check_exportable(run.config.model.name)
    if run.smoothing.at_original or run.smoothing.levels is not None:
        raise DeployError(
            f"{run.run_dir}: its maps are made at each image's size (eval.blur_at=original) or "
            "in 8-bit levels (eval.levels), which the exported graph cannot do; export a run "
            "with eval.blur_at=network and eval.levels=null."
        )
    if dynamic_size:
        _check_dynamic(run, fmt)
    if not samples:
        raise DeployError(
            f"{run.run_dir}: no images for the parity check; give a folder with --images."
        )
    tolerance = tolerance or (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    graph = MapGraph(run.model.cpu(), run.mode, run.map_stats, run.smoothing, run.image_score)
    with staged(out) as stage:
        model_file = _write(graph, run, stage, fmt, dynamic_size, fp16)
        session = open_session(model_file, RUNTIMES[fmt])
        batches = parity_batches(samples, run, batch_size, dynamic_size=dynamic_size)
        parity = check_parity(graph, session, batches, tolerance)
        if not parity.ok:
            raise DeployError(
                f"{out}: the exported graph differs from the torch model ({parity.describe()}); "
                "nothing was written. Report it with the run's config.yaml."
            )
        move_into_place(model_file, out)
    entry = {
        "format": fmt,
        "fp16": fp16,
        "dynamic_size": dynamic_size,
        "input_size": None if dynamic_size else list(run.geometry.input_size),
        "runtime": RUNTIMES[fmt],
        "parity": parity.to_json(),
    }
    add_file(out, run_record(run, rescale, threshold), entry)
    return parity


def map_backend(run: Run, backend: str, model_file: Path | None) -> torch.nn.Module | MapBackend:
    """What ff-predict runs: the run's torch model, or its exported file in a runtime.

    ``model_file`` defaults to the run's export (:func:`default_model_path`; for OpenVINO its
    IR when there is one, else its ONNX file); it must be listed in its export.json as an
    export of the run's current state.
    """
    if backend == "torch":
        if model_file is not None:
            raise DeployError("--model is for --backend onnxruntime or openvino.")
        return run.model
    if model_file is None:
        model_file = default_model_path(run.run_dir, "onnx")
        ir = default_model_path(run.run_dir, "openvino")
        if backend == "openvino" and ir.is_file():
            model_file = ir
    verify_export(model_file, run)
    return ExportedBackend(open_session(model_file, backend), run.mode)
