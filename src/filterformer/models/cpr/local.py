"""CPR's local retrieval: windowed minimum cosine distance to a few references, from a bank.

For a query location p and window r, the candidates are the descriptors of each of the K
references at every position of the r x r window centred at p that lies inside the image;
the score is min over candidates of 1 - cos. The bank keeps every reference's descriptors in
float16 and gathers only the K references of each query, so nothing of size
(queries x all references) is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def windowed_min_distance(
    query: torch.Tensor, references: torch.Tensor, window: int
) -> torch.Tensor:
    """Min of 1 - cos over the K references and the window around each location.

    Query B x D x h x w, references B x K x D x h x w -> B x h x w. Descriptors must be unit
    vectors along D. Window positions outside the image are skipped (never padded), so border
    locations compare with fewer candidates.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window {window} must be a positive odd number")
    batch, _, height, width = query.shape
    best = query.new_full((batch, height, width), -torch.inf, dtype=torch.float32)
    radius = window // 2
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            y0, y1 = max(0, -dy), min(height, height - dy)
            x0, x1 = max(0, -dx), min(width, width - dx)
            if y0 >= y1 or x0 >= x1:
                continue
            q = query[:, :, y0:y1, x0:x1].float()
            for k in range(references.shape[1]):
                ref = references[:, k, :, y0 + dy : y1 + dy, x0 + dx : x1 + dx].float()
                similarity = (q * ref).sum(1)
                best[:, y0:y1, x0:x1] = torch.maximum(best[:, y0:y1, x0:x1], similarity)
    return 1 - best


class MemoryBank:
    """Unit descriptors of N reference images per scale, float16, on one device.

    ``scales[s]`` is N x D x h_s x w_s. Memory: N x D x sum_s(h_s w_s) x 2 bytes.
    """

    def __init__(self, scales: Sequence[torch.Tensor]) -> None:
        self.scales = [s.to(torch.float16) for s in scales]

    @property
    def size(self) -> int:
        """Number of reference images."""
        return self.scales[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the descriptors."""
        return sum(s.numel() * s.element_size() for s in self.scales)

    def distances(
        self,
        queries: Sequence[torch.Tensor],
        neighbours: torch.Tensor,
        windows: Sequence[int],
        chunk: int = 4,
    ) -> list[torch.Tensor]:
        """Per scale, B x h x w windowed min distances of ``queries`` (B x D x h x w each) to
        their own references ``neighbours`` (B x K bank indices), ``chunk`` queries at a time.
        """
        out = []
        for query, bank, window in zip(queries, self.scales, windows, strict=True):
            parts = []
            for start in range(0, query.shape[0], chunk):
                index = neighbours[start : start + chunk].to(bank.device)
                references = bank[index].to(query.device)  # b x K x D x h x w, float16
                parts.append(
                    windowed_min_distance(query[start : start + chunk], references, window)
                )
            out.append(torch.cat(parts))
        return out
