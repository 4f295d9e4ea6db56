"""export.json: everything a caller needs to use an exported map graph without filterformer.

One export.json per folder, beside the exported files. It holds the run's preprocessing
(resize, fit, crop, interpolation, mean/std, tiling), what the graphs compute (fusion mode and
its statistics, smoothing, image score), the threshold and the float16 rescale of the
benchmark maps, the post-processing of binary maps, the run's dataset (kind, root: where the
runtime reads a split), and per exported file its format, options (input size: null when
dynamic), parity result and ``stages``: the graphs (each with its file, input and output
names) and NumPy steps (op, arrays, settings) the runtime runs in order, with ``arrays``, the
bank file of the steps' arrays. Exporting another format of the same run state into the
folder adds its file; exporting another run state replaces the record (the older files are
then no longer listed, and ff-predict refuses them). suite.json lists one such folder per
category (``ff-export --runs``).

The *graph* keys (:data:`GRAPH_KEYS`) fix what an exported file computes; ff-predict compares
them with the run it loads, so a file exported from another checkpoint, fusion mode or input
size is refused instead of silently giving other maps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filterformer.errors import DeployError
from filterformer.evaluation.thresholds import Threshold
from filterformer.inference.predict import Smoothing
from filterformer.inference.run import Run
from filterformer.io import write_json
from filterformer.models.encoder import weights_sha256
from filterformer.models.export_plan import IMAGES, MAPS, SCORES
from filterformer.runtime.manifest import (
    EXPORT_FILE,
    FORMAT_VERSION,
    SUITE_FILE,
    choose_entry,
    entry_files,
    read_manifest,
)
from filterformer.submission.rescale import MapRescale
from filterformer.submission.writer import export_record

GRAPH_KEYS = (
    "model",
    "encoder",
    "checkpoint_sha256",
    "mode",
    "map_stats",
    "smoothing",
    "image_score",
)
OUTPUTS = {
    MAPS: "B x h x w float32 anomaly maps at network-input resolution: the model's "
    "maps fused by `mode` and smoothed; bring them back to the original size as "
    "`preprocessing` says (undo crop or letterbox, bilinear resize)",
    SCORES: "B float32 image scores of those maps by `image_score` (max, or top1: the "
    "mean of the top 1 %), in the units of the maps and `threshold.value`",
}


def graph_record(
    model: str,
    encoder: str,
    checkpoint: Path,
    mode: str,
    map_stats: Mapping[str, tuple[float, float]] | None,
    smoothing: Smoothing,
    image_score: str,
) -> dict[str, Any]:
    """The keys that fix what an export computes (as JSON reads them back)."""
    record = {
        "model": model,
        "encoder": encoder,
        "checkpoint_sha256": weights_sha256(checkpoint),
        "mode": mode,
        "map_stats": {
            name: {"mean": m, "std": s} for name, (m, s) in sorted((map_stats or {}).items())
        },
        "smoothing": asdict(smoothing),
        "image_score": image_score,
    }
    return json.loads(json.dumps(record))


def run_graph_record(run: Run) -> dict[str, Any]:
    """:func:`graph_record` of a loaded run."""
    return graph_record(
        run.config.model.name,
        run.config.encoder.variant,
        run.checkpoint,
        run.mode,
        run.map_stats,
        run.smoothing,
        run.image_score,
    )


def preprocessing(run: Run) -> dict[str, Any]:
    """How an RGB image becomes the graphs' input, and how its map goes back (docs: README)."""
    return {
        "color": "RGB, uint8 (16-bit images: value * 255 / 65535)",
        **run.geometry.record(),
        "tiling": None if run.tiling is None else run.tiling.record(),
    }


def run_record(run: Run, rescale: MapRescale, threshold: Threshold) -> dict[str, Any]:
    """export.json without its ``files``: the run's settings as its exports use them."""
    data = run.config.data
    return {
        "format_version": FORMAT_VERSION,
        "category": run.category,
        "run_dir": str(run.run_dir.resolve()),
        "checkpoint": run.checkpoint.name,
        **run_graph_record(run),
        "input": {"name": IMAGES, "layout": "NCHW", "dtype": "float32"},
        "outputs": OUTPUTS,
        "preprocessing": preprocessing(run),
        "threshold": {**threshold.to_json(), "applies": "anomalous where map > value"},
        "rescale": export_record(rescale, threshold.value),
        "postprocess": run.postprocess,
        "data": {
            "kind": data.kind,
            "root": None if run.data_root is None else str(run.data_root.resolve()),
        },
    }


def add_file(out: Path, record: dict[str, Any], file_record: dict[str, Any]) -> None:
    """List the export ``out`` (its name) in its folder's export.json (see module doc)."""
    try:
        manifest = read_manifest(out.parent)
    except DeployError:  # another format version: replaced
        manifest = None
    files = {}
    if manifest is not None and _same_state(manifest, record):
        files = manifest.get("files", {})
    files[out.name] = file_record
    write_json(out.parent / EXPORT_FILE, {**record, "files": files})


def _same_state(manifest: dict[str, Any], record: dict[str, Any]) -> bool:
    """True when an existing export.json describes the same run state (all but ``files``)."""
    return all(manifest.get(key) == value for key, value in record.items())


def verify_export(
    folder: Path,
    name: str | None,
    backend: str,
    current: Mapping[str, Any],
    input_size: tuple[int, int],
    run_dir: Path,
) -> str:
    """The export in ``folder`` that ``backend`` runs (``name``, else the one it prefers),
    after checking it was exported from the run's current state (``current``:
    :func:`graph_record` of ``run_dir`` as it is now)."""
    again = f"ff-export --run {run_dir} --out {folder / (name or 'model.onnx')}"
    manifest = read_manifest(folder)
    if manifest is None:
        raise DeployError(
            f"{folder / (name or EXPORT_FILE)}: exported model not found (no {EXPORT_FILE} in "
            f"{folder}); export the run first: {again}."
        )
    name, entry = choose_entry(folder, manifest, backend, name)
    missing = [str(f) for f in entry_files(folder, entry) if not f.is_file()]
    if missing:
        raise DeployError(f"{', '.join(missing)}: exported model not found; {again}.")
    changed = [key for key in GRAPH_KEYS if manifest.get(key) != current[key]]
    size = entry.get("input_size")
    if size is not None and size != list(input_size):
        changed.append("input_size")
    if changed:
        raise DeployError(
            f"{folder / name} was exported from another state of {run_dir} "
            f"({', '.join(changed)} differ); export it again: {again}."
        )
    return name


def write_suite(out: Path, categories: Mapping[str, str]) -> Path:
    """suite.json in ``out``: category -> the subfolder of its export."""
    path = out / SUITE_FILE
    write_json(path, {"format_version": FORMAT_VERSION, "categories": dict(categories)})
    return path
