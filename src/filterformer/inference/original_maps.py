"""Anomaly maps at each image's original size from any map backend, batched, whole or tiled.

Per image (or tile): the network input (:meth:`InputGeometry.to_array`: resize, centre crop or
letterbox, normalise), the backend's finished maps at network resolution, then the way back to
the image's (tile's) size (:meth:`InputGeometry.to_original`); tiles are blended
(:meth:`Tiling.blend`). NumPy only: the torch backend (:mod:`filterformer.inference.predict`)
and the torch-free runtime (:mod:`filterformer.runtime`) both run this one loop.

With a tiling, each tile of the original image is resized to the network input on its own,
scored, brought back to the tile's size and the tiles are blended. A tile that covers the
whole image gives exactly the whole-image map.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Protocol

import numpy as np
from tqdm import tqdm

from filterformer.data.tiling import AnyTiling
from filterformer.data.transforms import InputGeometry


class ImageSource(Protocol):
    """An image to score: a :class:`~filterformer.data.sample.Sample`, or anything with its
    original ``shape`` (H, W) and ``load_image()`` (H x W x 3 uint8 RGB)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def load_image(self) -> np.ndarray: ...


class MapBackend(Protocol):
    """What turns normalised network inputs into finished (fused, smoothed) maps."""

    def maps(self, inputs: np.ndarray, modes: Sequence[str]) -> dict[str, np.ndarray]:
        """Mode -> B x h x w float32 maps at network resolution of B x 3 x h x w inputs."""
        ...


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def original_size_maps(
    backend: MapBackend,
    samples: Sequence[ImageSource],
    geometry: InputGeometry,
    *,
    modes: Sequence[str],
    batch_size: int = 8,
    tiling: AnyTiling | None = None,
    progress: bool = True,
) -> Iterator[tuple[ImageSource, dict[str, np.ndarray]]]:
    """Yield (sample, mode -> H x W float32 map at the original size), in sample order.

    Whole images are batched ``batch_size`` at a time; with ``tiling`` the tiles of one image
    are.
    """

    def score(crops: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Original-size maps of image crops, ``batch_size`` network inputs at a time."""
        out = []
        for batch in batches(crops, batch_size):
            fused = backend.maps(np.stack([geometry.to_array(c) for c in batch]), modes)
            out += [
                {m: geometry.to_original(fused[m][i], crop.shape[:2]) for m in modes}
                for i, crop in enumerate(batch)
            ]
        return out

    bar = tqdm(total=len(samples), desc="predict", unit="img", disable=not progress)
    with bar:
        if tiling is None:
            for batch in batches(samples, batch_size):
                maps = score([sample.load_image() for sample in batch])
                bar.update(len(batch))
                yield from zip(batch, maps, strict=True)
            return
        for sample in samples:
            image = sample.load_image()
            boxes = tiling.tiles(*sample.shape)
            tile_maps = score([image[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])
            bar.update(1)
            yield (
                sample,
                {m: tiling.blend([tile[m] for tile in tile_maps], *sample.shape) for m in modes},
            )
