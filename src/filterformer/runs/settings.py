"""The typed settings of a run, built from its config in one place.

The configs (``configs/``) hold every default; the dataclasses of the layers below
(:class:`~filterformer.training.loop.TrainSettings`, ``OptimizerSettings``) have none, so a
value can only come from a config. A setting missing from a config is a one-line
:class:`~filterformer.errors.ConfigError` naming it.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from filterformer.errors import ConfigError
from filterformer.runs.compose import config_error_message
from filterformer.training.loop import OptimizerSettings, TrainSettings

AUTO_DEVICE = "auto"


def resolve_device(device: str | None) -> str:
    """``auto`` (or None): ``cuda`` when a GPU is visible, else ``cpu``; any other name as is."""
    if device in (None, AUTO_DEVICE):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def plain(node: DictConfig) -> dict[str, Any]:
    """A config section as plain Python values (lists become tuples, e.g. betas)."""
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in OmegaConf.to_container(node, resolve=True).items()
    }


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
            num_workers=train.num_workers,
            compile_step=train.compile,
            log_every=train.log_every,
            resume=cfg.resume,
            progress=cfg.progress,
        )
    except OmegaConfBaseException as err:
        raise ConfigError(config_error_message(err)) from None
    except TypeError as err:  # a train.optimizer key the optimiser settings do not have
        raise ConfigError(f"train.optimizer: {err}; check the preset's optimiser keys.") from None
