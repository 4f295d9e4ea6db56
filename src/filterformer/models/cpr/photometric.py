"""Ours: photometric normalisation of CPR's inputs, so that a global lighting change moves the
descriptors less (docs/benchmarks.md, "CPR under changed lighting").

CPR compares descriptors by their cosine, and a DenseNet's features follow the image's
intensity: an over- or under-exposed test image is far from every normal reference. Applied to
every image the backbone sees (training pairs, references, test images):

- ``none``: the image as it is (CPR);
- ``standardise``: each channel of each image shifted and scaled to mean 0 and standard
  deviation 1, which undoes any per-channel gain and offset (exposure, colour cast);
- ``local``: each channel divided by its own Gaussian-blurred copy (sigma ``sigma`` of the
  shorter side; blurred at a lower resolution, since only the smooth part is kept) in
  intensity space, which also undoes smooth gain fields (a light ramp, a vignette), then
  standardised as above.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from filterformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PHOTOMETRIC = ("none", "standardise", "local")
EPS = 1e-6


def standardise(images: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> every channel of every image at mean 0, standard deviation 1."""
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True)
    return (images - mean) / (std + EPS)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B x C x H x W (radius 3 sigma, reflected borders)."""
    batch, channels, height, width = images.shape
    radius = max(1, min(round(3 * sigma), min(height, width) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(images.reshape(-1, 1, height, width), (radius,) * 4, mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1)).reshape(batch, channels, height, width)


def smooth_field(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """The Gaussian blur of B x C x H x W at sigma pixels, computed on a grid pooled by about
    sigma / 2 and resized back (bilinear): the blur keeps no detail finer than that."""
    factor = max(1, int(sigma // 2))
    small = F.avg_pool2d(images, factor, ceil_mode=True) if factor > 1 else images
    field = blur(small, sigma / factor)
    return F.interpolate(field, size=images.shape[-2:], mode="bilinear", align_corners=False)


def photometric_normalise(
    images: torch.Tensor,
    mode: str,
    sigma: float = 0.125,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """B x 3 x H x W network inputs (normalised by ``mean`` / ``std``) -> the same, normalised
    photometrically by ``mode`` (:data:`PHOTOMETRIC`)."""
    if mode == "none":
        return images
    if mode == "standardise":
        return standardise(images)
    if mode != "local":
        raise ValueError(f"photometric mode {mode!r}: choose one of {', '.join(PHOTOMETRIC)}")
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    intensity = (images * s + m).clamp_min(0) + 1 / 255
    gain = smooth_field(intensity, sigma * min(images.shape[-2:]))
    return standardise(intensity / gain)
