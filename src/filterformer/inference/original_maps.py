"""Anomaly maps at each image's original size from any map backend, batched, whole or tiled.

Per image (or tile): the network input (:meth:`InputGeometry.to_array`: resize, centre crop or
letterbox, normalise), the backend's finished maps at network resolution, then the way back to
the image's (tile's) size (:meth:`InputGeometry.to_original`); tiles are blended
(:meth:`Tiling.blend`). NumPy only: the torch backend (:mod:`filterformer.inference.predict`)
and the torch-free runtime (:mod:`filterformer.runtime`) both run this one loop.

With a tiling, each tile of the original image is resized to the network input on its own,
scored, brought back to the tile's size and the tiles are blended. A tile that covers the
whole image gives exactly the whole-image map. ``at_original``: the backend makes each map at
its image's (tile's) own size (the torch model; ISVL hybrid code's order). ``levels``: the
finished maps are quantised to whole numbers 0..levels (:func:`quantize`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Protocol

import numpy as np

from filterformer.data.tiling import AnyTiling
from filterformer.data.transforms import InputGeometry
from filterformer.progress import progress_bar


class ImageSource(Protocol):
    """An image to score: a :class:`~filterformer.data.sample.Sample`, or anything with its
    original ``shape`` (H, W) and ``load_image()`` (H x W x 3 uint8 RGB)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def load_image(self) -> np.ndarray: ...


class MapBackend(Protocol):
    """What turns normalised network inputs into finished (fused, smoothed) maps."""

    def maps(self, inputs: np.ndarray, modes: Sequence[str]) -> dict[str, np.ndarray]:
        """Mode -> B x h x w float32 maps at network resolution of B x 3 x h x w inputs (a
        backend that makes maps at any size also takes ``size=(H, W)``)."""
        ...


def quantize(amap: np.ndarray, levels: int | None) -> np.ndarray:
    """floor(levels * clip(map, 0, 1)) in float32 (the ISVL hybrid code's ``(m * 255)
    .astype(uint8)`` of a clipped map for levels 255); ``levels`` None: the map unchanged."""
    if levels is None:
        return amap
    clipped = np.clip(np.asarray(amap, dtype=np.float32), 0, 1)
    return np.floor(clipped * np.float32(levels))


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
    at_original: bool = False,
    levels: int | None = None,
) -> Iterator[tuple[ImageSource, dict[str, np.ndarray]]]:
    """Yield (sample, mode -> H x W float32 map at the original size), in sample order.

    Whole images are batched ``batch_size`` at a time; with ``tiling`` the tiles of one image
    are.
    """

    def score(crops: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Original-size maps of image crops, ``batch_size`` network inputs at a time."""
        out = []
        for batch in batches(crops, batch_size):
            if at_original:
                out += _maps_at_original(backend, batch, geometry, modes)
                continue
            fused = backend.maps(np.stack([geometry.to_array(c) for c in batch]), modes)
            out += [
                {m: geometry.to_original(fused[m][i], crop.shape[:2]) for m in modes}
                for i, crop in enumerate(batch)
            ]
        return out

    bar = progress_bar(total=len(samples), desc="predict", unit="img", enabled=progress)
    with bar:
        if tiling is None:
            for batch in batches(samples, batch_size):
                maps = score([sample.load_image() for sample in batch])
                bar.update(len(batch))
                for sample, by_mode in zip(batch, maps, strict=True):
                    yield sample, {m: quantize(a, levels) for m, a in by_mode.items()}
            return
        for sample in samples:
            image = sample.load_image()
            boxes = tiling.tiles(*sample.shape)
            tile_maps = score([image[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])
            bar.update(1)
            blended = {m: tiling.blend([t[m] for t in tile_maps], *sample.shape) for m in modes}
            yield sample, {m: quantize(a, levels) for m, a in blended.items()}


def _maps_at_original(
    backend: MapBackend,
    batch: Sequence[np.ndarray],
    geometry: InputGeometry,
    modes: Sequence[str],
) -> list[dict[str, np.ndarray]]:
    """Maps of ``batch`` made and smoothed at each crop's own size (crops of one size at a
    time, in the batch's order)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in batch]
    for shape in dict.fromkeys(crop.shape[:2] for crop in batch):
        chosen = [i for i, crop in enumerate(batch) if crop.shape[:2] == shape]
        inputs = np.stack([geometry.to_array(batch[i]) for i in chosen])
        fused = backend.maps(inputs, modes, size=shape)
        for row, i in enumerate(chosen):
            out[i] = {m: fused[m][row] for m in modes}
    return out
