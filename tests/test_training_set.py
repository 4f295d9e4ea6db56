"""TrainingImages: cached decoding at training size, augmentation seeded per epoch and item."""

from __future__ import annotations

import pytest
import torch

from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.sample import Sample
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry, TrainAugment

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
