"""Sliding-window tiles with overlap, and smooth blending of per-tile maps.

MVTec AD 2 images are several megapixels and defects can be a few pixels wide, so large
images are scored tile by tile (as RoBiS does with INP-Former) and the tile maps are blended
back with a window that fades towards each tile's border, hiding seams. The same tile grid
gives random training crops.

Tiles are placed at a fixed stride from the top-left corner; the last tile of each row and
column is aligned to the image border instead of being padded, so every tile lies inside the
image. Along an axis shorter than the tile, the single tile is the whole axis (the caller
resizes it to the network input).

:class:`GridTiling` is the ISVL hybrid's tiling (§3.2.1 and code): ``cols x rows`` equal,
non-overlapping tiles, the remainder of each axis given to the last row / column, maps pasted
back without blending; at training time a pyramid of several grids (the original is 1 x 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from filterformer.errors import ConfigError

Box = tuple[int, int, int, int]
"""A tile as (y0, x0, y1, x1): rows y0..y1-1 and columns x0..x1-1 of the image."""

Window = Literal["hann", "uniform"]
WINDOWS: tuple[str, ...] = ("hann", "uniform")


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets along one axis: a regular grid, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _window_1d(length: int, window: str) -> np.ndarray:
    """Strictly positive 1-D blending weights for a tile side of ``length`` pixels.

    ``hann`` samples sin^2 at pixel centres, (i + 0.5) / length, so the weights taper
    towards both ends but never reach zero: every pixel of every tile keeps some weight.
    """
    if window == "uniform":
        return np.ones(length, dtype=np.float64)
    centres = (np.arange(length, dtype=np.float64) + 0.5) / length
    return np.sin(np.pi * centres) ** 2


def checked_tiles(
    boxes: Sequence[Box], tile_maps: Sequence[np.ndarray]
) -> list[tuple[Box, np.ndarray]]:
    """(box, map) pairs, refusing a wrong number of maps or a map not of its tile's size."""
    if len(tile_maps) != len(boxes):
        raise ConfigError(
            f"tiling: got {len(tile_maps)} tile maps for an image that has {len(boxes)} tiles; "
            "pass one map per entry of tiles(height, width)."
        )
    pairs = []
    for (y0, x0, y1, x1), tile_map in zip(boxes, tile_maps, strict=True):
        tile_map = np.asarray(tile_map)
        if tile_map.shape != (y1 - y0, x1 - x0):
            raise ConfigError(
                f"tiling: tile ({y0}, {x0}, {y1}, {x1}) needs a {y1 - y0}x{x1 - x0} map, "
                f"got shape {tile_map.shape}; resize each tile map to its tile first."
            )
        pairs.append(((y0, x0, y1, x1), tile_map))
    return pairs


class Tiling:
    """A sliding-window tile grid of ``tile`` = (height, width) pixels.

    ``overlap`` is either a fraction of the tile side in [0, 1) (a float) or a number of
    pixels smaller than the tile side (an int); neighbouring tiles overlap by at least that
    much (more where the last tile is pulled back to the border).
    """

    def __init__(
        self, tile: tuple[int, int], overlap: float | int = 0.25, window: Window = "hann"
    ) -> None:
        th, tw = (int(v) for v in tile)
        if th < 1 or tw < 1:
            raise ConfigError(f"tiling: tile size {tile} must be positive (height, width).")
        if window not in WINDOWS:
            raise ConfigError(f"tiling: unknown window {window!r}; choose one of {WINDOWS}.")
        self.tile = (th, tw)
        self.window = window
        self.overlap = overlap
        self.stride = (self._stride(th, overlap), self._stride(tw, overlap))

    @staticmethod
    def _stride(side: int, overlap: float | int) -> int:
        if isinstance(overlap, bool) or not isinstance(overlap, int | float):
            raise ConfigError(f"tiling: overlap {overlap!r} must be a fraction or a pixel count.")
        if isinstance(overlap, float):
            if not 0.0 <= overlap < 1.0:
                raise ConfigError(
                    f"tiling: overlap fraction {overlap} must lie in [0, 1); e.g. 0.25."
                )
            pixels = int(round(overlap * side))
        else:
            pixels = overlap
        if not 0 <= pixels < side:
            raise ConfigError(
                f"tiling: overlap of {pixels} px must be >= 0 and smaller than the tile side "
                f"{side} px."
            )
        return side - pixels

    def __repr__(self) -> str:
        return f"Tiling(tile={self.tile}, overlap={self.overlap!r}, window={self.window!r})"

    def record(self) -> dict:
        """The settings as JSON (for manifests)."""
        return {"tile": list(self.tile), "overlap": self.overlap, "window": self.window}

    def tiles(self, height: int, width: int) -> list[Box]:
        """All tiles of an H x W image, row by row; together they cover every pixel."""
        if height < 1 or width < 1:
            raise ConfigError(f"tiling: image size {height}x{width} must be positive.")
        th, tw = min(self.tile[0], height), min(self.tile[1], width)
        return [
            (y0, x0, y0 + th, x0 + tw)
            for y0 in _starts(height, self.tile[0], self.stride[0])
            for x0 in _starts(width, self.tile[1], self.stride[1])
        ]

    def training_tiles(self, height: int, width: int) -> list[Box]:
        """Every training crop of an H x W image (``train_tiles: all``): its tiles."""
        return self.tiles(height, width)

    def random_tile(self, height: int, width: int, rng: np.random.Generator) -> Box:
        """One tile at a uniformly random position inside the image (for training crops)."""
        th, tw = min(self.tile[0], height), min(self.tile[1], width)
        y0 = int(rng.integers(0, height - th + 1))
        x0 = int(rng.integers(0, width - tw + 1))
        return (y0, x0, y0 + th, x0 + tw)

    def blend(self, tile_maps: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
        """Blend per-tile maps (in the order of :meth:`tiles`) into one H x W float32 map.

        Each pixel is the window-weighted mean of the tiles covering it. Weights are strictly
        positive, so every pixel is defined; a pixel seen by one tile only gets that tile's
        value unchanged, and a constant map stays that constant. Sums run in float64.
        """
        total = np.zeros((height, width), dtype=np.float64)
        weight = np.zeros((height, width), dtype=np.float64)
        for (y0, x0, y1, x1), tile_map in checked_tiles(self.tiles(height, width), tile_maps):
            w = np.outer(_window_1d(y1 - y0, self.window), _window_1d(x1 - x0, self.window))
            total[y0:y1, x0:x1] += w * tile_map
            weight[y0:y1, x0:x1] += w
        return (total / weight).astype(np.float32)


Grid = tuple[int, int]
"""A grid as (cols, rows)."""


def _cuts(length: int, parts: int) -> list[int]:
    """Edges of ``parts`` equal segments of ``length``; the last takes the remainder."""
    step = length // parts
    return [i * step for i in range(parts)] + [length]


def _check_grid(grid: Sequence[int]) -> Grid:
    if len(grid) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in grid):
        raise ConfigError(f"tiling: grid {list(grid)} must be [cols, rows], integers >= 1.")
    return int(grid[0]), int(grid[1])


class GridTiling:
    """Non-overlapping ``cols x rows`` tiles pasted back (ISVL hybrid §3.2.1 and code).

    ``pyramid``: the grids training crops are drawn from (default: ``grid`` only); each tile of
    every grid is equally likely, as when every tile is one training image (ISVL hybrid code).
    """

    window = "paste"

    def __init__(self, grid: Sequence[int], pyramid: Sequence[Sequence[int]] | None = None) -> None:
        self.grid = _check_grid(grid)
        self.pyramid = [_check_grid(g) for g in (pyramid or [self.grid])]

    def __repr__(self) -> str:
        return f"GridTiling(grid={list(self.grid)}, pyramid={[list(g) for g in self.pyramid]})"

    def record(self) -> dict:
        """The settings as JSON (for manifests)."""
        return {"grid": list(self.grid), "pyramid": [list(g) for g in self.pyramid]}

    @staticmethod
    def grid_tiles(height: int, width: int, grid: Grid) -> list[Box]:
        """The tiles of one ``(cols, rows)`` grid of an H x W image, row by row."""
        cols, rows = grid
        if height < rows or width < cols:
            raise ConfigError(
                f"tiling: a {height}x{width} image cannot be cut into {cols} cols x {rows} rows; "
                "use a coarser category.tiling.grid."
            )
        ys, xs = _cuts(height, rows), _cuts(width, cols)
        return [(ys[r], xs[c], ys[r + 1], xs[c + 1]) for r in range(rows) for c in range(cols)]

    def tiles(self, height: int, width: int) -> list[Box]:
        """The test-time tiles (``grid``) of an H x W image; they partition its pixels."""
        return self.grid_tiles(height, width, self.grid)

    def training_tiles(self, height: int, width: int) -> list[Box]:
        """Every tile of every pyramid grid, grid by grid: the training crops of an image (the
        ISVL hybrid code writes each as a training image)."""
        return [b for g in self.pyramid for b in self.grid_tiles(height, width, g)]

    def random_tile(self, height: int, width: int, rng: np.random.Generator) -> Box:
        """One tile of one pyramid grid, uniformly among all their tiles (training crops)."""
        boxes = self.training_tiles(height, width)
        return boxes[int(rng.integers(len(boxes)))]

    def max_cells(self) -> Grid:
        """The largest (cols, rows) counts of the pyramid: its finest cell per axis."""
        return max(g[0] for g in self.pyramid), max(g[1] for g in self.pyramid)

    def blend(self, tile_maps: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
        """Paste per-tile maps (in the order of :meth:`tiles`) into one H x W float32 map."""
        out = np.empty((height, width), dtype=np.float32)
        for (y0, x0, y1, x1), tile_map in checked_tiles(self.tiles(height, width), tile_maps):
            out[y0:y1, x0:x1] = tile_map
        return out


AnyTiling = Tiling | GridTiling
"""Either tiling: both give ``tiles``, ``training_tiles``, ``random_tile``, ``blend`` and
``record``."""

TRAIN_TILES = ("random", "all")
"""What one training epoch sees of a tiled image: one random tile (ours) or every training
tile once (``all``: the ISVL hybrid code, whose epoch is every tile file of every image)."""


def tiling_from_record(record: dict | None) -> AnyTiling | None:
    """The tiling whose :meth:`~Tiling.record` is ``record`` (None: no tiling)."""
    if record is None:
        return None
    if "grid" in record:
        return GridTiling(record["grid"], record.get("pyramid"))
    return Tiling(tuple(record["tile"]), record["overlap"], record["window"])
