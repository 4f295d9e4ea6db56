"""Pseudo-defects: exact masks, determinism from (seed, step), foreground, crops, bad inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from filterformer.data.perlin import perlin_noise
from filterformer.data.pseudo_defects import (
    KINDS,
    PseudoDefects,
    PseudoDefectSettings,
    load_defect_crops,
    shuffle_cells,
)
from filterformer.errors import ConfigError, DataError

SIZE = (96, 128)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A smooth colour gradient with mild noise (no saturated pixels)."""
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    base = np.stack([60 + xs, 80 + ys, 120 + 0 * xs], axis=2).astype(np.float64)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 20 x 14 RGBA crop: a pure-magenta ellipse (alpha 255) on transparent black."""
    rgba = np.zeros((20, 14, 4), dtype=np.uint8)
    cv2.ellipse(rgba, (7, 10), (6, 9), 0, 0, 360, (255, 0, 255, 255), -1)
    return rgba


def generator(kind: str, crop: np.ndarray, **settings: object) -> PseudoDefects:
    return PseudoDefects(
        PseudoDefectSettings(kinds={kind: 1.0}, anomaly_probability=1.0, **settings), crops=[crop]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_mask_marks_exactly_the_changed_pixels(kind: str, image: np.ndarray, crop) -> None:
    gen = generator(kind, crop)
    for step in range(6):
        out, mask = gen(image, seed=3, step=step)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert mask.dtype == bool and mask.shape == SIZE
        assert mask.any(), f"{kind} step {step}: no defect drawn"
        assert np.array_equal(mask, (out != image).any(axis=2))
        assert np.array_equal(out[~mask], image[~mask])


@pytest.mark.parametrize("kind", KINDS)
def test_items_are_a_function_of_seed_and_step(kind: str, image: np.ndarray, crop) -> None:
    gen = generator(kind, crop)
    first = [gen(image, seed=1, step=s) for s in (4, 9)]
    again = [gen(image, seed=1, step=s) for s in (9, 4)][::-1]  # other order, other instance
    fresh = generator(kind, crop)
    for (out_a, mask_a), (out_b, mask_b) in zip(first, again, strict=True):
        assert np.array_equal(out_a, out_b) and np.array_equal(mask_a, mask_b)
    assert np.array_equal(fresh(image, seed=1, step=4)[0], first[0][0])
    assert not np.array_equal(first[0][1], first[1][1]), "two steps gave the same mask"
    assert not np.array_equal(gen(image, seed=2, step=4)[1], first[0][1]), "seed is ignored"


def test_normal_items_and_the_anomaly_probability(image: np.ndarray) -> None:
    never = PseudoDefects(PseudoDefectSettings(anomaly_probability=0.0))
    out, mask = never(image, seed=0, step=0)
    assert np.array_equal(out, image) and not mask.any()
    default = PseudoDefects()  # CPR: 90 % of the items get a defect
    made = [default(image, seed=0, step=s)[1].any() for s in range(60)]
    assert 0.75 <= np.mean(made) <= 1.0 and not all(made)


def test_defects_stay_on_the_foreground(image: np.ndarray, crop: np.ndarray) -> None:
    foreground = np.zeros(SIZE, dtype=np.float32)
    foreground[30:70, 40:100] = 1.0
    for kind in KINDS:
        gen = generator(kind, crop)
        for step in range(5):
            _, mask = gen(image, seed=5, step=step, foreground=foreground)
            assert mask.any()
            if kind.startswith("perlin"):  # CPR keeps whole Perlin parts that touch the object
                count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
                for part in range(1, count):
                    assert (foreground[labels == part] > 0.5).any(), f"{kind}: part off the object"
            else:
                assert not (mask & (foreground <= 0.5)).any(), f"{kind} painted off the object"


def test_cut_paste_writes_the_crop_colours(image: np.ndarray, crop: np.ndarray) -> None:
    out, mask = generator("cut_paste", crop, crop_scale=(0.2, 0.3))(image, seed=0, step=1)
    assert mask.sum() >= 30
    assert np.all(out[mask] == (255, 0, 255))  # nearest-neighbour: only the crop's own colour


def test_perlin_noise_range_and_scale() -> None:
    coarse = perlin_noise((64, 64), (2.0, 2.0), np.random.default_rng(0))
    fine = perlin_noise((64, 64), (16.0, 16.0), np.random.default_rng(0), angle=30)
    for noise in (coarse, fine):
        assert noise.shape == (64, 64) and noise.dtype == np.float32
        assert np.abs(noise).max() <= 1.0 and noise.std() > 0.1

    def sign_changes(field: np.ndarray) -> int:
        return int((np.diff(np.sign(field), axis=1) != 0).sum())

    assert sign_changes(fine) > 4 * sign_changes(coarse)  # more lattice cells, finer blobs


def test_shuffle_cells_is_a_permutation_of_cells() -> None:
    cells = np.arange(16, dtype=np.uint8).reshape(4, 4).repeat(8, 0).repeat(8, 1)
    image = np.repeat(cells[:, :, None], 3, axis=2)
    out = shuffle_cells(image, 4, np.random.default_rng(0))
    blocks = out[::8, ::8, 0]
    assert sorted(blocks.ravel()) == list(range(16)) and not np.array_equal(blocks, cells[::8, ::8])
    assert np.array_equal(out, blocks.repeat(8, 0).repeat(8, 1)[:, :, None].repeat(3, 2))


def test_bad_settings_and_crop_folders(tmp_path, image: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="crops"):
        PseudoDefects(PseudoDefectSettings(kinds={"cut_paste": 1.0}))
    with pytest.raises(ConfigError, match="unknown pseudo-defect kind"):
        PseudoDefectSettings(kinds={"perlin": 1.0})
    with pytest.raises(DataError, match="does not exist"):
        load_defect_crops(tmp_path / "missing")
    with pytest.raises(DataError, match="holds no images"):
        load_defect_crops(tmp_path)
    cv2.imwrite(str(tmp_path / "rgb.png"), image)
    with pytest.raises(DataError, match="rgb.png.*alpha"):
        load_defect_crops(tmp_path)
    with pytest.raises(DataError, match="uint8"):
        PseudoDefects()(image.astype(np.float32), seed=0, step=0)


def test_crops_load_as_rgba(tmp_path, crop: np.ndarray) -> None:
    (tmp_path / "scratches").mkdir()
    cv2.imwrite(str(tmp_path / "scratches" / "a.png"), cv2.cvtColor(crop, cv2.COLOR_RGBA2BGRA))
    loaded = load_defect_crops(tmp_path)
    assert len(loaded) == 1 and np.array_equal(loaded[0], crop)
