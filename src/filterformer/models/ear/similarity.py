"""Image similarities of a reconstruction: SSIM, and the multi-scale gradient magnitude
similarity (MSGMS) whose dissimilarity is EAR's and FADeR's anomaly map (FADeR §4.1, after RIAD).

Inputs are B x C x H x W images in [0, 1]; every map is computed per channel and averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_K = (0.01, 0.03)
"""SSIM's stabilising constants K1, K2 for a dynamic range of 1 (Wang et al., SSIM, 2004)."""


def _separable(images: torch.Tensor, column: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Same-size depthwise 2-D filter ``outer(column, row)`` as two 1-D passes, border repeated."""
    channels, size = images.shape[1], column.shape[0]
    padded = F.pad(images, (size // 2,) * 4, mode="replicate")
    vertical = column.to(images).view(1, 1, size, 1).expand(channels, 1, size, 1)
    horizontal = row.to(images).view(1, 1, 1, size).expand(channels, 1, 1, size)
    return F.conv2d(F.conv2d(padded, vertical, groups=channels), horizontal, groups=channels)


def gaussian_line(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the window is its outer product)."""
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    return line / line.sum()


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Local SSIM (B x C x H x W) of two images in [0, 1] with a Gaussian window."""
    line = gaussian_line(window, sigma)
    blur = lambda t: _separable(t, line, line)  # noqa: E731
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    return numerator / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude per channel (kernels [1, 0, -1] x [1, 1, 1] / 3)."""
    smooth, derivative = torch.full((3,), 1 / 3), torch.tensor([1.0, 0.0, -1.0])
    gx, gy = _separable(images, smooth, derivative), _separable(images, derivative, smooth)
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def gms_dissimilarity(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """1 - GMS, GMS = (2 g_x g_y + c) / (g_x^2 + g_y^2 + c), per pixel and channel.

    Exactly 0 where the two gradient magnitudes are equal.
    """
    gx, gy = gradient_magnitude(x), gradient_magnitude(y)
    return (gx - gy) ** 2 / (gx**2 + gy**2 + c)


def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = 4, c: float = 0.0026) -> torch.Tensor:
    """MSGMS dissimilarity B x H x W: 1 - GMS at ``scales`` scales (each a 2 x 2 average-pool
    of the last), upsampled bilinearly to full size, averaged over scales and channels.

    0 for identical images; it grows where the local gradient of one image departs from the
    other's, whatever the brightness offset.
    """
    size = x.shape[-2:]
    total = torch.zeros_like(x)
    for scale in range(scales):
        if scale:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        dissimilarity = gms_dissimilarity(x, y, c)
        total = total + F.interpolate(
            dissimilarity, size=size, mode="bilinear", align_corners=False
        )
    return (total / scales).mean(dim=1)
