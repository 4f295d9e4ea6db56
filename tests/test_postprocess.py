"""Post-processing of binary maps (ISVL hybrid §3.1.1 and code): each op on a hand-made example."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from filterformer.errors import ConfigError
from filterformer.inference.postprocess import (
    for_sample,
    hsv_foreground,
    postprocess,
    settings_for_split,
)


def test_all_steps_off_is_the_identity() -> None:
    mask = np.random.default_rng(0).random((20, 30)) > 0.7
    out = postprocess(mask)
    assert out.dtype == bool and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


def test_closing_bridges_a_one_pixel_gap() -> None:
    mask = np.zeros((11, 11), bool)
    mask[4:7, 2:5] = mask[4:7, 6:9] = True  # two squares, column 5 empty
    out = postprocess(mask, closing=3)
    assert out[5, 5]
    np.testing.assert_array_equal(out[mask], True)  # closing never removes pixels


def test_fill_holes_fills_the_inside_of_a_ring_only() -> None:
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    mask[3:6, 3:6] = False
    out = postprocess(mask, fill_holes=True)
    assert out[2:7, 2:7].all() and out.sum() == 25


def test_erosion_shrinks_a_square_by_the_kernel_radius() -> None:
    mask = np.zeros((12, 12), bool)
    mask[2:9, 2:9] = True
    out = postprocess(mask, erosion=3)
    np.testing.assert_array_equal(np.argwhere(out).min(0), [3, 3])
    np.testing.assert_array_equal(np.argwhere(out).max(0), [7, 7])


def test_defects_touching_the_border_are_kept() -> None:
    mask = np.zeros((8, 8), bool)
    mask[:, :3] = True
    np.testing.assert_array_equal(postprocess(mask, closing=5), mask)
    assert postprocess(mask, erosion=3)[:, 0].all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"closing": 4}, "odd"),
        ({"erosion": -1}, ">= 0"),
        ({"kernel": "disk"}, "ellipse, rect"),
        ({"fill_guard": 0.0}, "fill_guard"),
        ({"foreground": 15}, "needs the image"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        postprocess(np.zeros((5, 5), bool), **kwargs)


def test_rect_kernels_may_be_even_and_erode_exactly_their_size() -> None:
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True  # 8 x 8
    out = postprocess(mask, erosion=4, kernel="rect")
    assert out.sum() == 5 * 5  # an even rect removes 2 rows above/left and 1 below/right


def test_closing_and_filling_that_whiten_the_image_keep_the_raw_mask() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True  # a frame: its hole is 64 %
    np.testing.assert_array_equal(postprocess(mask, fill_holes=True), mask)  # 100 % > 95 %
    assert postprocess(mask, fill_holes=True, fill_guard=1.0).all()


def test_guard_does_not_undo_erosion() -> None:
    mask = np.ones((9, 9), bool)
    out = postprocess(mask, closing=3, erosion=3)  # closing keeps 100 %: reverted to raw, eroded
    assert out.all()  # the border counts as foreground: erosion of a full mask is full


def _walnut_image() -> np.ndarray:
    """A dark tray (value 20) with one bright brown nut in rows/cols 4..11."""
    image = np.full((16, 16, 3), 20, np.uint8)
    image[4:12, 4:12] = (170, 120, 60)
    return image


def test_hsv_foreground_is_the_brighter_cluster_dilated() -> None:
    fg = hsv_foreground(_walnut_image(), dilation=0)
    assert fg[4:12, 4:12].all() and fg.sum() == 64
    grown = hsv_foreground(_walnut_image(), dilation=3)
    assert grown[3:13, 3:13].all() and grown.sum() == 100


def test_foreground_mask_removes_detections_on_the_background() -> None:
    mask = np.zeros((16, 16), bool)
    mask[0:2, 0:2] = mask[6:8, 6:8] = True  # one on the tray, one on the nut
    out = postprocess(mask, foreground=1, image=_walnut_image())
    assert out[6:8, 6:8].all() and out.sum() == 4


def test_split_overrides_apply_to_their_split_only() -> None:
    settings = {"closing": 11, "fill_holes": True, "kernel": "rect"}
    settings["splits"] = {"test_private_mixed": {"foreground": 15}}
    assert settings_for_split(settings, "test_private") == {
        "closing": 11,
        "fill_holes": True,
        "kernel": "rect",
    }
    assert settings_for_split(settings, "test_private_mixed")["foreground"] == 15


def test_for_sample_loads_the_image_only_when_needed() -> None:
    loads: list[int] = []

    def load() -> np.ndarray:
        loads.append(1)
        return _walnut_image()

    settings = {"erosion": 0, "splits": {"test_private_mixed": {"foreground": 1}}}
    assert for_sample(settings, "test_private", load) is None and not loads
    step = for_sample(settings, "test_private_mixed", load)
    assert step is not None and loads == [1]
    assert step(np.ones((16, 16), bool)).sum() == 64  # the nut, dilated by a 1 x 1 square


def _isvl_reference(binary: np.ndarray, closing: int) -> np.ndarray:
    """The ISVL hybrid code's fabric / walnut rule, written out with OpenCV: a rect closing,
    a flood fill of the closed mask from pixel (0, 0) (4-connected), everything the flood did
    not reach added to the closed mask, and the mask before all this kept when the result is
    more than 95 % white."""
    closed = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((closing, closing), np.uint8))
    flooded = closed.copy()
    cv2.floodFill(
        flooded, np.zeros((binary.shape[0] + 2, binary.shape[1] + 2), np.uint8), (0, 0), 1
    )
    filled = closed | (1 - flooded)
    return (binary if filled.mean() > 0.95 else filled).astype(bool)


def _blobs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((60, 80), np.uint8)
    for _ in range(6):
        centre = (int(rng.integers(0, 80)), int(rng.integers(0, 60)))
        cv2.circle(mask, centre, int(rng.integers(3, 12)), 1, int(rng.choice([1, 2, -1])))
    return mask


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("closing", [4, 10])
def test_corner_fill_is_the_isvl_code_s_rule(seed: int, closing: int) -> None:
    mask = _blobs(seed)
    out = postprocess(mask, closing=closing, fill_holes="corner", kernel="rect")
    np.testing.assert_array_equal(out, _isvl_reference(mask, closing))


def test_corner_fill_fills_what_a_band_cuts_off_and_border_fill_does_not() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, 4:6] = True  # a band across the image: the right part is no hole
    corner = postprocess(mask, fill_holes="corner")
    assert corner[:, 4:].all() and not corner[:, :4].any()  # 60 %: under the guard
    np.testing.assert_array_equal(postprocess(mask, fill_holes="border"), mask)
    np.testing.assert_array_equal(postprocess(mask, fill_holes=True), mask)  # true = border


def test_corner_fill_whitens_a_mask_on_pixel_0_0_and_the_guard_keeps_the_raw_mask() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0:3, 0:3] = True
    np.testing.assert_array_equal(postprocess(mask, fill_holes="corner"), mask)  # 100 % > 95 %
    assert postprocess(mask, fill_holes="corner", fill_guard=1.0).all()
    np.testing.assert_array_equal(postprocess(mask, fill_holes="border"), mask)


def test_an_unknown_fill_is_refused() -> None:
    with pytest.raises(ConfigError, match="fill_holes='flood'.*border, corner"):
        postprocess(np.ones((4, 4), bool), fill_holes="flood")


def test_hsv_foreground_is_the_isvl_code_s_2_means() -> None:
    """scikit-learn's KMeans(n_clusters=2, random_state=0) on (hue, value) as the code runs
    it (n_init 10, scikit-learn 1.3's default), the darker cluster as background, dilated
    by a 15 x 15 square."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    image = _walnut_image().repeat(4, 0).repeat(4, 1).astype(np.int16)
    image = np.clip(image + rng.integers(-25, 26, image.shape), 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., [0, 2]].reshape(-1, 2).astype(float)
    labels = KMeans(n_clusters=2, random_state=0, n_init=10).fit(hsv).labels_
    dark = int(np.argmin([hsv[labels == k, 1].mean() for k in range(2)]))
    expected = cv2.dilate((labels != dark).reshape(64, 64).astype(np.uint8), np.ones((15, 15)))
    np.testing.assert_array_equal(hsv_foreground(image, 15), expected.astype(bool))
