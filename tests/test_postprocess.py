"""Post-processing of binary maps: closing, hole filling, erosion (ISVL hybrid, VAND 3.0)."""

from __future__ import annotations

import numpy as np
import pytest

from filterformer.errors import ConfigError
from filterformer.inference.postprocess import postprocess


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


@pytest.mark.parametrize("kwargs", [{"closing": 4}, {"erosion": -1}])
def test_even_or_negative_kernels_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="odd"):
        postprocess(np.zeros((5, 5), bool), **kwargs)
