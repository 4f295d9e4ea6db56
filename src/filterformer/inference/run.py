"""A trained run, loaded: the model and every setting the commands that read it need.

:func:`filterformer.runs.run.load_run` builds it from a run folder; inference, evaluation and
export take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from filterformer.data.tiling import AnyTiling
from filterformer.data.transforms import InputGeometry
from filterformer.evaluation.thresholds import Threshold
from filterformer.inference.predict import Smoothing
from filterformer.models.base import FrozenEncoderModel


@dataclass(frozen=True)
class Run:
    """A trained run, loaded: the model in eval mode and everything needed to use it."""

    run_dir: Path
    config: DictConfig
    model: FrozenEncoderModel
    checkpoint: Path
    """The weights file that was loaded."""
    geometry: InputGeometry
    category: str
    mode: str
    """Fusion mode: fusion.json's choice, else ``eval.default_mode``, else the model's own."""
    map_stats: dict[str, tuple[float, float]] | None
    threshold: Threshold | None
    """This category's threshold for ``mode`` from thresholds.json (None if not calibrated)."""
    threshold_rule: dict[str, Any]
    """How to calibrate a missing threshold: the category config's ``threshold`` section."""
    postprocess: dict[str, Any]
    tiling: AnyTiling | None
    data_root: Path | None
    smoothing: Smoothing
    """Map smoothing from ``eval.sigma``, ``blur_kernel``, ``blur_padding``, ``protocol_size``."""
    protocol: str
    """``eval.protocol``: how ff-eval scores the run (``mvtec_ad2`` for older runs)."""
    image_score: str
    """``eval.image_score``, or the protocol's own image score when it is null."""
    trained_on: str | None = None
    """Zero-shot: what the model was trained on (it never saw this category); else None."""
