"""export.json: everything a caller needs to use an exported map graph without filterformer.

One export.json per folder, beside the exported files. It holds the run's preprocessing
(resize, fit, crop, interpolation, mean/std, tiling), what the graph computes (fusion mode and
its statistics, smoothing, image score), the threshold and the float16 rescale of the
benchmark maps, the post-processing of binary maps, and per exported file its format,
options (input size: null when dynamic) and parity result. Exporting another format of the
same run state into the folder adds its file; exporting another run state replaces the record
(the older files are then no longer listed, and ff-predict refuses them).

The *graph* keys (:data:`GRAPH_KEYS`) fix what an exported file computes; ff-predict compares
them with the run it loads, so a file exported from another checkpoint, fusion mode or input
size is refused instead of silently giving other maps.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filterformer.errors import DeployError
from filterformer.evaluation.thresholds import Threshold
from filterformer.export.graph import INPUT_NAME, OUTPUT_NAMES
from filterformer.inference.run import Run
from filterformer.io import write_json
from filterformer.models.encoder import weights_sha256
from filterformer.submission.rescale import MapRescale
from filterformer.submission.writer import export_record

EXPORT_FILE = "export.json"
FORMAT_VERSION = 1
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
    OUTPUT_NAMES[0]: "B x h x w float32 anomaly maps at network-input resolution: the model's "
    "maps fused by `mode` and smoothed; bring them back to the original size as "
    "`preprocessing` says (undo crop or letterbox, bilinear resize)",
    OUTPUT_NAMES[1]: "B float32 image scores of those maps by `image_score` (max, or top1: the "
    "mean of the top 1 %), in the units of the maps and `threshold.value`",
}


def graph_record(run: Run) -> dict[str, Any]:
    """The keys that fix what an exported graph of ``run`` computes (as JSON reads them back)."""
    stats = run.map_stats or {}
    record = {
        "model": run.config.model.name,
        "encoder": run.config.encoder.variant,
        "checkpoint_sha256": weights_sha256(run.checkpoint),
        "mode": run.mode,
        "map_stats": {name: {"mean": m, "std": s} for name, (m, s) in sorted(stats.items())},
        "smoothing": asdict(run.smoothing),
        "image_score": run.image_score,
    }
    return json.loads(json.dumps(record))


def preprocessing(run: Run) -> dict[str, Any]:
    """How an RGB image becomes the graph's input, and how its map goes back (docs: README)."""
    geometry = run.geometry
    tiling = run.tiling
    return {
        "color": "RGB, uint8 (16-bit images: value * 255 / 65535)",
        "resize": list(geometry.resize_hw),
        "fit": geometry.fit,
        "crop": None if geometry.crop_hw is None else list(geometry.crop_hw),
        "interpolation": geometry.interpolation,
        "scale": 1 / 255,
        "mean": [float(f"{v:.7g}") for v in geometry.mean.flatten().tolist()],
        "std": [float(f"{v:.7g}") for v in geometry.std.flatten().tolist()],
        "letterbox_value": 0.0,
        "tiling": None if tiling is None else tiling.record(),
    }


def run_record(run: Run, rescale: MapRescale, threshold: Threshold) -> dict[str, Any]:
    """export.json without its ``files``: the run's settings as one exported graph uses them."""
    return {
        "format_version": FORMAT_VERSION,
        "category": run.category,
        "run_dir": str(run.run_dir.resolve()),
        "checkpoint": run.checkpoint.name,
        **graph_record(run),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32"},
        "outputs": OUTPUTS,
        "preprocessing": preprocessing(run),
        "threshold": {**threshold.to_json(), "applies": "anomalous where map > value"},
        "rescale": export_record(rescale, threshold.value),
        "postprocess": run.postprocess,
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The export.json of ``folder``, or None when there is none."""
    path = folder / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeployError(f"{path}: not valid JSON ({err}); export the run again.") from None


def add_file(out: Path, record: dict[str, Any], file_record: dict[str, Any]) -> None:
    """List the exported file ``out`` in its folder's export.json (see module doc)."""
    manifest = read_manifest(out.parent)
    files = {}
    if manifest is not None and _same_state(manifest, record):
        files = manifest.get("files", {})
    files[out.name] = file_record
    write_json(out.parent / EXPORT_FILE, {**record, "files": files})


def _same_state(manifest: dict[str, Any], record: dict[str, Any]) -> bool:
    """True when an existing export.json describes the same run state (all but ``files``)."""
    return all(manifest.get(key) == value for key, value in record.items())


def verify_export(path: Path, run: Run) -> dict[str, Any]:
    """The export.json entry of ``path``, after checking it was exported from ``run`` as is."""
    if not path.is_file():
        raise DeployError(
            f"{path}: exported model not found; make it with ff-export --run {run.run_dir} "
            f"--out {path}."
        )
    manifest = read_manifest(path.parent)
    if manifest is None or path.name not in manifest.get("files", {}):
        raise DeployError(
            f"{path}: not listed in {path.parent / EXPORT_FILE}; export it with "
            f"ff-export --run {run.run_dir} --out {path}."
        )
    entry = manifest["files"][path.name]
    current = graph_record(run)
    changed = [key for key in GRAPH_KEYS if manifest.get(key) != current[key]]
    size = entry.get("input_size")
    if size is not None and size != list(run.geometry.input_size):
        changed.append("input_size")
    if changed:
        raise DeployError(
            f"{path} was exported from another state of {run.run_dir} ({', '.join(changed)} "
            f"differ); export it again: ff-export --run {run.run_dir} --out {path}."
        )
    return entry
