"""Export a loaded run's map path, checked against torch before anything is written.

:func:`export_run` asks the run's family for its :class:`ExportPlan`, traces each graph to
ONNX (converted to OpenVINO on request), stores the steps' arrays in one bank file, runs the
parity check on real network inputs in the format's runtime with the runtime's own pipeline
(:class:`~filterformer.runtime.pipeline.Pipeline`), and only then moves the files beside
``out`` and lists them in export.json.

File names: a one-graph plan is the file ``out`` itself (``model.onnx``); the graphs of a
longer plan are ``<stem>.<graph><suffix>`` beside it (``model.query.onnx``,
``model.local.onnx``) and its bank is ``<stem>.bank.safetensors``; ``out``'s name is the
export's name in export.json either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

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
from filterformer.export.graph import EXAMPLE_BATCH, MapFinish, check_exportable, export_graph
from filterformer.export.manifest import add_file, run_record
from filterformer.export.parity import FP16_TOLERANCE, FP32_TOLERANCE, Parity, check_parity
from filterformer.inference.run import Run
from filterformer.io import atomic_path
from filterformer.models.export_plan import IMAGES, ExportPlan, Graph
from filterformer.runtime.ops import OPS
from filterformer.runtime.pipeline import Pipeline
from filterformer.submission.rescale import MapRescale

EXPORT_SUFFIX = "_export"
"""A run's default export folder is ``<run>_export`` beside it (a run folder is never written
by a reader)."""
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
"""Export format -> the runtime its parity check runs in."""


def export_folder(run_dir: Path) -> Path:
    """A run's default export folder, ``<run>_export`` beside it."""
    return run_dir.with_name(run_dir.name + EXPORT_SUFFIX)


def default_model_path(run_dir: Path, fmt: str) -> Path:
    """The default export file of a run for a format (``onnx`` or ``openvino``)."""
    return export_folder(run_dir) / f"model{FORMATS[fmt]}"


def parity_batches(
    samples: Sequence[Sample], run: Run, batch_size: int, *, dynamic_size: bool
) -> Iterator[torch.Tensor]:
    """Network inputs of ``samples`` in batches; a dynamic-size export is also checked at a
    second size, one patch taller and two wider (the same inputs, resized bilinearly)."""
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        inputs = torch.stack([run.geometry.to_tensor(s.load_image()) for s in batch])
        yield inputs
        if dynamic_size:
            patch = run.model.encoder.patch_size
            h, w = inputs.shape[-2:]
            size = (h + patch, w + 2 * patch)
            yield F.interpolate(inputs, size=size, mode="bilinear", align_corners=False)


def _check_dynamic(run: Run, fmt: str, plan: ExportPlan) -> None:
    """Refuse the --dynamic-size exports that would be wrong at other sizes."""
    if not plan.any_size:
        raise DeployError(
            f"--dynamic-size: model {run.config.model.name!r} works at its training input "
            f"size only (e.g. its references are stored at that size); export without it."
        )
    if run.image_score not in ("max", "top1"):
        raise DeployError(
            f"--dynamic-size: the image score {run.image_score!r} counts its values on a map of "
            "one size; export without --dynamic-size."
        )
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


def _graph_file(graph: Graph, plan: ExportPlan, out: Path, fmt: str) -> str:
    """The file name of ``graph`` (see module doc)."""
    if len(plan.graphs) == 1:
        return out.name
    return f"{out.stem}.{graph.name}{FORMATS[fmt]}"


def _write_graph(
    graph: Graph, example: Sequence[torch.Tensor], path: Path, *, dynamic: bool, fp16: bool
) -> None:
    """Trace ``graph`` into ``path`` (fp32 ONNX first, then what the suffix and fp16 ask)."""
    onnx_file = path.with_name(f"{path.stem}.fp32.onnx")
    export_graph(graph, example, onnx_file, dynamic_size=dynamic)
    if path.suffix == ".xml":
        onnx_to_openvino(onnx_file, path, fp16=fp16)
    elif fp16:
        weights_to_float16(onnx_file, path)
    else:
        onnx_file.rename(path)


def write_plan(
    plan: ExportPlan,
    input_size: tuple[int, int],
    stage: Path,
    out: Path,
    fmt: str,
    *,
    dynamic: bool = False,
    fp16: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Every file of ``plan`` in ``stage``: (the stage records of export.json, bank name).

    Later graphs are traced on what the earlier stages make of an example batch (graphs in
    torch, steps by the runtime's own NumPy ops).
    """
    env: dict[str, Any] = {IMAGES: torch.zeros(EXAMPLE_BATCH, 3, *input_size)}
    records = []
    for step in plan.stages:
        if isinstance(step, Graph):
            name = _graph_file(step, plan, out, fmt)
            example = [env[i] for i in step.inputs]
            _write_graph(step, example, stage / name, dynamic=dynamic, fp16=fp16)
            with torch.no_grad():
                env.update(zip(step.outputs, step.module(*example), strict=True))
            records.append(
                {"graph": step.name, "file": name, "inputs": step.inputs, "outputs": step.outputs}
            )
            continue
        arrays = {key: plan.arrays[name] for key, name in step.arrays.items()}
        inputs = [env[i].numpy() for i in step.inputs]
        result = OPS[step.op](*inputs, **arrays, **step.settings)
        results = result if isinstance(result, tuple) else (result,)
        env.update(zip(step.outputs, map(torch.from_numpy, results), strict=True))
        records.append(
            {
                "op": step.op,
                "inputs": step.inputs,
                "outputs": step.outputs,
                "arrays": dict(step.arrays),
                "settings": dict(step.settings),
            }
        )
    bank = None
    if plan.arrays:
        bank = f"{out.stem}.bank.safetensors"
        contiguous = {k: np.ascontiguousarray(v) for k, v in plan.arrays.items()}
        with atomic_path(stage / bank) as tmp:
            save_file(contiguous, str(tmp))
    return records, bank


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
    """Export ``run`` as ``out`` in ``fmt`` if the parity check on ``samples`` passes.

    The check runs in the format's runtime (ONNX Runtime or OpenVINO) on the CPU, with the
    tolerance of :mod:`~filterformer.export.parity` unless one is given. On failure a
    :class:`DeployError` is raised and nothing is written beside ``out``.
    """
    check_out_path(out, fmt)
    if run.smoothing.at_original:
        raise DeployError(
            f"{run.run_dir}: its maps are made at each image's size (eval.blur_at=original), "
            "which an exported graph of fixed-size network inputs cannot do; export a run with "
            "eval.blur_at=network."
        )
    plugin = check_exportable(run.config.model.name)
    model = run.model.cpu().eval()
    finish = MapFinish(run.mode, run.map_stats, run.smoothing, run.image_score)
    plan = plugin.export_plan(model, finish)
    if dynamic_size:
        _check_dynamic(run, fmt, plan)
    if not samples:
        raise DeployError(
            f"{run.run_dir}: no images for the parity check; give a folder with --images."
        )
    tolerance = tolerance or (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    input_size = run.geometry.input_size
    with staged(out) as stage:
        stages, bank = write_plan(
            plan, input_size, stage, out, fmt, dynamic=dynamic_size, fp16=fp16
        )
        entry = {"stages": stages, "arrays": bank}
        pipeline = Pipeline(stage, entry, RUNTIMES[fmt])
        batches = parity_batches(samples, run, batch_size, dynamic_size=dynamic_size)
        parity = check_parity(model, finish, plan, pipeline, batches, tolerance)
        if not parity.ok:
            raise DeployError(
                f"{out}: the exported graph differs from the torch model ({parity.describe()}); "
                "nothing was written. Report it with the run's config.yaml."
            )
        del pipeline  # the runtimes may hold the files open
        files = [stage / s["file"] for s in stages if "graph" in s]
        move_into_place([*files, *([stage / bank] if bank else [])], out.parent)
    entry = {
        "format": fmt,
        "fp16": fp16,
        "dynamic_size": dynamic_size,
        "input_size": None if dynamic_size else list(input_size),
        "runtime": RUNTIMES[fmt],
        **entry,
        "parity": parity.to_json(),
    }
    add_file(out, run_record(run, rescale, threshold), entry)
    return parity
