"""The typed settings of a run, built from its config in one place.

The configs (``configs/``) hold every default; the dataclasses of the layers below
(:class:`~filterformer.training.loop.TrainSettings`, ``OptimizerSettings``) have none, so a
value can only come from a config. A setting missing from a config is a one-line
:class:`~filterformer.errors.ConfigError` naming it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from filterformer.errors import ConfigError
from filterformer.runs.compose import config_error_message
from filterformer.training.loop import OptimizerSettings, TrainSettings

AUTO_DEVICE = "auto"
LOG = logging.getLogger("filterformer")


def resolve_device(device: str | None) -> str:
    """``auto`` (or None): ``cuda`` when a GPU is visible, else ``cpu``; any other name after
    checking that torch knows it and, for ``cuda[:N]``, that this machine has that GPU (a
    :class:`ConfigError` before anything is read or written)."""
    if device in (None, AUTO_DEVICE):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(str(device))
    except RuntimeError:
        raise ConfigError(
            f"device {device!r} is not a torch device; use auto, cpu or cuda (cuda:N)."
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            have = f"{count} CUDA GPU(s) visible to torch" if count else "no CUDA GPU visible"
            raise ConfigError(
                f"device {device!r}: this machine has {have}; use the device cpu (or auto)."
            )
    return str(device)


def plain(node: DictConfig) -> dict[str, Any]:
    """A config section as plain Python values (lists become tuples, e.g. betas)."""
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in OmegaConf.to_container(node, resolve=True).items()
    }


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(configured: int) -> int:
    """``train.num_workers``, at most the cores available (a recipe's 8 on a 2-core machine
    would only compete with the training process for them)."""
    cores = available_cores()
    if configured > cores:
        LOG.info(
            "train.num_workers=%d: %d core(s) available, so %d loader workers",
            configured,
            cores,
            cores,
        )
        return cores
    return configured


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The run's :class:`TrainSettings` from ``train``, ``seed``, ``device``, ``resume``,
    ``progress`` of a composed config."""
    try:
        train = cfg.train
        return TrainSettings(
            epochs=train.epochs,
            batch_size=train.batch_size,
            optimizer=OptimizerSettings(**plain(train.optimizer)),
            grad_clip=train.grad_clip,
            device=resolve_device(cfg.device),
            amp_bf16=train.amp_bf16,
            seed=cfg.seed,
            deterministic=train.deterministic,
            num_workers=loader_workers(int(train.num_workers)),
            compile_step=train.compile,
            log_every=train.log_every,
            resume=cfg.resume,
            progress=cfg.progress,
        )
    except OmegaConfBaseException as err:
        raise ConfigError(config_error_message(err)) from None
    except TypeError as err:  # a train.optimizer key the optimiser settings do not have
        raise ConfigError(f"train.optimizer: {err}; check the preset's optimiser keys.") from None
