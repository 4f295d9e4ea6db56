"""Deployment: a run's map path exported to ONNX or OpenVINO, checked against torch.

See :mod:`filterformer.export.exporter` (ff-export) and export.json
(:mod:`filterformer.export.manifest`); the torch-free :mod:`filterformer.runtime` serves the
result.
"""

from filterformer.export.exporter import default_model_path, export_run
from filterformer.export.graph import MapFinish, exportable_families
from filterformer.export.parity import FP16_TOLERANCE, FP32_TOLERANCE, Parity
from filterformer.runtime.manifest import EXPORT_FILE

__all__ = [
    "EXPORT_FILE",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "MapFinish",
    "Parity",
    "default_model_path",
    "exportable_families",
    "export_run",
]
