"""CPR's global retrieval: which training images look most like a query, block by block.

Each image's fine-scale features become a word map (nearest of ``num_words`` k-means
centres), then a ``blocks`` x ``blocks`` grid of word histograms (with an extra bin, the
first, for the padding that makes the grid fit: the layout of the CPR code's stored
histograms, models/grb.py). A query's distance to a reference is the sum of the
``kept`` smallest per-block KL divergences, so a few blocks changed by a defect do not move the
ranking (Li et al., "Target before Shooting", IEEE TIP 2024; numbers in configs/model/cpr.yaml).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

KL_EPS = 1e-8
"""Added to both histograms before the KL divergence (empty bins)."""


def fit_kmeans(samples: torch.Tensor, clusters: int, seed: int, n_init: int = 10) -> torch.Tensor:
    """k-means centres (clusters x C, float32) of M x C samples; fixed seed, best of n_init."""
    if samples.shape[0] < clusters:
        raise ValueError(f"k-means with {clusters} clusters needs at least that many samples")
    kmeans = KMeans(n_clusters=clusters, n_init=n_init, random_state=seed)
    kmeans.fit(samples.double().cpu().numpy())
    return torch.from_numpy(kmeans.cluster_centers_.astype(np.float32))


def nearest_centre(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """B x C x h x w features -> B x h x w index of the nearest centre (squared L2)."""
    flat = features.flatten(2).transpose(1, 2).float()  # B x hw x C
    centres = centres.to(flat)
    distances = (
        flat.pow(2).sum(-1, keepdim=True)
        - 2 * flat @ centres.T
        + centres.pow(2).sum(-1)[None, None]
    )
    batch, _, height, width = features.shape
    return distances.argmin(-1).reshape(batch, height, width)


def block_histograms(words: torch.Tensor, num_words: int, blocks: int) -> torch.Tensor:
    """B x h x w word maps -> B x blocks^2 x (num_words + 1) per-block word frequencies.

    As the CPR code (models/grb.py): bin 0 counts padding and word v is bin v + 1; the map is
    padded at the top and left up to ``blocks`` times the block side ceil(h / blocks) x
    ceil(w / blocks); blocks are numbered row by row; every block's bins sum to 1.
    """
    batch, height, width = words.shape
    side_h, side_w = math.ceil(height / blocks), math.ceil(width / blocks)
    padded = F.pad(words + 1, (side_w * blocks - width, 0, side_h * blocks - height, 0), value=0)
    cells = padded.reshape(batch, blocks, side_h, blocks, side_w).permute(0, 1, 3, 2, 4)
    one_hot = F.one_hot(cells.reshape(batch, blocks * blocks, -1), num_words + 1)
    return one_hot.float().mean(dim=2)


def trimmed_kl(
    query: torch.Tensor, references: torch.Tensor, kept: int, chunk: int = 16
) -> torch.Tensor:
    """Q x S x V and N x S x V histograms -> Q x N sums of the ``kept`` smallest block KLs.

    Per block b: KL(q_b || r_b) = sum_v q log(q / r) with :data:`KL_EPS` added to both.
    Queries go ``chunk`` at a time (memory: chunk x N x S x V doubles).
    """
    log_r = (references.double() + KL_EPS).log()[None]  # 1 x N x S x V
    out = []
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk, None].double() + KL_EPS  # c x 1 x S x V
        per_block = (q * (q.log() - log_r)).sum(-1)  # c x N x S
        out.append(per_block.topk(kept, dim=-1, largest=False).values.sum(-1))
    return torch.cat(out)


def retrieve(distances: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Q x N distances -> Q x k indices of the nearest references, nearest first.

    ``exclude`` (Q indices): the reference that is the query itself, never returned.
    """
    distances = distances.clone()
    if exclude is not None:
        distances[torch.arange(len(distances)), exclude] = math.inf
    available = distances.shape[1] - (exclude is not None)
    if k > available:
        raise ValueError(f"cannot retrieve {k} references from {available}")
    return distances.topk(k, dim=1, largest=False).indices
