"""Optimisers: StableAdamW (INP-Former's recipe) and plain AdamW (the Filter-Former seed's).

StableAdamW is AdamW with AMSGrad and per-tensor *update clipping*: when the RMS of the
current gradient divided by the Adam denominator exceeds ``clip_threshold``, that tensor's
step size shrinks by the same factor. This keeps early steps bounded without a long warm-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from filterformer.errors import ConfigError

OPTIMIZERS = ("stable_adamw", "adamw")


class StableAdamW(torch.optim.Optimizer):
    """AdamW with AMSGrad and update clipping, written from the formulas of the INP-Former recipe.

    Per parameter tensor p with gradient g at step t (1-based):

    1. decoupled decay ``p <- p * (1 - lr * wd)``;
    2. moments ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``;
    3. denominator ``d = sqrt(v_hat) / sqrt(1 - b2^t) + eps`` with ``v_hat = max_{s<=t} v_s``
       under AMSGrad, else ``v``;
    4. ``r = RMS(g / d)`` of the raw current gradient, ``lr_t = lr / max(1, r / clip_threshold)``;
    5. ``p <- p - lr_t / (1 - b1^t) * m / d``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-4,
        eps: float = 1e-10,
        amsgrad: bool = True,
        clip_threshold: float = 1.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or clip_threshold <= 0:
            raise ConfigError(
                f"StableAdamW: lr={lr}, eps={eps}, weight_decay={weight_decay} must be >= 0 and "
                f"clip_threshold={clip_threshold} > 0; fix the optimiser settings."
            )
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"StableAdamW: betas={betas} must lie in [0, 1).")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=amsgrad,
            clip_threshold=clip_threshold,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        """Apply one update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, self.state[p], group, lr, beta1, beta2, eps)
        return loss

    @staticmethod
    def _update(
        p: torch.Tensor, state: dict, group: dict, lr: float, beta1: float, beta2: float, eps: float
    ) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("StableAdamW does not support sparse gradients")
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        p.mul_(1.0 - lr * group["weight_decay"])
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        second = exp_avg_sq
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = (second.sqrt() / (1.0 - beta2**t) ** 0.5).add_(eps)

        # Update clipping, kept on the device (no host sync): dividing the denominator by
        # max(1, r / clip) is the same as dividing the learning rate by it.
        rms = (grad / denom).pow(2).mean().sqrt()
        denom.mul_((rms / group["clip_threshold"]).clamp(min=1.0))
        p.addcdiv_(exp_avg, denom, value=-lr / (1.0 - beta1**t))


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    clip_threshold: float = 1.0,
) -> torch.optim.Optimizer:
    """Create optimiser ``name`` (see :data:`OPTIMIZERS`); only StableAdamW uses clip_threshold."""
    if name == "stable_adamw":
        return StableAdamW(
            params,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=amsgrad,
            clip_threshold=clip_threshold,
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps, amsgrad=amsgrad
        )
    raise ConfigError(
        f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)} "
        "(train.optimizer.name=...)."
    )


def optimizer_parameters(model: torch.nn.Module) -> list[torch.Tensor] | list[dict[str, Any]]:
    """What the optimiser of ``model`` trains: ``model.trainable_parameters()``, or, when the
    model gives some part of ``model.parameter_groups()`` its own learning-rate multiplier
    (the optional ``model.lr_scales()``, e.g. a decoder at 0.1 x), one group per part
    with its ``lr_scale``, which the schedule multiplies into that group's rate."""
    scales = getattr(model, "lr_scales", dict)()
    if not scales:
        return model.trainable_parameters()
    return [
        {"params": params, "lr_scale": float(scales.get(name, 1.0))}
        for name, params in model.parameter_groups().items()
    ]
