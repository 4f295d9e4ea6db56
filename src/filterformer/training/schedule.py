"""Per-iteration learning rate: linear warm-up, then cosine decay, then held at the final value."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


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


class WarmupCosine(LRScheduler):
    """:func:`warmup_cosine_lr` as a torch scheduler; call ``step()`` after every optimiser step.

    A parameter group with an ``lr_scale`` gets that multiple of the rate (see
    :func:`filterformer.training.optim.optimizer_parameters`).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        final_lr: float,
        total_iters: int,
        warmup_iters: int,
    ) -> None:
        self.base_lr = base_lr
        self.final_lr = final_lr
        self.total_iters = total_iters
        self.warmup_iters = warmup_iters
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = warmup_cosine_lr(
            self.last_epoch,
            base_lr=self.base_lr,
            final_lr=self.final_lr,
            total_iters=self.total_iters,
            warmup_iters=self.warmup_iters,
        )
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]
