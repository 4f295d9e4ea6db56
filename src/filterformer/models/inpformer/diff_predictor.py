"""Filter-Former's Diff Predictor: predicts the normal encoder-decoder residual from E_g.

The residual is taken between channel-wise unit tokens, n(E_g) - n(D_g) (see `diff_loss`).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from filterformer.models.inpformer.inp import init_weights


class DiffPredictor(nn.Module):
    """Pre-LN self-attention blocks + LayerNorm + linear head: E_g tokens -> R̂_g (B x N x C).

    Attention is timm's (F.scaled_dot_product_attention). Linears use the INP-Former init; the
    head starts at zero so that, at init, the filtered encoder n(E_g) - R̂_g is the unit E_g and
    the "filter" map equals the "inp" map. Training then starts from the baseline map instead of
    from a random perturbation of it.
    """

    def __init__(self, dim: int, heads: int, depth: int = 2, mlp_ratio: float = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim)
        self.apply(init_weights)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(tokens)))
