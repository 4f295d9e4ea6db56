"""Per-iteration learning rates (``train.optimizer.schedule``), stepped after every step.

- ``warmup_cosine``: linear warm-up, then cosine decay, then held at the final value
  (INP-Former code's ``WarmCosineScheduler``);
- ``fixed``: the base rate throughout;
- ``warmup``: linear warm-up from 0 over ``warmup_iters``, then the base rate;
- ``sgdr``: the same warm-up, then SGDR's cosine annealing with warm restarts (Loshchilov and
  Hutter, SGDR, eq. 5): periods of ``restart_iters``, each ``restart_mult`` times longer than
  the one before, from the base rate down towards ``min_lr``.

``fixed``, ``warmup`` and ``sgdr`` are the schedules of a per-product learning-rate search (Park
et al., arXiv 2407.04597, §4.1); their settings and sources are in configs/train.yaml.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from filterformer.errors import ConfigError

SCHEDULES = ("warmup_cosine", "fixed", "warmup", "sgdr")


def check_schedule(name: str) -> str:
    """``name`` if it is one of :data:`SCHEDULES`, else a ConfigError naming them."""
    if name not in SCHEDULES:
        raise ConfigError(
            f"unknown train.optimizer.schedule {name!r}; valid: {', '.join(SCHEDULES)}"
        )
    return name


def warmup_cosine_lr(
    iteration: int, *, base_lr: float, final_lr: float, total_iters: int, warmup_iters: int
) -> float:
    """Learning rate used for the 0-based ``iteration``.

    Warm-up is ``linspace(0, base_lr, warmup_iters)`` (both ends included, as INP-Former's
    ``WarmCosineScheduler``); the remaining ``total_iters - warmup_iters`` iterations follow
    ``final + (base - final) * (1 + cos(pi * k / n)) / 2``, k = 0..n-1; from ``total_iters`` on
    the rate stays at ``final_lr``.
    """
    if iteration >= total_iters:
        return final_lr
    if iteration < warmup_iters:
        return base_lr * iteration / max(warmup_iters - 1, 1)
    k, n = iteration - warmup_iters, total_iters - warmup_iters
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * k / n))


def sgdr_lr(
    iteration: int, *, base_lr: float, min_lr: float, restart_iters: int, restart_mult: int
) -> float:
    """SGDR eq. 5 at the 0-based ``iteration`` counted from the first period's start.

    ``min + (base - min) * (1 + cos(pi * T_cur / T_i)) / 2``, where period i lasts
    ``T_i = restart_iters * restart_mult**i`` iterations and ``T_cur`` counts the iterations
    since its start: each period restarts at the base rate.
    """
    period = restart_iters
    while iteration >= period:
        iteration -= period
        period *= restart_mult
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * iteration / period))


def scheduled_lr(
    name: str,
    iteration: int,
    *,
    base_lr: float,
    final_lr: float = 0.0,
    total_iters: int = 0,
    warmup_iters: int = 0,
    restart_iters: int = 1,
    restart_mult: int = 2,
) -> float:
    """The rate of schedule ``name`` (one of :data:`SCHEDULES`) at the 0-based ``iteration``.

    ``final_lr``: the end of ``warmup_cosine``, the minimum of ``sgdr``. The linear warm-up of
    ``warmup`` and ``sgdr`` is ``base_lr * iteration / warmup_iters`` (the RIAD re-implementation's
    ramp), reaching the base rate at ``warmup_iters``.
    """
    if name == "warmup_cosine":
        return warmup_cosine_lr(
            iteration,
            base_lr=base_lr,
            final_lr=final_lr,
            total_iters=total_iters,
            warmup_iters=warmup_iters,
        )
    check_schedule(name)
    if name == "fixed":
        return base_lr
    if iteration < warmup_iters:
        return base_lr * iteration / warmup_iters
    if name == "warmup":
        return base_lr
    return sgdr_lr(
        iteration - warmup_iters,
        base_lr=base_lr,
        min_lr=final_lr,
        restart_iters=restart_iters,
        restart_mult=restart_mult,
    )


class Schedule(LRScheduler):
    """:func:`scheduled_lr` as a torch scheduler; call ``step()`` after every optimiser step.

    A parameter group with an ``lr_scale`` gets that multiple of the rate (see
    :func:`filterformer.training.optim.optimizer_parameters`). The settings are plain numbers,
    so the state dict loads with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str = "warmup_cosine",
        *,
        base_lr: float,
        final_lr: float = 0.0,
        total_iters: int = 0,
        warmup_iters: int = 0,
        restart_iters: int = 1,
        restart_mult: int = 2,
    ) -> None:
        check_schedule(name)
        self.name = name
        self.base_lr, self.final_lr = base_lr, final_lr
        self.total_iters, self.warmup_iters = total_iters, warmup_iters
        self.restart_iters, self.restart_mult = max(int(restart_iters), 1), int(restart_mult)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = scheduled_lr(
            self.name,
            self.last_epoch,
            base_lr=self.base_lr,
            final_lr=self.final_lr,
            total_iters=self.total_iters,
            warmup_iters=self.warmup_iters,
            restart_iters=self.restart_iters,
            restart_mult=self.restart_mult,
        )
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]


class WarmupCosine(Schedule):
    """The ``warmup_cosine`` :class:`Schedule`."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        final_lr: float,
        total_iters: int,
        warmup_iters: int,
    ) -> None:
        super().__init__(
            optimizer,
            "warmup_cosine",
            base_lr=base_lr,
            final_lr=final_lr,
            total_iters=total_iters,
            warmup_iters=warmup_iters,
        )
