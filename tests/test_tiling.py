"""Sliding-window tiling: coverage, border alignment, overlap and blending."""

import numpy as np
import pytest

from filterformer.data.tiling import GridTiling, Tiling
from filterformer.errors import ConfigError


def _coverage(boxes, height, width):
    count = np.zeros((height, width), dtype=int)
    for y0, x0, y1, x1 in boxes:
        count[y0:y1, x0:x1] += 1
    return count


@pytest.mark.parametrize("size", [(100, 100), (101, 257), (37, 40), (64, 300), (1, 1)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 7])
def test_tiles_cover_every_pixel_and_stay_inside(size, overlap):
    tiling = Tiling((32, 40), overlap=overlap)
    boxes = tiling.tiles(*size)
    assert _coverage(boxes, *size).min() >= 1
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= size[0] and 0 <= x0 < x1 <= size[1]
        assert (y1 - y0, x1 - x0) == (min(32, size[0]), min(40, size[1]))


def test_grid_positions_with_last_tile_on_the_border():
    # 100 px with 40 px tiles and 10 px overlap: stride 30 -> starts 0, 30, then 60 (= 100 - 40).
    tiling = Tiling((40, 40), overlap=10)
    assert tiling.stride == (30, 30)
    ys = sorted({b[0] for b in tiling.tiles(100, 40)})
    assert ys == [0, 30, 60]
    assert tiling.tiles(100, 40)[-1] == (60, 0, 100, 40)


def test_fractional_overlap_is_rounded_to_pixels():
    assert Tiling((64, 30), overlap=0.25).stride == (48, 22)  # 16 px and round(7.5) = 8 px


def test_neighbouring_tiles_overlap_by_at_least_the_requested_amount():
    boxes = Tiling((50, 50), overlap=0.2).tiles(50, 233)
    xs = [b[1] for b in boxes]
    ends = [b[3] for b in boxes]
    overlaps = [ends[i] - xs[i + 1] for i in range(len(xs) - 1)]
    assert min(overlaps) >= 10
    assert ends[-1] == 233


def test_image_smaller_than_tile_is_one_whole_image_tile():
    assert Tiling((512, 512), overlap=0.5).tiles(300, 200) == [(0, 0, 300, 200)]


def test_single_tile_blend_returns_the_tile_map_exactly():
    rng = np.random.default_rng(0)
    tile_map = rng.normal(size=(30, 20)).astype(np.float32)
    for window in ("hann", "uniform"):
        tiling = Tiling((30, 20), overlap=0.5, window=window)
        assert tiling.tiles(30, 20) == [(0, 0, 30, 20)]
        out = tiling.blend([tile_map], 30, 20)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, tile_map)


@pytest.mark.parametrize("window", ["hann", "uniform"])
def test_constant_maps_blend_to_the_same_constant(window):
    tiling = Tiling((16, 24), overlap=0.4, window=window)
    boxes = tiling.tiles(57, 91)
    value = np.float32(0.1234567)
    maps = [np.full((y1 - y0, x1 - x0), value, np.float32) for y0, x0, y1, x1 in boxes]
    out = tiling.blend(maps, 57, 91)
    assert (out == value).all()


def test_uniform_window_averages_overlapping_tiles():
    tiling = Tiling((4, 4), overlap=2, window="uniform")
    boxes = tiling.tiles(4, 6)
    assert boxes == [(0, 0, 4, 4), (0, 2, 4, 6)]
    out = tiling.blend([np.zeros((4, 4)), np.ones((4, 4))], 4, 6)
    np.testing.assert_array_equal(out[0], [0, 0, 0.5, 0.5, 1, 1])


def test_hann_blend_is_a_convex_combination_and_favours_the_tile_centre():
    tiling = Tiling((8, 8), overlap=4, window="hann")
    boxes = tiling.tiles(8, 12)
    assert boxes == [(0, 0, 8, 8), (0, 4, 8, 12)]
    out = tiling.blend([np.zeros((8, 8)), np.ones((8, 8))], 8, 12)
    assert out.min() >= 0 and out.max() <= 1
    row = out[3]
    assert (np.diff(row) >= 0).all()  # fades from tile 1 to tile 2
    assert row[4] < 0.5 < row[7]  # x=4 is tile 2's edge, x=7 is closer to its centre


def test_blend_rejects_wrong_number_or_shape_of_maps():
    tiling = Tiling((4, 4), overlap=2)
    with pytest.raises(ConfigError, match="2 tiles"):
        tiling.blend([np.zeros((4, 4))], 4, 6)
    with pytest.raises(ConfigError, match="needs a 4x4 map"):
        tiling.blend([np.zeros((4, 4)), np.zeros((3, 4))], 4, 6)


def test_random_tile_lies_inside_and_has_tile_size():
    tiling = Tiling((10, 20), overlap=0)
    rng = np.random.default_rng(1)
    for _ in range(50):
        y0, x0, y1, x1 = tiling.random_tile(25, 33, rng)
        assert 0 <= y0 and y1 <= 25 and 0 <= x0 and x1 <= 33
        assert (y1 - y0, x1 - x0) == (10, 20)
    assert tiling.random_tile(5, 8, rng) == (0, 0, 5, 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile": (0, 4)},
        {"tile": (4, 4), "overlap": 1.0},
        {"tile": (4, 4), "overlap": 4},
        {"tile": (4, 4), "overlap": -1},
        {"tile": (4, 4), "window": "gauss"},
    ],
)
def test_bad_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        Tiling(**kwargs)


# ------------------------------------------------------------ ISVL hybrid grids (non-overlapping)


def test_grid_gives_the_remainder_to_the_last_row_and_column():
    """A 7 x 10 image cut into 3 cols x 2 rows: columns 3, 3, 4 wide; rows 3, 4 high."""
    assert GridTiling([3, 2]).tiles(7, 10) == [
        (0, 0, 3, 3),
        (0, 3, 3, 6),
        (0, 6, 3, 10),
        (3, 0, 7, 3),
        (3, 3, 7, 6),
        (3, 6, 7, 10),
    ]


def test_grid_paste_back_is_the_exact_inverse_of_cutting():
    image = np.arange(7 * 10, dtype=np.float32).reshape(7, 10)
    grid = GridTiling([3, 2])
    tiles = [image[y0:y1, x0:x1] for y0, x0, y1, x1 in grid.tiles(7, 10)]
    np.testing.assert_array_equal(grid.blend(tiles, 7, 10), image)


def test_grid_1x1_is_the_whole_image():
    assert GridTiling([1, 1]).tiles(5, 9) == [(0, 0, 5, 9)]


def test_pyramid_training_tiles_come_from_every_grid_equally_per_tile():
    """Original + 2 x 2: 5 crops, each drawn about a fifth of the time."""
    grid = GridTiling([2, 2], pyramid=[[1, 1], [2, 2]])
    rng = np.random.default_rng(0)
    draws = [grid.random_tile(8, 8, rng) for _ in range(2000)]
    expected = {(0, 0, 8, 8), (0, 0, 4, 4), (0, 4, 4, 8), (4, 0, 8, 4), (4, 4, 8, 8)}
    assert set(draws) == expected
    assert all(250 < draws.count(box) < 550 for box in expected)
    assert grid.tiles(8, 8) == GridTiling([2, 2]).tiles(8, 8)  # the pyramid is for training only


@pytest.mark.parametrize(
    ("grid", "shape", "match"),
    [([0, 2], (8, 8), "integers >= 1"), ([2], (8, 8), r"\[cols, rows\]"), ([9, 1], (8, 8), "8x8")],
)
def test_bad_grids_are_refused(grid, shape, match):
    with pytest.raises(ConfigError, match=match):
        GridTiling(grid).tiles(*shape)


def test_grid_paste_rejects_wrong_tile_maps():
    grid = GridTiling([2, 1])
    with pytest.raises(ConfigError, match="has 2 tiles"):
        grid.blend([np.zeros((4, 2))], 4, 4)
    with pytest.raises(ConfigError, match="needs a 4x2 map"):
        grid.blend([np.zeros((4, 2)), np.zeros((2, 2))], 4, 4)


def _isvl_cuts(length: int, parts: int) -> list[tuple[int, int]]:
    """The ISVL hybrid code's split of one axis (1_image_splitter.py): parts of length // parts
    pixels, the last one to the end of the axis."""
    step = length // parts
    return [(i * step, length if i == parts - 1 else (i + 1) * step) for i in range(parts)]


def _isvl_grid(height: int, width: int, cols: int, rows: int) -> list[tuple[int, int, int, int]]:
    return [
        (y0, x0, y1, x1)
        for y0, y1 in _isvl_cuts(height, rows)
        for x0, x1 in _isvl_cuts(width, cols)
    ]


@pytest.mark.parametrize(
    ("category", "grid", "pyramid", "shape"),
    [  # the code's test grids and training pyramids; odd sizes exercise the remainder
        ("can", [4, 2], [[2, 1], [4, 2]], (1025, 2234)),
        ("fabric", [2, 2], [[1, 1], [2, 2]], (2048, 2449)),
        ("rice", [4, 4], [[1, 1], [2, 2], [4, 4]], (2047, 2448)),
        ("sheet_metal", [8, 2], [[1, 1], [4, 1], [8, 2]], (1057, 4227)),
        ("walnuts", [2, 2], [[1, 1], [2, 2]], (2048, 2448)),
    ],
)
def test_grids_are_the_isvl_code_s_tiles(category, grid, pyramid, shape):
    """Test tiles: the code's grid; training tiles: every grid of the pyramid, where the code's
    long-edge split of a wide image into n strips is the grid n x 1 (and can has no 1 x 1)."""
    tiling = GridTiling(grid, pyramid)
    assert tiling.tiles(*shape) == _isvl_grid(*shape, *grid)
    expected = [box for cols, rows in pyramid for box in _isvl_grid(*shape, cols, rows)]
    assert tiling.training_tiles(*shape) == expected
    assert ((0, 0, *shape) in expected) == (category != "can")


def test_window_training_tiles_are_its_tiles():
    tiling = Tiling((40, 40), overlap=10)
    assert tiling.training_tiles(100, 70) == tiling.tiles(100, 70)
