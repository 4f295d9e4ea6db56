"""Block grids of an image: padding to a multiple, mosaic obfuscation, patch tokens.

Images are B x C x H x W tensors; a block (patch) of scale m is an m x m square whose corner
lies on a multiple of m, counted from the top-left pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_to_multiple(
    images: torch.Tensor, multiple: int, value: float | None = None
) -> torch.Tensor:
    """Pad the bottom and right of B x C x H x W so that H and W are multiples of ``multiple``.

    ``value`` None repeats the border pixels (images); a number pads with it (masks).
    """
    height, width = images.shape[-2:]
    pad = (0, -width % multiple, 0, -height % multiple)
    if not any(pad):
        return images
    if value is None:
        return F.pad(images, pad, mode="replicate")
    return F.pad(images, pad, value=value)


def common_multiple(*sizes: int) -> int:
    """The least common multiple of block sizes (what an input must be a multiple of)."""
    return math.lcm(*sizes)


def mosaic(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Every scale x scale block replaced by its mean (H and W must be multiples of scale)."""
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"image {height} x {width} is not a multiple of the mosaic scale {scale}")
    means = F.avg_pool2d(images, scale)
    return means.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def obfuscate(images: torch.Tensor, mask: torch.Tensor, scale: int) -> torch.Tensor:
    """EAR's hint-providing obfuscation: the mosaic of the image where ``mask`` is set.

    ``mask`` is B x 1 x H x W (nonzero = suspected defect); elsewhere the image is untouched.
    """
    return torch.where(mask.bool(), mosaic(images, scale), images)


def patch_tokens(images: torch.Tensor, size: int) -> torch.Tensor:
    """B x C x H x W -> B x N x (C * size * size): non-overlapping patches in row-major order."""
    patches = F.unfold(images, kernel_size=size, stride=size)  # B x (C*size*size) x N
    return patches.transpose(1, 2)
