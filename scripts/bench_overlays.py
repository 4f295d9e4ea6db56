"""Time one labelled overlay (figures.write_overlay) per image size: what ff-predict --images
and ff-eval spend per image besides inference. Prints milliseconds per overlay.

    python scripts/bench_overlays.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from filterformer.evaluation.figures import write_overlay

SIZES = ((240, 300), (1024, 1224), (2048, 2448))
"""A small photo, an MVTec AD 2 image, a large one (H, W)."""


def one_overlay(folder: Path, shape: tuple[int, int], index: int) -> float:
    """Seconds to write one overlay of a random image with a smooth map, its prediction and a
    GT square."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    amap = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), shape[0] / 40)
    amap = (amap - amap.min()) / (amap.max() - amap.min())  # a smooth map: a few regions
    gt = np.zeros(shape, dtype=bool)
    gt[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = True
    started = time.perf_counter()
    write_overlay(folder / f"{index}.png", image, amap, amap > 0.9, gt, (0.0, 1.0), 0.5, "x")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one_overlay(Path(tmp), SIZES[0], 0)  # warm-up: fonts and caches
        for shape in SIZES:
            times = [one_overlay(Path(tmp), shape, i) for i in range(args.repeats)]
            print(f"{shape[0]} x {shape[1]}: {1000 * float(np.median(times)):.0f} ms per overlay")


if __name__ == "__main__":
    main()
