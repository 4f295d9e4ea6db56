"""filterformer: Filter-Former, INP-Former, CPR, EAR and FADeR for industrial anomaly detection
on MVTec AD 2 and any folder of images.

    import filterformer as ff
    run = ff.train("preset=demo", "run_dir=runs/demo")
    metrics = ff.load_run("runs/demo").evaluate(split="test_public")

The API (:mod:`filterformer.api`) is imported on first use, so that ``import filterformer``
and every command's ``--help`` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "load_run", "TrainedRun", "EvaluationReport", "Prediction", "ExportResult")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    """``ff.train``, ``ff.load_run``, ...: the names of :mod:`filterformer.api`."""
    if name in _API:
        from filterformer import api

        return getattr(api, name)
    raise AttributeError(f"module 'filterformer' has no attribute {name!r}")
