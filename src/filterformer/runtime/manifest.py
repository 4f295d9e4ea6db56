"""Reading export.json (one exported run) and suite.json (one export per category).

ff-export writes them (:mod:`filterformer.export.manifest` says what they hold); the runtime
reads them here. An export lists its files under ``files``: per exported model its format,
options, parity result and ``stages``, the graphs and NumPy steps it runs in order, with the
file of each graph and the bank file of the steps' arrays (``arrays``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filterformer.errors import DeployError

EXPORT_FILE = "export.json"
SUITE_FILE = "suite.json"
FORMAT_VERSION = 2
"""2: ``stages`` per file (1 had one graph per file and no stages)."""
FORMAT_FILES = {"onnx": ".onnx", "openvino": ".xml"}
"""Export format -> graph file suffix (an OpenVINO IR is the .xml plus its .bin beside it)."""
PREFERRED = {"onnxruntime": ("onnx",), "openvino": ("openvino", "onnx")}
"""Runtime -> the formats it runs, preferred first (OpenVINO also reads .onnx files)."""


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeployError(f"{path}: not valid JSON ({err}); export again with ff-export.") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise DeployError(
            f"{path}: {what} of format {record.get('format_version')}, this filterformer reads "
            f"format {FORMAT_VERSION}; export the run again with ff-export."
        )
    return record


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The export.json of ``folder``, or None when there is none."""
    return _read_json(Path(folder) / EXPORT_FILE, "an export")


def read_suite(folder: Path) -> dict[str, Any] | None:
    """The suite.json of ``folder`` (category -> its export's subfolder), or None."""
    return _read_json(Path(folder) / SUITE_FILE, "a suite")


def require_manifest(folder: Path) -> dict[str, Any]:
    """The export.json of ``folder``, or a DeployError saying how to make one."""
    manifest = read_manifest(folder)
    if manifest is None:
        hint = " (a suite: pass one of its category folders)" if read_suite(folder) else ""
        raise DeployError(
            f"{folder}: no {EXPORT_FILE}{hint}; export a run there with "
            f"ff-export --run RUN --out {Path(folder) / 'model.onnx'}."
        )
    return manifest


def graph_files(path: Path) -> list[Path]:
    """Every file of one exported graph: the .onnx, or the OpenVINO .xml and its .bin."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def entry_files(folder: Path, entry: dict[str, Any]) -> list[Path]:
    """Every file an export entry needs: its graphs and its bank file."""
    files = [
        f
        for stage in entry["stages"]
        if "graph" in stage
        for f in graph_files(folder / stage["file"])
    ]
    if entry.get("arrays"):
        files.append(folder / entry["arrays"])
    return files


def choose_entry(
    folder: Path, manifest: dict[str, Any], backend: str, name: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The (name, entry) of ``files`` that ``backend`` runs: ``name``, else the first of the
    formats it prefers (:data:`PREFERRED`)."""
    files = manifest.get("files", {})
    if name is not None:
        if name not in files:
            raise DeployError(
                f"{folder / name}: not listed in {folder / EXPORT_FILE} (it lists "
                f"{', '.join(files) or 'nothing'}); export it with ff-export."
            )
        return name, files[name]
    for fmt in PREFERRED.get(backend, ()):
        for key, entry in files.items():
            if entry.get("format") == fmt:
                return key, entry
    raise DeployError(
        f"{folder}: no export that {backend} runs (it lists {', '.join(files) or 'nothing'}); "
        f"export one with ff-export --format {PREFERRED.get(backend, ('onnx',))[0]}."
    )
