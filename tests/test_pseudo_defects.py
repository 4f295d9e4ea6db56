"""Pseudo-defects: exact masks, determinism from (seed, step), foreground, crops, bad inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from filterformer.data.perlin import perlin_noise
from filterformer.data.pseudo_defects import (
    KINDS,
    CutPaste,
    PseudoDefects,
    PseudoDefectSettings,
    blend_crop,
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
    settings.setdefault("paste", {"blend": "hard"})  # ours: exact masks
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
    cv2.imwrite(str(tmp_path / "loose.png"), cv2.cvtColor(crop, cv2.COLOR_RGBA2BGRA))
    loaded = load_defect_crops(tmp_path)
    assert sorted(loaded) == ["", "scratches"]  # by first-level folder ("": loose files)
    assert len(loaded["scratches"]) == 1 and np.array_equal(loaded["scratches"][0], crop)


ISVL_PASTE = {"canvas": None, "blend": "foreground", "label_level": 0.45, "anchor_level": 0.8}


def _soft_foreground() -> np.ndarray:
    """1 inside, 0.6 on a ring, 0.3 on a wider ring, 0 outside (around the image centre)."""
    ys, xs = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    radius = np.hypot(ys - 48, xs - 64)
    return np.select([radius < 14, radius < 20, radius < 26], [1.0, 0.6, 0.3], 0.0)


def test_isvl_blend_is_the_code_s_compositing(image: np.ndarray) -> None:
    """ISVL hybrid code (overlay_patch_on_image): the crop's top-left corner at the anchor minus
    half its size (floor division), x' = fg a p + (1 - fg a) x truncated to uint8 with a the
    binarised alpha, label a (fg > 0.45)."""
    crop = np.zeros((31, 25, 4), np.uint8)
    crop[..., :3] = (250, 10, 130)
    crop[3:28, 2:23, 3] = np.random.default_rng(0).integers(0, 3, (25, 21)) * 100  # alpha 0/100/200
    fg = _soft_foreground()
    for seed in range(5):
        out, label = blend_crop(image, crop, np.random.default_rng(seed), fg, 0.45, 0.8)
        ys, xs = np.nonzero(fg >= 0.8)  # the anchor: the same draw as the engine's
        pick = int(np.random.default_rng(seed).integers(len(ys)))
        top, left = ys[pick] - 31 // 2, xs[pick] - 25 // 2
        alpha = np.zeros(SIZE)
        alpha[top : top + 31, left : left + 25] = crop[..., 3] > 0
        weight = (alpha * fg)[..., None]
        expected = (weight * (250, 10, 130) + (1 - weight) * image).astype(np.uint8)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(label, (alpha > 0) & (fg > 0.45))
        assert not (label & (fg < 0.5)).any() and (out[(alpha > 0) & (fg == 0.3)] != 130).any()


def test_isvl_blend_places_nothing_that_does_not_fit(image: np.ndarray) -> None:
    big = np.full((SIZE[0] + 1, 10, 4), 255, np.uint8)
    out, label = blend_crop(image, big, np.random.default_rng(0), None, 0.45, 0.8)
    assert out is image and not label.any()  # larger than the image: no defect
    small = np.full((5, 5, 4), 255, np.uint8)
    out, label = blend_crop(image, small, np.random.default_rng(0), np.zeros(SIZE), 0.45, 0.8)
    assert out is image and not label.any()  # no foreground >= 0.8 to centre it on


def test_isvl_scales_are_per_folder_fractions_of_the_crop_s_own_size(image: np.ndarray) -> None:
    """ISVL hybrid code: width and height x s, s ~ U(lo, hi) of the crop's folder, at a 640 px
    canvas (our 96 px image: x 96 / 640), rotated 0-360 with the canvas expanded."""
    square = np.full((200, 200, 4), 255, np.uint8)
    paste = {**ISVL_PASTE, "scales": {"hair": [0.5, 0.5], "tube": [1.0, 1.0]}, "canvas": 640}
    crops = {"hair": [square], "tube": [square]}
    settings = PseudoDefectSettings(kinds={"cut_paste": 1.0}, anomaly_probability=1.0, paste=paste)
    fg = np.full(SIZE, 0.79)  # labelled everywhere (> 0.45), anchors (>= 0.8) off the border
    fg[25:72, 25:104] = 1.0
    areas = {0.5: [], 1.0: []}
    for step in range(40):
        _, mask = PseudoDefects(settings, crops=crops)(image, seed=0, step=step, foreground=fg)
        side = 200 * 96 / 640  # 30 px at s = 1: a rotated 30 px square covers 900 px
        area = mask.sum()
        areas[0.5 if area < 0.6 * side**2 else 1.0].append(area)
    assert min(areas[0.5]) >= 0.85 * 15**2 and max(areas[0.5]) <= 1.2 * 15**2
    assert min(areas[1.0]) >= 0.85 * 30**2 and max(areas[1.0]) <= 1.2 * 30**2
    assert len(areas[0.5]) >= 10 and len(areas[1.0]) >= 10  # folders equally likely


def test_a_crop_folder_without_a_scale_is_refused(crop: np.ndarray) -> None:
    settings = PseudoDefectSettings(
        kinds={"cut_paste": 1.0}, paste={"scales": {"hair": [0.1, 0.2]}}
    )
    with pytest.raises(ConfigError, match=r"\['screw'\] have no scale"):
        PseudoDefects(settings, crops={"hair": [crop], "screw": [crop]})
    with pytest.raises(ConfigError, match="blend 'soft'"):
        CutPaste(blend="soft")
