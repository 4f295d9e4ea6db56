"""Training images as a torch Dataset: decoded once, cached at training scale, augmented.

MVTec AD 2 images are 1.4-5 Mpx PNGs; decoding them every epoch would dominate training time.
Each image is decoded once and kept as uint8 at the scale the network sees it:

- whole images: at the scaled size of the input geometry (before augmentation and crop or
  letterbox), at most ``3 * H_r * W_r`` bytes per image (e.g. 0.6 MB at 448 x 448, 2.4 MB at
  896 x 896);
- with a :class:`Tiling` (categories scored tile by tile): at the scale that maps one tile
  onto the resize size, ``scale = resize / tile`` per axis, i.e. about
  ``3 * H * W * (H_r / tile_h) * (W_r / tile_w)`` bytes for an H x W image (a 2448 x 2048
  image with 1024 px tiles: 2.9 MB at resize 448, 11.5 MB at resize 896), instead of the
  15 MB of the full-resolution image. An item is then a random tile of the original image
  (:meth:`Tiling.random_tile`), cut from the cached image at exactly the resize size, so it
  has the pixel scale of the tiles that :func:`predict_maps` scores.
- with a :class:`GridTiling` (ISVL hybrid grids): at the scale that maps the finest cell of
  the training pyramid onto the resize size; an item is one random cell of one pyramid grid,
  cut from the cache and resized, as inference resizes each grid tile.

With ``every_tile`` an epoch holds every training tile of every image once
(:meth:`Tiling.training_tiles`; the ISVL hybrid code's epoch, a ConcatDataset of the tile
files) instead of one random tile per image: ``len`` is then the number of tiles.

Randomness (tile position, augmentation) is seeded per item from (seed, epoch, index), so a
resumed run sees exactly the items an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from filterformer.data.sample import Sample
from filterformer.data.tiling import AnyTiling, Box, GridTiling
from filterformer.data.transforms import InputGeometry, TrainAugment
from filterformer.progress import progress_bar


class TrainingImages(Dataset[torch.Tensor]):
    """Normalised 3 x h x w tensors of ``samples`` at ``geometry.input_size``.

    With ``cache`` the decoded, rescaled images stay in memory; :meth:`preload` fills the cache
    up front (with a progress bar), otherwise it fills as items are first read. With DataLoader
    workers each worker holds its own lazily filled cache, so preload before creating it.
    With ``tiling`` each item is a random tile of its image, resized as inference resizes tiles;
    with ``every_tile`` too, the items are every training tile of every image (image by image).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        geometry: InputGeometry,
        augment: TrainAugment | None = None,
        cache: bool = True,
        seed: int = 0,
        tiling: AnyTiling | None = None,
        every_tile: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.geometry = geometry
        self.augment = augment
        self.seed = seed
        self.tiling = tiling
        self.epoch = 0
        self._cache: list[np.ndarray | None] | None = [None] * len(self.samples) if cache else None
        self._items: list[tuple[int, Box]] | None = None
        if every_tile and tiling is not None:
            self._items = [
                (index, box)
                for index, sample in enumerate(self.samples)
                for box in tiling.training_tiles(*sample.shape)
            ]

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream (tiles, augmentation) of ``epoch``; call every epoch."""
        self.epoch = epoch

    def preload(self, progress: bool = True) -> None:
        """Decode and cache every image now (no-op for images already cached)."""
        for index in progress_bar(
            range(len(self.samples)), desc="decoding images", enabled=progress
        ):
            self.resized_image(index)

    def cache_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) at which an H x W image is cached: its scaled size, or the tile scale.

        Along an axis no longer than the tile the single tile is the whole axis, so that axis
        is cached at the resize size, as inference stretches that tile.
        """
        if self.tiling is None:
            return self.geometry.scaled_size(height, width)
        if isinstance(self.tiling, GridTiling):  # the finest pyramid cell at the resize size
            cells = reversed(self.tiling.max_cells())  # (rows, cols)
            return tuple(  # type: ignore[return-value]
                max(r, min(side, r * n))
                for side, r, n in zip((height, width), self.geometry.resize_hw, cells, strict=True)
            )
        return tuple(  # type: ignore[return-value]
            max(r, int(round(side * r / t)))
            for side, r, t in zip(
                (height, width), self.geometry.resize_hw, self.tiling.tile, strict=True
            )
        )

    def resized_image(self, index: int) -> np.ndarray:
        """Image ``index`` as h x w x 3 uint8 at :meth:`cache_size` (cached)."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        sample = self.samples[index]
        image = self.geometry.resize_to(sample.load_image(), self.cache_size(*sample.shape))
        if self._cache is not None:
            self._cache[index] = image
        return image

    def tile(self, index: int, rng: np.random.Generator) -> tuple[Box, np.ndarray]:
        """A random tile of image ``index``: its box in the original image and its pixels."""
        box = self.tiling.random_tile(*self.samples[index].shape, rng)
        return box, self.crop(index, box)

    def crop(self, index: int, box: Box) -> np.ndarray:
        """The pixels of tile ``box`` (in the original image) of image ``index``, at the
        resize size, cut from the cached image.

        Sliding-window tiles: the cached counterpart starts at the box's corner scaled to the
        cache (rounded) and spans exactly the resize size. Grid tiles (several sizes): the box
        scaled to the cache is cut, then resized.
        """
        sample = self.samples[index]
        image = self.resized_image(index)
        if isinstance(self.tiling, GridTiling):
            scale = [c / s for c, s in zip(image.shape[:2], sample.shape, strict=True)] * 2
            y0, x0, y1, x1 = (round(v * f) for v, f in zip(box, scale, strict=True))
            return self.geometry.resize_to(image[y0:y1, x0:x1], self.geometry.resize_hw)
        corner = []
        for start, side, cached, size in zip(
            box[:2], sample.shape, image.shape[:2], self.geometry.resize_hw, strict=True
        ):
            corner.append(min(int(round(start * cached / side)), cached - size))
        (y0, x0), (height, width) = corner, self.geometry.resize_hw
        return image[y0 : y0 + height, x0 : x0 + width]

    def __len__(self) -> int:
        return len(self.samples) if self._items is None else len(self._items)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self._items is not None:
            image = self.crop(*self._items[index])
        elif self.tiling is None:
            image = self.resized_image(index)
        else:
            _, image = self.tile(index, rng)
        if self.augment is not None:
            image, _ = self.augment(image, rng=rng)
        return self.geometry.to_input(image)


class ConcatImages(ConcatDataset[torch.Tensor]):
    """Several categories' :class:`TrainingImages` as one training set, in the given order.

    What a model of several categories trains on (the INP-Former code's multi-class
    ``ConcatDataset``; the loader shuffles the whole). Each part keeps its own tiling;
    :meth:`set_epoch` and :meth:`preload` reach every part.
    """

    datasets: list[TrainingImages]

    def __init__(self, parts: Sequence[TrainingImages]) -> None:
        super().__init__(parts)

    @property
    def augment(self) -> TrainAugment | None:
        """The parts' augmentation (one for all: the run's ``train.augment``)."""
        return self.datasets[0].augment

    @property
    def tiling(self) -> AnyTiling | None:
        """A part's training tiling, if any part trains on tiles."""
        return next((part.tiling for part in self.datasets if part.tiling is not None), None)

    def set_epoch(self, epoch: int) -> None:
        """Select every part's random stream of ``epoch``."""
        for part in self.datasets:
            part.set_epoch(epoch)

    def preload(self, progress: bool = True) -> None:
        """Decode and cache every part's images now."""
        for part in self.datasets:
            part.preload(progress)
