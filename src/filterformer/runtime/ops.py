"""The NumPy steps an export may hold between its graphs (export.json ``stages`` with an ``op``).

- ``retrieve``: global retrieval of the ``top_k`` most similar reference images by word
  histograms: a ``blocks`` x ``blocks`` grid of word histograms per image (a bin of its own
  for the padding that makes the grid fit), the per-block KL divergence to each reference's
  histograms in float64, the sum of the ``kept`` smallest, the ``top_k`` smallest sums (the
  global retrieval of Li et al., "Target before Shooting", IEEE TIP 2024; its settings come
  with the export).
- ``gather``: the rows of a reference table (bank descriptors, foreground maps) at the
  retrieved indices.

Each op takes its input arrays by position, its arrays (the export's bank file) and settings
by keyword, and returns its outputs in order. The parity check of ff-export runs these against
the torch model, so an export whose steps disagree with it is never written.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

KL_CHUNK = 16
"""Queries whose KL divergences are computed together (memory: chunk x N x S x V doubles)."""


def block_histograms(words: np.ndarray, num_words: int, blocks: int) -> np.ndarray:
    """B x h x w word maps -> B x blocks^2 x (num_words + 1) float32 per-block frequencies.

    The layout of the CPR code's stored histograms (models/grb.py): bin 0 counts padding and
    word v is bin v + 1; the map is padded at the top and left up to ``blocks`` times the block
    side ceil(h / blocks) x ceil(w / blocks); blocks are numbered row by row; every block's
    bins sum to 1.
    """
    batch, height, width = words.shape
    side_h, side_w = -(-height // blocks), -(-width // blocks)
    padded = np.zeros((batch, side_h * blocks, side_w * blocks), dtype=np.int64)
    padded[:, side_h * blocks - height :, side_w * blocks - width :] = words + 1
    cells = padded.reshape(batch, blocks, side_h, blocks, side_w).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(batch * blocks * blocks, side_h * side_w)
    bins = num_words + 1
    offsets = np.arange(len(cells))[:, None] * bins
    counts = np.bincount((cells + offsets).ravel(), minlength=len(cells) * bins)
    frequencies = counts.reshape(batch, blocks * blocks, bins) / (side_h * side_w)
    return frequencies.astype(np.float32)


def trimmed_kl(query: np.ndarray, references: np.ndarray, kept: int, eps: float) -> np.ndarray:
    """Q x S x V and N x S x V histograms -> Q x N sums of the ``kept`` smallest block KLs.

    Per block: KL(q || r) = sum_v q log(q / r), with ``eps`` added to both, in float64.
    """
    log_r = np.log(references.astype(np.float64) + eps)[None]  # 1 x N x S x V
    out = []
    for start in range(0, len(query), KL_CHUNK):
        q = query[start : start + KL_CHUNK, None].astype(np.float64) + eps  # c x 1 x S x V
        per_block = (q * (np.log(q) - log_r)).sum(-1)  # c x N x S
        out.append(np.sort(per_block, axis=-1)[..., :kept].sum(-1))
    return np.concatenate(out)


def retrieve(
    words: np.ndarray,
    *,
    histograms: np.ndarray,
    num_words: int,
    blocks: int,
    kept: int,
    top_k: int,
    eps: float,
) -> np.ndarray:
    """B x h x w word maps -> B x top_k indices of the nearest references, nearest first."""
    query = block_histograms(words, num_words, blocks)
    distances = trimmed_kl(query, histograms, kept, eps)
    return np.argsort(distances, axis=1, kind="stable")[:, :top_k]


def gather(indices: np.ndarray, *, table: np.ndarray) -> np.ndarray:
    """B x K indices -> B x K x ... rows of ``table`` (N x ...)."""
    return np.ascontiguousarray(table[indices])


OPS: dict[str, Callable[..., np.ndarray]] = {"retrieve": retrieve, "gather": gather}
"""The ops export.json may name, by name."""
