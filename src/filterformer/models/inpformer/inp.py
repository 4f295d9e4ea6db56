"""INP-Former's trainable parts: INP Extractor, Bottleneck and INP-guided decoder.

Shapes: tokens B x N x C, INPs (intrinsic normal prototypes) B x M x C. Layout and init follow
the INP-Former code (github.com/luow23/INP-Former, docs/references.md): the blocks of its
``models/vision_transformer.py`` (``Aggregation_Block``, ``Prototype_Block``) and the init loop
of ``main`` in ``INP_Former_Single_Class.py``: every Linear trunc-normal(std 0.01, clipped to
+-0.03) with zero bias, LayerNorm 1/0, per-head attention scales 1 (``learn_scale``), learnable
queries N(0, 1) (``torch.randn``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


def init_weights(module: nn.Module) -> None:
    """INP-Former init of one module (use with `Module.apply`)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """B x L x C -> B x heads x L x C/heads."""
    batch, length, channels = x.shape
    return x.reshape(batch, length, heads, channels // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """B x heads x L x D -> B x L x heads*D."""
    return x.transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Multi-head softmax attention of queries onto a separate key/value sequence."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q(queries), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.kv(context).chunk(2, dim=-1))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class INPExtractorBlock(nn.Module):
    """Pre-LN cross-attention block: prototypes attend to the fused encoder tokens.

    One LayerNorm normalises both the prototypes and the tokens (INP-Former code:
    ``Aggregation_Block.forward``).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, ln_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, inps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        inps = inps + self.attn(self.norm1(inps), self.norm1(tokens))
        return inps + self.mlp(self.norm2(inps))


class INPExtractor(nn.Module):
    """Learnable queries T (M x C) -> per-image INPs P (B x M x C) from fused tokens F."""

    def __init__(
        self,
        dim: int,
        heads: int,
        num_inps: int = 6,
        depth: int = 1,
        mlp_ratio: float = 4,
        ln_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_inps, dim))
        self.blocks = nn.ModuleList(
            INPExtractorBlock(dim, heads, mlp_ratio, ln_eps) for _ in range(depth)
        )
        self.apply(init_weights)
        nn.init.normal_(self.queries)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inps = self.queries.expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            inps = block(inps, tokens)
        return inps


class Bottleneck(Mlp):
    """Token-wise Linear-GELU-Linear on the fused tokens; no residual, no dropout.

    As the INP-Former code's bottleneck: ``Mlp(embed_dim, embed_dim * 4, embed_dim, drop=0.)``
    in ``INP_Former_Single_Class.py``.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4) -> None:
        super().__init__(dim, int(dim * mlp_ratio))
        self.apply(init_weights)


class INPAttention(nn.Module):
    """INP-guided attention: per-head cosine similarity times a learnable scale, then ReLU.

    No softmax: weights lie in [0, s_h] and need not sum to one (Luo et al., INP-Former, the
    INP-Guided Decoder: ReLU on the attention weights; code: ``Prototype_Attention.forward``).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.scale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        q = F.normalize(split_heads(self.q(tokens), self.heads), dim=-1)
        k, v = (split_heads(t, self.heads) for t in self.kv(inps).chunk(2, dim=-1))
        weights = F.relu(self.scale * (q @ F.normalize(k, dim=-1).transpose(-2, -1)))
        return self.proj(merge_heads(weights @ v))


class INPGuidedBlock(nn.Module):
    """y = INPAttn(LN1(z), LN1(P)) without an attention residual; z' = y + MLP(LN2(y))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, ln_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = INPAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, tokens: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm1(tokens), self.norm1(inps))
        return y + self.mlp(self.norm2(y))


class INPGuidedDecoder(nn.Module):
    """Stack of INP-guided blocks sharing the same INPs; returns every block's output."""

    def __init__(
        self,
        dim: int,
        heads: int,
        depth: int = 8,
        mlp_ratio: float = 4,
        ln_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            INPGuidedBlock(dim, heads, mlp_ratio, ln_eps) for _ in range(depth)
        )
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor, inps: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for block in self.blocks:
            tokens = block(tokens, inps)
            outputs.append(tokens)
        return outputs
