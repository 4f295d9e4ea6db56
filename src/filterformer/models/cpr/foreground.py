"""CPR's foreground estimation for object categories: an LDA direction as a fixed 1x1 conv.

Seeds come from the fine-scale features of the training images: a 2-means clustering names
the background word (the one most frequent in a border band); background samples are border
cells with that word, foreground samples centre cells without it. A two-class LDA separates
them, and its decision value, mapped to [0, 1] by a robust 1 % / 99 % range of the values
on all training pixels, is the foreground probability (Li et al., "Target before Shooting",
IEEE TIP 2024; numbers in configs/model/cpr.yaml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def seed_regions(
    height: int, width: int, band: float = 3 / 80, centre: float = 1 / 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(border band, centre square) bool h x w masks of the feature grid.

    The band is floor(band * side) cells wide on every side (at least one); the centre spans
    side / 2 +- centre * side along each axis.
    """
    border = torch.zeros(height, width, dtype=torch.bool)
    by, bx = max(1, math.floor(band * height)), max(1, math.floor(band * width))
    border[:by], border[-by:], border[:, :bx], border[:, -bx:] = True, True, True, True
    middle = torch.zeros(height, width, dtype=torch.bool)
    y0, y1 = round(height / 2 - centre * height), round(height / 2 + centre * height)
    x0, x1 = round(width / 2 - centre * width), round(width / 2 + centre * width)
    middle[y0:y1, x0:x1] = True
    return border, middle


def fit_lda(foreground: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Two-class LDA on n1 x C and n0 x C samples -> (w, b): decision = x . w + b (> 0: fg).

    Pooled within-class covariance (divided by n - 2), its pseudo-inverse for degenerate
    directions, and the log prior ratio of the class counts: the decision function of a
    two-class linear discriminant (as scikit-learn's ``LinearDiscriminantAnalysis``).
    """
    fg, bg = foreground.double(), background.double()
    mean_fg, mean_bg = fg.mean(0), bg.mean(0)
    centred = torch.cat([fg - mean_fg, bg - mean_bg])
    covariance = centred.T @ centred / (len(centred) - 2)
    w = torch.linalg.pinv(covariance, hermitian=True) @ (mean_fg - mean_bg)
    b = -0.5 * (mean_fg + mean_bg) @ w + math.log(len(fg) / len(bg))
    return w.float(), float(b)


def robust_range(values: torch.Tensor, quantile: float = 0.01) -> tuple[float, float]:
    """(lo, hi): min and max of the values left after dropping those outside the quantiles."""
    flat = values.detach().double().flatten().cpu().numpy()
    q_lo, q_hi = np.quantile(flat, [quantile, 1 - quantile])
    inside = flat[(flat >= q_lo) & (flat <= q_hi)]
    return float(inside.min()), float(inside.max())


@dataclass
class ForegroundMap:
    """CPR's fixed 1x1 conv: clamp(x . weight + bias, 0, 1), the LDA mapped to [0, 1]."""

    weight: torch.Tensor  # C, already divided by (hi - lo)
    bias: float

    @classmethod
    def from_lda(cls, w: torch.Tensor, b: float, lo: float, hi: float) -> ForegroundMap:
        """The conv of decision values x . w + b mapped by their robust range [lo, hi]."""
        scale = max(hi - lo, 1e-12)
        return cls(w.float() / scale, (b - lo) / scale)

    def state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": torch.tensor(self.bias, dtype=torch.float64)}

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x h x w features -> B x h x w foreground probability in [0, 1]."""
        weight = self.weight.to(features.device)
        return (torch.einsum("bchw,c->bhw", features.float(), weight) + self.bias).clamp(0, 1)
