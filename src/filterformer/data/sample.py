"""One image of a dataset, with its label, lighting condition and ground truth."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import overload

import numpy as np

from filterformer.errors import DataError
from filterformer.io import image_size, read_image, read_mask

MASK_SUFFIX = "_mask"
"""Ground-truth masks of MVTec's datasets are named ``<image stem>_mask.png``."""


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


def make_sample(
    path: Path,
    category_dir: Path,
    split: str,
    label: int | None,
    mask_path: Path | None,
    condition: str,
) -> Sample:
    """A sample of an image under ``category_dir``; its size is read from the file header.

    ``relpath`` is the image path relative to the category folder, without suffix.
    """
    height, width = image_size(path)
    relative = path.relative_to(category_dir).with_suffix("")
    return Sample(
        path=path,
        category=category_dir.name,
        split=split,
        relpath=PurePosixPath(*relative.parts),
        label=label,
        condition=condition,
        mask_path=mask_path,
        height=height,
        width=width,
    )


def pair_masks(image_dir: Path, images: Sequence[Path], mask_dir: Path) -> dict[Path, Path]:
    """Image -> its mask ``<mask_dir>/<stem>_mask.png`` for the anomalous ``images`` of a folder.

    Raises DataError for an anomalous image without its mask and for a mask without an image,
    naming the file.
    """
    pairs = {}
    for path in images:
        mask_path = mask_dir / f"{path.stem}{MASK_SUFFIX}.png"
        if not mask_path.is_file():
            raise DataError(
                f"{path}: anomalous image without its mask {mask_path}. "
                "Restore the mask from the dataset archive or remove the image."
            )
        pairs[path] = mask_path
    stems = {p.stem for p in images}
    for mask_path in sorted(mask_dir.glob(f"*{MASK_SUFFIX}.png")):
        if mask_path.stem[: -len(MASK_SUFFIX)] not in stems:
            raise DataError(
                f"{mask_path}: mask without an image in {image_dir}. "
                "Restore the image or remove the mask."
            )
    return pairs


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
