"""Experiment trackers (``logger=tensorboard|mlflow|wandb``): config, losses, lr, metrics, images.

Each tracker is an optional extra (``pip install "filterformer[tensorboard]"``, ``[mlflow]``,
``[wandb]``) imported only when chosen; a missing package is a one-line
:class:`~filterformer.errors.ConfigError` with the install command, before training starts.

- ``tensorboard``: event files in ``dir`` (default ``<run>/tensorboard``);
  ``tensorboard --logdir runs`` shows every run.
- ``mlflow``: a local file store (``<run>/mlruns``) unless ``uri`` names a tracking server
  (``http://host:5000``) or another store; one MLflow run per ff-train run in ``experiment``.
  MLflow 3 keeps file stores in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which is
  set for them (``mlflow ui --backend-store-uri <run>/mlruns`` reads them).
- ``wandb``: offline (files in ``<run>/wandb``, ``wandb sync`` uploads them later) unless
  ``mode=online`` (after ``wandb login``).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from filterformer.errors import ConfigError

KINDS = ("none", "tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
"""The package each tracker imports (and the pyproject extra that installs it)."""


class Tracker:
    """No tracking (``logger=none``); the base of the others."""

    def config(self, settings: Mapping[str, Any]) -> None:
        """Record the run's resolved config, flattened to dotted keys."""

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        """Record scalar values at a training step."""

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """Record an H x W x 3 uint8 RGB image (a figure) at a step."""

    def close(self) -> None:
        """Flush and finish."""


def _require(kind: str) -> Any:
    """Import the tracker's package, or say how to install it."""
    try:
        return importlib.import_module(PACKAGES[kind])
    except ImportError:
        raise ConfigError(
            f"logger={kind} needs the {PACKAGES[kind]} package: pip install "
            f'"filterformer[{kind}]" (or choose logger=none).'
        ) from None


class TensorBoardTracker(Tracker):
    """Event files for TensorBoard (through torch's SummaryWriter)."""

    def __init__(self, log_dir: Path) -> None:
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def config(self, settings: Mapping[str, Any]) -> None:
        text = "\n".join(f"    {key}: {value}" for key, value in settings.items())
        self.writer.add_text("config", text, 0)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run in ``experiment`` (a local file store unless ``uri`` says otherwise)."""

    PARAM_LENGTH = 500
    """MLflow's oldest limit on a parameter value's length; longer values are cut."""

    def __init__(self, uri: str, experiment: str, name: str) -> None:
        mlflow = _require("mlflow")
        if uri.startswith("file:"):  # MLflow 3 keeps its file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        ident = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(ident, run_name=name).info.run_id
        self.entities = mlflow.entities

    def config(self, settings: Mapping[str, Any]) -> None:
        params = [
            self.entities.Param(key, str(value)[: self.PARAM_LENGTH])
            for key, value in settings.items()
        ]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self.entities.Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, image, f"{name}_step{step}.png")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker(Tracker):
    """A Weights & Biases run, offline unless ``mode`` is ``online``."""

    def __init__(self, project: str, name: str, folder: Path, mode: str) -> None:
        self.wandb = _require("wandb")
        folder.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=project, name=name, dir=str(folder), mode=mode)

    def config(self, settings: Mapping[str, Any]) -> None:
        self.run.config.update(
            {k: json.dumps(v) if isinstance(v, list) else v for k, v in settings.items()}
        )

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in values.items()}, step=step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.run.log({name: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(settings: Mapping[str, Any], run_dir: Path, name: str) -> Tracker:
    """The tracker the ``logger`` settings choose (``kind`` and its own keys)."""
    kind = settings.get("kind", "none")
    if kind not in KINDS:
        raise ConfigError(f"logger.kind={kind!r} is unknown; choose one of {', '.join(KINDS)}.")
    if kind == "tensorboard":
        return TensorBoardTracker(Path(settings.get("dir") or run_dir / "tensorboard"))
    if kind == "mlflow":
        uri = settings.get("uri") or (run_dir / "mlruns").resolve().as_uri()
        return MlflowTracker(uri, str(settings.get("experiment") or "filterformer"), name)
    if kind == "wandb":
        folder = Path(settings.get("dir") or run_dir)
        mode = str(settings.get("mode") or "offline")
        return WandbTracker(str(settings.get("project") or "filterformer"), name, folder, mode)
    return Tracker()


def check_tracker(settings: Mapping[str, Any]) -> None:
    """Refuse, before any work, a tracker whose package is not installed."""
    kind = settings.get("kind", "none")
    if kind not in KINDS:
        raise ConfigError(f"logger.kind={kind!r} is unknown; choose one of {', '.join(KINDS)}.")
    if kind != "none":
        _require(kind)
