"""CPR's training pairs: packed layout, retrieved references, determinism, sampling weights."""

from __future__ import annotations

import numpy as np
import torch

from filterformer.data.pseudo_defects import PseudoDefects, PseudoDefectSettings
from filterformer.data.transforms import InputGeometry
from filterformer.models.cpr.model import unpack_pairs
from filterformer.models.cpr.pairs import PairNoise, RetrievalPairs, sampling_weight

SIZE = (32, 40)


def pairs(foreground: np.ndarray | None = None, noise: float = 0.0) -> RetrievalPairs:
    rng = np.random.default_rng(0)
    images = [rng.integers(40, 200, (*SIZE, 3), dtype=np.uint8) for _ in range(5)]
    neighbours = np.array([[1, 2], [0, 2], [3, 4], [2, 4], [3, 0]])
    defects = PseudoDefects(PseudoDefectSettings(anomaly_probability=1.0))
    return RetrievalPairs(
        images,
        neighbours,
        InputGeometry(SIZE),
        defects,
        foreground=foreground,
        length=12,
        seed=4,
        noise=PairNoise(probability=noise),
    )


def test_items_pack_a_defect_its_mask_and_a_neighbour() -> None:
    dataset = pairs()
    geometry = dataset.geometry
    for index in range(12):
        image, reference, mask, weight = unpack_pairs(dataset[index][None])
        source = index % 5
        step = dataset.epoch * dataset.length + index
        expected, expected_mask = dataset.defects(dataset.images[source], 4, step)
        assert torch.allclose(image[0], geometry.normalize(expected))
        assert torch.equal(mask[0], torch.from_numpy(expected_mask)) and mask.any()
        assert any(
            torch.allclose(reference[0], geometry.normalize(dataset.images[n]))
            for n in dataset.neighbours[source]
        )
        assert torch.equal(weight[0], torch.ones(SIZE))  # no foreground: uniform positives


def test_items_are_a_function_of_seed_epoch_and_index() -> None:
    first, second = pairs(noise=0.3), pairs(noise=0.3)
    second.set_epoch(0)
    assert torch.equal(first[7], second[7]) and torch.equal(first[3], second[3])
    second.set_epoch(1)
    assert not torch.equal(first[7], second[7])
    first.set_epoch(1)
    assert torch.equal(first[7], second[7])


def test_noise_changes_pixels_outside_the_defect() -> None:
    noisy = pairs(noise=1.0)
    _, reference, _, _ = unpack_pairs(noisy[0][None])
    clean_reference = [noisy.geometry.normalize(noisy.images[n]) for n in noisy.neighbours[0]]
    assert not any(torch.allclose(reference[0], r) for r in clean_reference)


def test_sampling_weight_follows_the_foreground() -> None:
    foreground = np.zeros((5, 8, 10), dtype=np.float32)
    foreground[:, 2:6, 3:7] = 1.0
    weight = sampling_weight(foreground[0], SIZE)
    assert weight.shape == SIZE and 0 <= weight.min() and weight.max() <= 1
    assert weight[16, 20] > 0.9 and weight[0, 0] < 0.05  # sharpened: near 1 inside, 0 outside
    _, _, _, packed = unpack_pairs(pairs(foreground)[0][None])
    assert torch.allclose(packed[0], torch.from_numpy(weight))  # max of two equal maps
