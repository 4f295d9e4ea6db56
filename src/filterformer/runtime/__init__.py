"""Exported models served without torch: NumPy, OpenCV and ONNX Runtime or OpenVINO.

:class:`Deployment` (one export folder: maps, scores, verdicts, benchmark files) and
:class:`Suite` (one export per category: a checked MVTec AD 2 submission). Nothing here
imports torch, so a line PC needs neither the training stack nor the encoder weights.
"""

from filterformer.runtime.deployment import Deployment
from filterformer.runtime.manifest import EXPORT_FILE, SUITE_FILE
from filterformer.runtime.outputs import Prediction
from filterformer.runtime.pipeline import Pipeline
from filterformer.runtime.sessions import BACKENDS, open_session
from filterformer.runtime.suite import Suite

__all__ = [
    "BACKENDS",
    "EXPORT_FILE",
    "SUITE_FILE",
    "Deployment",
    "Pipeline",
    "Prediction",
    "Suite",
    "open_session",
]
