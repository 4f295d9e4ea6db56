"""TrainingImages: cached decoding at training size, augmentation seeded per epoch and item,
random tiles at the pixel scale of tiled inference."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
import torch

from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.sample import Sample
from filterformer.data.tiling import GridTiling, Tiling
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry, TrainAugment
from filterformer.io import write_png

GEOMETRY = InputGeometry((28, 35), (28, 28))
AUGMENT = TrainAugment(
    random_resized_crop={"scale": (0.5, 1.0)},
    color_jitter={"brightness": 0.2},
    rotation=10.0,
    hflip=0.5,
    directional_light={"strength": 0.3, "p": 0.5},
)


@pytest.fixture
def train_samples(synthetic_root) -> MVTecAD2:
    return MVTecAD2(synthetic_root, "synthetic", "train")


def test_items_are_the_geometry_tensors_without_augmentation(train_samples):
    data = TrainingImages(train_samples, GEOMETRY)
    assert len(data) == len(train_samples)
    for index, sample in enumerate(train_samples):
        item = data[index]
        assert item.shape == (3, 28, 28) and item.dtype == torch.float32
        torch.testing.assert_close(item, GEOMETRY.to_tensor(sample.load_image()), rtol=0, atol=0)


def test_each_image_is_decoded_once(train_samples, monkeypatch):
    calls = []
    original = Sample.load_image
    monkeypatch.setattr(Sample, "load_image", lambda self: calls.append(self) or original(self))
    data = TrainingImages(train_samples, GEOMETRY, AUGMENT)
    data.preload(progress=False)
    assert len(calls) == len(train_samples)
    for epoch in range(3):
        data.set_epoch(epoch)
        _ = [data[i] for i in range(len(data))]
    assert len(calls) == len(train_samples)
    assert data.resized_image(0).shape == (28, 35, 3)
    uncached = TrainingImages(train_samples, GEOMETRY, cache=False)
    _ = uncached[0], uncached[0]
    assert len(calls) == len(train_samples) + 2


def test_augmentation_depends_only_on_seed_epoch_and_index(train_samples):
    first = TrainingImages(train_samples, GEOMETRY, AUGMENT, seed=1)
    resumed = TrainingImages(train_samples, GEOMETRY, AUGMENT, seed=1)
    first.set_epoch(4)
    resumed.set_epoch(4)
    order = [3, 0, 2, 1]  # reading order does not matter
    epoch4 = {i: first[i] for i in range(4)}
    for i in order:
        torch.testing.assert_close(resumed[i], epoch4[i], rtol=0, atol=0)
    first.set_epoch(5)
    assert not torch.equal(first[0], epoch4[0])
    other_seed = TrainingImages(train_samples, GEOMETRY, AUGMENT, seed=2)
    other_seed.set_epoch(4)
    assert not torch.equal(other_seed[0], epoch4[0])


def test_works_with_a_dataloader(train_samples):
    data = TrainingImages(train_samples, GEOMETRY, AUGMENT)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)))
    assert batch.shape == (4, 3, 28, 28)


# ------------------------------------------------------------------------------ tiled training

TILING = Tiling((64, 64), overlap=0.25)
TILE_GEOMETRY = InputGeometry((32, 32))  # tile 64 -> input 32: the cache is at half scale
SHAPES = [(150, 130), (40, 130)]  # the second is shorter than a tile: whole height, stretched


def _smooth_samples(folder: Path) -> list[Sample]:
    """Smooth random images (bicubically upsampled noise), so that regions are distinguishable."""
    rng = np.random.default_rng(0)
    samples = []
    for index, (height, width) in enumerate(SHAPES):
        coarse = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        path = folder / f"{index:03d}_regular.png"
        write_png(path, image)
        relpath = PurePosixPath(f"train/good/{path.stem}")
        samples.append(Sample(path, "tiles", "train", relpath, 0, "regular", None, height, width))
    return samples


def test_tiles_are_cached_at_the_tile_scale(tmp_path):
    data = TrainingImages(_smooth_samples(tmp_path), TILE_GEOMETRY, tiling=TILING)
    assert data.cache_size(150, 130) == (75, 65)  # scale 32 / 64
    assert data.cache_size(40, 130) == (32, 65)  # the single tile along the height is stretched
    assert data.resized_image(0).shape == (75, 65, 3)
    assert TrainingImages([], TILE_GEOMETRY).cache_size(150, 130) == (32, 32)


def test_a_tile_item_is_the_direct_crop_and_resize_of_its_region(tmp_path):
    """Up to the cache's pixel grid (here 2 original px): exact at a shift of at most 1 px."""
    samples = _smooth_samples(tmp_path)
    data = TrainingImages(samples, TILE_GEOMETRY, tiling=TILING, seed=5)

    def error(item: torch.Tensor, image: np.ndarray, box: tuple[int, int, int, int]) -> float:
        y0, x0, y1, x1 = box
        if y0 < 0 or x0 < 0 or y1 > image.shape[0] or x1 > image.shape[1]:
            return np.inf
        return (item - TILE_GEOMETRY.to_tensor(image[y0:y1, x0:x1])).abs().mean().item()

    for epoch in range(3):
        data.set_epoch(epoch)
        for index, sample in enumerate(samples):
            image, item = sample.load_image(), data[index]
            assert item.shape == (3, 32, 32)
            y0, x0, y1, x1 = TILING.random_tile(
                *sample.shape, np.random.default_rng([5, epoch, index])
            )
            near = [
                error(item, image, (y0 + dy, x0 + dx, y1 + dy, x1 + dx))
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            ]
            assert min(near) < 1e-6
            far = [
                error(item, image, (y0 + dy, x0 + dx, y1 + dy, x1 + dx))
                for dy, dx in ((4, 0), (-4, 0), (0, 4), (0, -4))
            ]
            assert min(far) > 0.1  # 4 px off: clearly another region (~6 grey levels)


def test_tiles_depend_only_on_seed_epoch_and_index(tmp_path):
    samples = _smooth_samples(tmp_path)
    first = TrainingImages(samples, TILE_GEOMETRY, AUGMENT, seed=1, tiling=TILING)
    again = TrainingImages(samples, TILE_GEOMETRY, AUGMENT, seed=1, tiling=TILING, cache=False)
    first.set_epoch(3)
    again.set_epoch(3)
    for index in (1, 0):
        torch.testing.assert_close(again[index], first[index], rtol=0, atol=0)
    boxes = {first.tile(0, np.random.default_rng([1, epoch, 0]))[0] for epoch in range(5)}
    assert len(boxes) > 1  # other epochs, other tiles


def test_grid_pyramid_items_are_their_cells_resized(tmp_path):
    """ISVL hybrid pyramid (original + 2 x 2): each item is one cell of one grid, resized."""
    samples = _smooth_samples(tmp_path)[:1]  # 150 x 130
    grid = GridTiling([2, 2], pyramid=[[1, 1], [2, 2]])
    data = TrainingImages(samples, TILE_GEOMETRY, tiling=grid, seed=3)
    assert data.cache_size(150, 130) == (64, 64)  # the finest cell (2 x 2) at 32 x 32
    image = samples[0].load_image()
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        box = grid.random_tile(150, 130, np.random.default_rng([3, epoch, 0]))
        seen.add(box)
        y0, x0, y1, x1 = box
        direct = TILE_GEOMETRY.to_tensor(image[y0:y1, x0:x1])
        assert (data[0] - direct).abs().mean().item() < 0.05  # same region, cached at 64 x 64
    assert (0, 0, 150, 130) in seen and len(seen) >= 3


def test_every_tile_epochs_hold_each_pyramid_tile_once(tmp_path):
    """train_tiles=all (ISVL hybrid code: an epoch is every tile file of every image): the items
    are each image's training tiles in order, whatever the epoch."""
    samples = _smooth_samples(tmp_path)[:2]
    grid = GridTiling([2, 2], pyramid=[[2, 1], [2, 2]])
    data = TrainingImages(samples, TILE_GEOMETRY, tiling=grid, every_tile=True)
    boxes = [(i, box) for i, s in enumerate(samples) for box in grid.training_tiles(*s.shape)]
    assert len(data) == len(boxes) == 12
    for epoch in (0, 5):
        data.set_epoch(epoch)
        for item, (index, (y0, x0, y1, x1)) in enumerate(boxes):
            direct = TILE_GEOMETRY.to_tensor(samples[index].load_image()[y0:y1, x0:x1])
            assert (data[item] - direct).abs().mean().item() < 0.05
    assert len(TrainingImages(samples, TILE_GEOMETRY, tiling=grid)) == 2  # one random tile each
