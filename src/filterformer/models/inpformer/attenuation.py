"""FADeR's attenuation as a plug-in for INP-Former and Filter-Former (our extension).

FADeR (Park et al., FADeR §3) stops a reconstruction model from copying what its mask missed:
a two-layer MLP predicts where the reconstruction error will be high, and those features are
attenuated before the decoder. Here the MLP reads INP-Former's fused encoder tokens (the
bottleneck input) and learns, with FADeR's ranking loss (eq. 3), the order of the trained
model's per-token residual 1 - cos(E, D) on normal images. Its flipped min-max mask (eq. 4)
pulls each token towards a fill before the bottleneck: its nearest INP (``fill="inp"``: a
token that will not reconstruct is replaced by the closest normal prototype of its own image)
or zero (``"zero"``: FADeR's plain attenuation). INP-Former's decoder starts with a LayerNorm,
which ignores a token's scale, so only a fill changes what it reads. docs/design.md §7.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from filterformer.errors import ConfigError
from filterformer.models.fader.parts import (
    ErrorPredictor,
    attenuation_mask,
    check_fader_settings,
    ranking_loss,
)
from filterformer.models.inpformer.losses import COS_EPS

ATTENUATIONS = ("none", "fader")
FILLS = ("inp", "zero")


def nearest_inps(tokens: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
    """For each token (B x N x C), its most cosine-similar INP of the same image (B x M x C)."""
    similarity = F.normalize(tokens, dim=-1) @ F.normalize(inps, dim=-1).transpose(1, 2)
    index = similarity.argmax(dim=-1, keepdim=True).expand(-1, -1, inps.shape[-1])
    return inps.gather(1, index)


def token_residuals(
    enc_groups: Sequence[torch.Tensor], dec_groups: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per-token 1 - cos(E_g, D_g), averaged over the groups: B x C x h x w maps -> B x N."""
    residuals = [
        1 - F.cosine_similarity(e, d, dim=1, eps=COS_EPS)
        for e, d in zip(enc_groups, dec_groups, strict=True)
    ]
    return torch.stack(residuals).mean(dim=0).flatten(1)


class TokenAttenuator(nn.Module):
    """The MLP, the mask it gives and the fill it pulls tokens towards.

    Args:
        dim: token width.
        hidden: the MLP's hidden width.
        strength: alpha in M = 1 - alpha * minmax(prediction).
        fill: "inp" (nearest INP) or "zero".
        margin: xi of the ranking loss.
    """

    def __init__(self, dim: int, hidden: int, strength: float, fill: str, margin: float) -> None:
        super().__init__()
        check_fader_settings(strength, "soft", "nearest")
        if fill not in FILLS:
            raise ConfigError(f"unknown model.attenuation_fill {fill!r}; valid: {', '.join(FILLS)}")
        self.predictor = ErrorPredictor(dim, hidden)
        self.strength, self.fill, self.margin = float(strength), fill, float(margin)

    def forward(
        self, tokens: torch.Tensor, inps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attenuated B x N x C tokens, predicted residuals B x N)."""
        predicted = self.predictor(tokens.detach())
        keep = attenuation_mask(predicted.detach(), self.strength).unsqueeze(-1)
        fill = nearest_inps(tokens, inps) if self.fill == "inp" else torch.zeros_like(tokens)
        return keep * tokens + (1 - keep) * fill, predicted

    def loss(self, predicted: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
        """FADeR's ranking loss (eq. 3) of the predictions against the measured residuals."""
        return ranking_loss(predicted, residuals, self.margin)
