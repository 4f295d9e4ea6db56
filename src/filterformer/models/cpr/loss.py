"""CPR's point-pair loss and the point pairs it is computed on.

A training pair is a pseudo-defect image x (mask M) and a normal reference r retrieved for the
image x was made from. Per sample, in input-pixel coordinates:

- positives: normal pixels p of x paired with the same p in r (sampled by a weight map);
- anomaly negatives: pixels inside M paired with the same location in r;
- spatial negatives (objects): reference locations of positive candidates paired with random
  x locations farther apart than the local search window reaches.

Loss per scale, with cosine c and weight w of each pair (Li et al., "Target before
Shooting", IEEE TIP 2024; margins and exponent in configs/model/cpr.yaml):
L_pos = sum [max(0, m_pos - c) w]^e / #(w > 0), L_neg = sum [max(0, c - m_neg) w]^e / #(w > 0).

Where a pixel point is read from a feature map (:data:`SAMPLINGS`): ``corners``, as the CPR
code (dataset/base.py, train.py), puts pixel p of an image of side S at p / (S - 1) of the
grid_sample range (pixel 0 and S - 1 on the outer edges of the feature map) and reads the
raw head outputs there; ``centres`` (ours) reads pixel centres (p + 0.5) / S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def point_pair_loss(
    cos_pos: torch.Tensor,
    w_pos: torch.Tensor,
    cos_neg: torch.Tensor,
    w_neg: torch.Tensor,
    pos_margin: float = 0.8,
    neg_margin: float = -0.2,
    exponent: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pos, L_neg): hinge losses raised to ``exponent``, averaged over pairs with w > 0.

    Positives cost nothing once cos >= pos_margin, negatives once cos <= neg_margin.
    """
    pos = ((pos_margin - cos_pos).clamp_min(0) * w_pos).pow(exponent).sum()
    neg = ((cos_neg - neg_margin).clamp_min(0) * w_neg).pow(exponent).sum()
    return pos / (w_pos > 0).sum().clamp_min(1), neg / (w_neg > 0).sum().clamp_min(1)


SAMPLINGS = ("corners", "centres")
"""Pixel-to-grid mappings of :func:`normalise_points`: CPR code's, ours."""


@dataclass
class PointPairs:
    """B x P x 2 pixel coordinates (x, y) in x and in r, B x P validity (0: padding)."""

    query: torch.Tensor
    reference: torch.Tensor
    valid: torch.Tensor

    def on_grid(self, size: tuple[int, int], sampling: str) -> PointPairs:
        """The same pairs as grid_sample coordinates of an H x W image (normalise_points)."""
        return PointPairs(
            normalise_points(self.query, size, sampling),
            normalise_points(self.reference, size, sampling),
            self.valid,
        )


@dataclass
class TrainingPoints:
    positives: PointPairs
    anomalies: PointPairs
    spatial: PointPairs

    def on_grid(self, size: tuple[int, int], sampling: str) -> TrainingPoints:
        """All pairs in grid_sample coordinates (:meth:`PointPairs.on_grid`)."""
        return TrainingPoints(
            *(p.on_grid(size, sampling) for p in (self.positives, self.anomalies, self.spatial))
        )


def _pad(points: list[torch.Tensor], count: int, device: torch.device) -> torch.Tensor:
    """Stack per-sample K_b x 2 point lists into B x count x 2 (zeros after K_b)."""
    out = torch.zeros(len(points), count, 2, device=device)
    for b, p in enumerate(points):
        out[b, : len(p)] = p[:count]
    return out


def _valid(points: list[torch.Tensor], count: int, device: torch.device) -> torch.Tensor:
    lengths = torch.tensor([min(len(p), count) for p in points], device=device)
    return (torch.arange(count, device=device)[None] < lengths[:, None]).float()


def _xy(flat: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices -> K x 2 float (x, y)."""
    return torch.stack([flat % width, flat // width], dim=1).float()


def _pairs(query: list[torch.Tensor], ref: list[torch.Tensor], count: int) -> PointPairs:
    """Per-sample pixel point lists -> padded :class:`PointPairs`."""
    device = query[0].device
    return PointPairs(
        _pad(query, count, device), _pad(ref, count, device), _valid(query, count, device)
    )


def sample_points(
    mask: torch.Tensor,
    weight: torch.Tensor,
    count: int = 300,
    min_distance: float = 4 * 2**0.5,
    spatial: bool = True,
) -> TrainingPoints:
    """Draw the point pairs of a batch from its B x H x W masks and positive-sampling weights.

    Positive candidates (2 x ``count``, without replacement, proportional to ``weight``) give
    the positives (the first ``count``) and the reference side of the spatial negatives, whose
    query side is a uniform random pixel; pairs closer than ``min_distance`` pixels are
    dropped. Uses torch's global random generator (seeded and checkpointed by training).
    """
    batch, height, width = mask.shape
    pos_q, pos_r, ano, neg_q, neg_r = [], [], [], [], []
    for b in range(batch):
        flat_mask, flat_weight = mask[b].flatten(), weight[b].flatten().float()
        normal = torch.nonzero(~flat_mask).squeeze(1)
        probs = flat_weight[normal].clamp_min(0)
        probs = probs if probs.sum() > 0 else torch.ones_like(probs)
        draws = min(len(normal), 2 * count)
        candidates = (
            _xy(normal[torch.multinomial(probs, draws)], width) if draws else _xy(normal, width)
        )
        pos_q.append(candidates[:count])
        pos_r.append(candidates[:count])
        inside = torch.nonzero(flat_mask).squeeze(1)
        ano.append(_xy(inside[torch.randperm(len(inside), device=mask.device)[:count]], width))
        if spatial:
            random_q = _xy(
                torch.randint(0, height * width, (len(candidates),), device=mask.device), width
            )
            far = (random_q - candidates).norm(dim=1) > min_distance
            neg_q.append(random_q[far])
            neg_r.append(candidates[far])
        else:
            neg_q.append(candidates[:0])
            neg_r.append(candidates[:0])
    return TrainingPoints(
        _pairs(pos_q, pos_r, count), _pairs(ano, ano, count), _pairs(neg_q, neg_r, count)
    )


def sample_at(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """B x C x h x w features at B x P x 2 grid coordinates -> B x C x P (bilinear)."""
    return F.grid_sample(features, points[:, :, None], mode="bilinear", align_corners=False)[..., 0]


def normalise_points(
    points: torch.Tensor, size: tuple[int, int], sampling: str = "corners"
) -> torch.Tensor:
    """Pixel (x, y) of an H x W image -> grid_sample coordinates (align_corners=False).

    ``corners`` (CPR code): 2 p / (S - 1) - 1; ``centres`` (ours): 2 (p + 0.5) / S - 1.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling {sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    height, width = size
    if sampling == "corners":
        scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
        return points * scale.to(points.device) - 1
    scale = torch.tensor([2.0 / width, 2.0 / height], device=points.device)
    return (points + 0.5) * scale - 1


def spatial_weights(
    features_q: torch.Tensor, features_r: torch.Tensor, pairs: PointPairs
) -> torch.Tensor:
    """B x P weights of spatial negatives from B x P x 2 grid coordinates in ``pairs``: squared
    distance of the frozen backbone features at the two points, rescaled per sample so that
    the valid pairs average 1 (zero for padding).
    """
    gap = (sample_at(features_q, pairs.query) - sample_at(features_r, pairs.reference)).pow(2)
    weights = gap.sum(1).detach() * pairs.valid
    return weights / (weights.sum(1, keepdim=True) + 1e-7) * pairs.valid.sum(1, keepdim=True)
