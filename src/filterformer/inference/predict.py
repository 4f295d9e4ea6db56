"""Anomaly maps at each image's original size, batched, whole-image or tiled.

Pipeline per network input: the model's maps at network resolution, fused by the category's
mode (:func:`fuse_maps` with the validation statistics of ``map_stats.json``), smoothed by a
Gaussian, then brought back to the original H x W by :meth:`InputGeometry.to_original`
(undoing the centre crop, never stretching).

Smoothing follows INP-Former (a 5 x 5 kernel with sigma 4, inp_former_spec.md §6.1) but runs
at network resolution rather than on INP-Former's 256 x 256 evaluation map, since our maps go
back to the full image size; and it pads by replicating the border instead of INP-Former's
zero padding, which darkens the map along the image border.

With a :class:`Tiling`, each tile of the original image is resized to the network input on its
own, scored, brought back to the tile's size and the tiles are blended. A tile that covers the
whole image gives exactly the whole-image map.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from filterformer.data.sample import Sample
from filterformer.data.tiling import Tiling
from filterformer.data.transforms import InputGeometry
from filterformer.models.filterformer import fuse_maps

MapStats = Mapping[str, tuple[float, float]]


def gaussian_blur(maps: torch.Tensor, sigma: float, kernel_size: int = 5) -> torch.Tensor:
    """Smooth B x H x W maps with a normalised separable Gaussian (replicated border)."""
    if sigma <= 0:
        return maps
    offsets = torch.arange(kernel_size, dtype=maps.dtype, device=maps.device) - kernel_size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = kernel_size // 2
    out = F.pad(maps.unsqueeze(1), (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1)).squeeze(1)


@torch.no_grad()
def network_maps(
    model: nn.Module,
    images: torch.Tensor,
    mode: str,
    map_stats: MapStats | None = None,
    sigma: float = 4.0,
) -> torch.Tensor:
    """Fused, smoothed B x h x w maps of normalised B x 3 x h x w network inputs."""
    fused = fuse_maps(model.anomaly_maps(images), mode, map_stats)
    return gaussian_blur(fused.float(), sigma)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def predict_maps(
    model: nn.Module,
    samples: Sequence[Sample],
    geometry: InputGeometry,
    *,
    mode: str,
    map_stats: MapStats | None = None,
    sigma: float = 4.0,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tiling: Tiling | None = None,
    progress: bool = True,
) -> Iterator[tuple[Sample, np.ndarray]]:
    """Yield (sample, H x W float32 map at the sample's original size), in sample order.

    The model is put in eval mode on ``device``. Whole images are batched ``batch_size`` at a
    time; with ``tiling`` the tiles of one image are.
    """
    model.eval().to(device)

    def score(crops: list[np.ndarray]) -> list[np.ndarray]:
        """Original-size maps of image crops, ``batch_size`` network inputs at a time."""
        out = []
        for batch in _batches(crops, batch_size):
            inputs = torch.stack([geometry.to_tensor(crop) for crop in batch]).to(device)
            maps = network_maps(model, inputs, mode, map_stats, sigma).cpu().numpy()
            out += [geometry.to_original(m, c.shape[:2]) for m, c in zip(maps, batch, strict=True)]
        return out

    bar = tqdm(total=len(samples), desc="predict", unit="img", disable=not progress)
    with bar:
        if tiling is None:
            for batch in _batches(samples, batch_size):
                maps = score([sample.load_image() for sample in batch])
                bar.update(len(batch))
                yield from zip(batch, maps, strict=True)
            return
        for sample in samples:
            image = sample.load_image()
            boxes = tiling.tiles(*sample.shape)
            tile_maps = score([image[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])
            bar.update(1)
            yield sample, tiling.blend(tile_maps, *sample.shape)
