"""FADeR's parts (Park et al., FADeR §3.2-§3.3): the two-layer MLP that predicts each patch's
reconstruction error, the ranking loss that trains it (eq. 3), and the mask it gives (eq. 4).

Used by FADeR on EAR (``ear/fader.py``) and, as our extension, by INP-Former's token
attenuation (``filterformer.py``). Shapes: B images x N tokens (patches) each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from filterformer.errors import ConfigError

MASK_KINDS = ("soft", "hard")
SCALINGS = ("nearest", "bilinear")
SHRINKS = ("min", "mean", "interpolate")


class ErrorPredictor(nn.Module):
    """Phi_FADeR (eq. 2): Linear -> ReLU -> Linear, one predicted error per token."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x N x in_features -> B x N."""
        return self.mlp(tokens).squeeze(-1)


def ranking_loss(
    predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Eq. 3, max(0, -1(l_i, l_j) (l^_i - l^_j) + margin), averaged over all ordered pairs
    i != j of tokens of the same image; 1(l_i, l_j) is +1 if l_i > l_j, else -1 (ties too).

    Only the order of the targets counts, so their scale does not; they are not
    differentiated.
    """
    difference = predicted.unsqueeze(2) - predicted.unsqueeze(1)  # [b, i, j] = l^_i - l^_j
    target = target.detach()
    sign = torch.where(target.unsqueeze(2) > target.unsqueeze(1), 1.0, -1.0).to(difference)
    hinge = F.relu(margin - sign * difference)
    count = predicted.shape[1]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=predicted.device)
    return hinge[:, off_diagonal].mean()


def attenuation_mask(
    predicted: torch.Tensor,
    strength: float = 1.0,
    kind: str = "soft",
    threshold: float = 0.5,
) -> torch.Tensor:
    """B x N mask in [0, 1]: 1 keeps a token, 0 removes it (eq. 4's M_S).

    Per image, the predictions are min-max normalised to [0, 1] and flipped: ``soft`` is
    1 - strength * normalised; ``hard`` (FADeR Table 3's binary ablation) is
    1 - strength * [normalised > threshold]. Equal predictions (nothing stands out) keep
    everything; strength 0 keeps everything exactly.
    """
    _check_choice("mask", kind, MASK_KINDS)
    low = predicted.amin(dim=1, keepdim=True)
    spread = predicted.amax(dim=1, keepdim=True) - low
    normalised = (predicted - low) / spread.clamp_min(torch.finfo(predicted.dtype).tiny)
    if kind == "hard":
        normalised = (normalised > threshold).to(predicted.dtype)
    return 1 - strength * normalised


def scale_to(
    mask: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    scaling: str = "nearest",
    shrink: str = "min",
) -> list[torch.Tensor]:
    """Theta of eq. 4: a B x 1 x h x w mask resized to each (h_l, w_l) of ``sizes``.

    A level as fine as the mask grid or finer gets it by ``scaling`` interpolation. On a
    coarser level each cell covers several patches, and ``shrink`` decides what it keeps:
    "min" the most attenuated of them (a patch the MLP flags reaches every level), "mean"
    their mean, or "interpolate": the same interpolation as the finer levels (nearest keeps
    one patch per cell, at half size every other row and column: three quarters of the
    predictions never reach that level).
    """
    _check_choice("scaling", scaling, SCALINGS)
    _check_choice("shrink", shrink, SHRINKS)
    options = {"align_corners": False} if scaling == "bilinear" else {}
    scaled = []
    for size in sizes:
        level = mask
        coarser = (min(mask.shape[-2], size[0]), min(mask.shape[-1], size[1]))
        if shrink != "interpolate" and coarser != tuple(mask.shape[-2:]):
            level = _pool(mask, coarser, shrink)
        if tuple(level.shape[-2:]) != tuple(size):
            level = F.interpolate(level, size=size, mode=scaling, **options)
        scaled.append(level)
    return scaled


def _pool(mask: torch.Tensor, size: tuple[int, int], shrink: str) -> torch.Tensor:
    """The minimum ("min") or mean ("mean") of the cells each of ``size`` covers."""
    if shrink == "mean":
        return F.adaptive_avg_pool2d(mask, size)
    return -F.adaptive_max_pool2d(-mask, size)


def check_fader_settings(strength: float, kind: str, scaling: str, shrink: str = "min") -> None:
    """Refuse an attenuation strength outside [0, 1] or an unknown mask kind, scaling or
    shrink rule."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"FADeR strength {strength} must lie in [0, 1] (0: no attenuation)")
    _check_choice("mask", kind, MASK_KINDS)
    _check_choice("scaling", scaling, SCALINGS)
    _check_choice("shrink", shrink, SHRINKS)


def _check_choice(setting: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown FADeR {setting} {value!r}; valid: {', '.join(valid)}")
