"""Training images as a torch Dataset: decoded once, cached at training size, augmented.

MVTec AD 2 images are 1.4-5 Mpx PNGs; decoding them every epoch would dominate training time.
Each image is decoded once and kept as uint8 at the resize size of the input geometry (before
crop and augmentation). Augmentation is seeded per item from (seed, epoch, index), so a resumed
run sees exactly the augmentations an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from filterformer.data.sample import Sample
from filterformer.data.transforms import InputGeometry, TrainAugment


class TrainingImages(Dataset[torch.Tensor]):
    """Normalised 3 x h x w tensors of ``samples`` at ``geometry.input_size``.

    With ``cache`` the decoded, resized images stay in memory; :meth:`preload` fills the cache
    up front (with a progress bar), otherwise it fills as items are first read. With DataLoader
    workers each worker holds its own lazily filled cache, so preload before creating it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        geometry: InputGeometry,
        augment: TrainAugment | None = None,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.geometry = geometry
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._cache: list[np.ndarray | None] | None = [None] * len(self.samples) if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call at the start of every epoch)."""
        self.epoch = epoch

    def preload(self, progress: bool = True) -> None:
        """Decode and cache every image now (no-op for images already cached)."""
        for index in tqdm(range(len(self)), desc="decoding images", disable=not progress):
            self.resized_image(index)

    def resized_image(self, index: int) -> np.ndarray:
        """Image ``index`` as H x W x 3 uint8 at the geometry's resize size (cached)."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        image = self.geometry.resize(self.samples[index].load_image())
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.resized_image(index)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, _ = self.augment(image, rng=rng)
        return self.geometry.normalize(self.geometry.center_crop(image))
