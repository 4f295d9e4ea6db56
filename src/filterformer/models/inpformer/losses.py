"""INP-Former's losses (coherence, soft mining) and Filter-Former's diff loss.

Group maps are B x C x h x w; token sequences B x N x C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx

from filterformer.errors import ConfigError

DIFF_LOSS_TYPES = ("mse", "cosine")
COS_EPS = 1e-8  # eps of torch's CosineSimilarity, as in the official code


def coherence_loss(fused: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine distance to the nearest INP (L_c, Luo et al., INP-Former,
    the INP Coherence Loss; INP-Former code: ``INP_Former.gather_loss`` in ``models/uad.py``).

    fused: B x N x C encoder tokens (detached: only the INPs receive gradient); inps: B x M x C.
    """
    return inp_distances(fused.detach(), inps).mean()


def inp_distances(fused: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
    """B x N: each token's cosine distance to its nearest INP (the INP-Former code's
    ``gather_loss`` distance, also its zero-shot map)."""
    tokens = F.normalize(fused, dim=-1, eps=COS_EPS)
    similarity = tokens @ F.normalize(inps, dim=-1, eps=COS_EPS).transpose(1, 2)  # B x N x M
    return 1 - similarity.amax(dim=-1)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by fixed weights in backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weights)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weights,) = ctx.saved_tensors
        return grad * weights, None


def global_batch_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the whole batch: across all processes when training data-parallel (DDP).

    Soft mining normalises by the mean distance of the batch; with DDP each process holds a
    share of it, so the sum and count are all-reduced to give the one-process value exactly.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return values.mean()
    total = torch.stack([values.sum(), values.new_tensor(float(values.numel()))])
    dist.all_reduce(total)
    return total[0] / total[1]


def soft_mining_loss(
    enc_groups: Sequence[torch.Tensor],
    dec_groups: Sequence[torch.Tensor],
    gamma: float = 3.0,
) -> torch.Tensor:
    """Global cosine loss with soft-mined gradients (L_sm, Luo et al., INP-Former, the Soft
    Mining Loss; INP-Former code: ``global_cosine_hm_adaptive`` in ``utils.py``, y = 3).

    Value: mean over groups and images of 1 - cos(vec(E_g^b), vec(D_g^b)), E detached.
    Gradient w.r.t. D_g: that of the value, scaled per pixel by (δ / mean δ)^gamma, where
    δ = 1 - cos over channels (no gradient; mean over the global batch and the grid of the
    group). The scaling applies to this loss only: other losses through D_g keep their plain
    gradients.
    """
    losses = []
    for enc, dec in zip(enc_groups, dec_groups, strict=True):
        enc = enc.detach()
        with torch.no_grad():
            distance = 1 - F.cosine_similarity(enc, dec, dim=1, eps=COS_EPS)  # B x h x w
            weights = (distance / global_batch_mean(distance).clamp_min(1e-12)) ** gamma
        mined = _ScaleGradient.apply(dec, weights.unsqueeze(1))
        cosine = F.cosine_similarity(enc.flatten(1), mined.flatten(1), dim=1, eps=COS_EPS)
        losses.append((1 - cosine).mean())
    return torch.stack(losses).mean()


def unit_channels(maps: torch.Tensor) -> torch.Tensor:
    """L2-normalise every token of a B x C x h x w map over its channels: n(X).

    The anomaly maps are cosine distances, which see only token directions; Filter-Former's
    residuals therefore live between unit tokens, where the decoder's (arbitrary) output scale
    drops out.
    """
    return F.normalize(maps, dim=1, eps=COS_EPS)


def diff_loss(
    pred_residuals: Sequence[torch.Tensor],
    enc_groups: Sequence[torch.Tensor],
    dec_groups: Sequence[torch.Tensor],
    kind: str = "mse",
) -> torch.Tensor:
    """Filter-Former's L_df: the Diff Predictor's error on the residual sg(n(E_g) - n(D_g)).

    All tensors B x C x h x w; n = `unit_channels`. The residual is taken between unit tokens
    because INP-Former's global cosine loss fixes only the direction of D_g, not its scale
    (trained decoder tokens are ~100x shorter than the encoder's): E_g - D_g would be almost
    E_g itself. "mse": mean over groups and tokens of the squared L2 norm over channels;
    "cosine": mean over groups and tokens of 1 - cos over channels. The target is detached,
    so the decoder gets no gradient from this loss.
    """
    if kind not in DIFF_LOSS_TYPES:
        raise ConfigError(f"unknown diff_loss_type {kind!r}; valid: {', '.join(DIFF_LOSS_TYPES)}")
    losses = []
    for pred, enc, dec in zip(pred_residuals, enc_groups, dec_groups, strict=True):
        target = (unit_channels(enc) - unit_channels(dec)).detach()
        if kind == "mse":
            losses.append((pred - target).square().sum(dim=1).mean())
        else:
            losses.append((1 - F.cosine_similarity(pred, target, dim=1, eps=COS_EPS)).mean())
    return torch.stack(losses).mean()
