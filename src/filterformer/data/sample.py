"""One image of a dataset, with its label, lighting condition and ground truth."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import overload

import numpy as np

from filterformer.errors import DataError
from filterformer.io import read_image, read_mask


@dataclass(frozen=True)
class Sample:
    """An image file and what is known about it; pixels are decoded only on demand.

    ``height`` and ``width`` come from the file header at discovery, so metrics and exports
    know the original size without decoding multi-megapixel images.
    """

    path: Path
    category: str
    split: str
    relpath: PurePosixPath
    label: int | None
    condition: str
    mask_path: Path | None
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """Original (H, W) of the image."""
        return self.height, self.width

    def load_image(self) -> np.ndarray:
        """Decode the image as H x W x 3 uint8 RGB."""
        image = read_image(self.path)
        if image.shape[:2] != self.shape:
            raise DataError(
                f"{self.path}: decoded size {image.shape[0]}x{image.shape[1]} differs from the "
                f"header size {self.height}x{self.width}. The file changed or is damaged; "
                "replace it and rebuild the dataset."
            )
        return image

    def load_mask(self) -> np.ndarray | None:
        """H x W bool ground truth: all-False for a good image, ``None`` when unknown."""
        if self.label is None:
            return None
        if self.mask_path is None:
            if self.label:
                raise DataError(
                    f"{self.path}: labelled anomalous but has no mask file. "
                    "Add its ground-truth mask."
                )
            return np.zeros(self.shape, dtype=bool)
        return read_mask(self.mask_path, shape=self.shape)


class SampleSequence(Sequence[Sample]):
    """A dataset as an immutable, indexable sequence of samples (subclasses fill ``samples``)."""

    samples: tuple[Sample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Sample, ...]: ...
    def __getitem__(self, index: int | slice) -> Sample | tuple[Sample, ...]:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)
