"""Deployment: a run's map path exported to ONNX or OpenVINO, checked against torch, and run.

See :mod:`filterformer.export.exporter` (ff-export, ff-predict --backend) and export.json
(:mod:`filterformer.export.manifest`), which lets a caller use the file without filterformer.
"""

from filterformer.export.exporter import default_model_path, export_run, map_backend
from filterformer.export.graph import MapGraph, exportable_families
from filterformer.export.manifest import EXPORT_FILE
from filterformer.export.parity import FP16_TOLERANCE, FP32_TOLERANCE, Parity
from filterformer.export.runtime import BACKENDS, ExportedBackend, open_session

__all__ = [
    "BACKENDS",
    "EXPORT_FILE",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "ExportedBackend",
    "MapGraph",
    "Parity",
    "default_model_path",
    "exportable_families",
    "export_run",
    "map_backend",
    "open_session",
]
