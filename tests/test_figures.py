"""Figures: labelled overlays (titles, score and verdict, colour bar, legend, size), PRO plot,
the one overlay colour scale and the score histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filterformer.evaluation.aupro import au_pro
from filterformer.evaluation.figures import (
    COLOUR_MULTIPLE,
    PANEL_HEIGHT_PX,
    colour_scale,
    image_verdict,
    overlay_figure,
    pro_curve_figure,
    save_figure,
    score_histogram_figure,
)

H, W = 60, 80  # small and non-square: panels are upscaled to a readable height


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An image, a map peaking at 0.9 in a square, its binary map at 0.5 and the GT square."""
    image = np.full((H, W, 3), 120, dtype=np.uint8)
    amap = np.full((H, W), 0.1, dtype=np.float32)
    amap[20:40, 30:50] = 0.9
    gt = np.zeros((H, W), dtype=bool)
    gt[22:42, 28:48] = True
    return image, amap, amap > 0.5, gt


def _legend_labels(figure) -> list[str]:
    return [
        text.get_text() for ax in figure.axes if ax.get_legend() for text in ax.get_legend().texts
    ]


def test_overlay_has_titled_panels_score_verdict_colour_bar_and_legend() -> None:
    image, amap, binary, gt = _example()
    figure = overlay_figure(image, amap, binary, gt, (0.0, 1.0), threshold=0.5, name="bad/007")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:3] == ["image", "anomaly map", "prediction vs ground truth"]
    title = figure.get_suptitle()
    assert "bad/007" in title and "anomalous" in title and "0.9" in title and "0.5" in title
    assert _legend_labels(figure) == ["prediction", "ground truth"]
    colour_bar = figure.axes[3]  # the fourth axis is the colour bar of the map, 0 ... 1
    assert "anomaly score" in colour_bar.get_ylabel()
    assert colour_bar.get_ylim() == pytest.approx((0.0, 1.0))
    width_px, height_px = figure.get_size_inches() * figure.dpi
    assert PANEL_HEIGHT_PX >= 400
    for ax in figure.axes[:3]:  # readable height, the image's aspect ratio (not stretched)
        box = ax.get_position()
        assert box.height * height_px == pytest.approx(PANEL_HEIGHT_PX)
        assert box.width * width_px / (box.height * height_px) == pytest.approx(W / H)


@pytest.mark.parametrize(
    ("threshold", "verdict"), [(0.95, "normal"), (0.5, "anomalous"), (None, None)]
)
def test_verdict_is_the_max_score_against_the_threshold(threshold, verdict) -> None:
    image, amap, binary, _ = _example()
    assert image_verdict(float(amap.max()), threshold) == verdict
    title = overlay_figure(image, amap, binary, None, (0.0, 1.0), threshold).get_suptitle()
    assert (verdict or "no threshold") in title


def test_without_ground_truth_only_the_prediction_is_drawn() -> None:
    image, amap, binary, _ = _example()
    figure = overlay_figure(image, amap, binary, None, (0.0, 1.0), threshold=0.5)
    assert figure.axes[2].get_title() == "prediction"
    assert _legend_labels(figure) == ["prediction"]


def test_saved_overlay_is_the_figure_at_a_readable_size(tmp_path: Path) -> None:
    image, amap, binary, gt = _example()
    figure = overlay_figure(image, amap, binary, gt, (0.0, 1.0), threshold=0.5)
    save_figure(tmp_path / "o.png", figure)
    width, height = Image.open(tmp_path / "o.png").size
    expected = np.round(figure.get_size_inches() * figure.dpi).astype(int)
    assert (width, height) == tuple(expected)
    assert height > PANEL_HEIGHT_PX and width > 3 * PANEL_HEIGHT_PX * W / H


def test_pro_plot_shows_the_chance_line_and_the_integration_limit() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.random((32, 32)) for _ in range(3)]
    gts = [np.zeros((32, 32), dtype=bool) for _ in range(3)]
    gts[0][4:12, 4:12] = True
    maps[0][4:12, 4:12] += 0.5
    result = au_pro(maps, gts, limits=(0.05,))
    ax = pro_curve_figure(result, 0.05, "demo").axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    chance = ax.get_lines()[labels.index(next(lb for lb in labels if lb.startswith("chance")))]
    x, y = chance.get_data()
    np.testing.assert_allclose(x, y)  # a random map: PRO = FPR
    assert "AU-PRO@0.05 = 0.0250" in chance.get_label()  # its AU-PRO is half the limit
    limit = next(line for line in ax.get_lines() if "integration limit" in line.get_label())
    assert set(limit.get_xdata()) == {0.05}
    assert ax.get_xlim()[1] > 0.05  # the limit lies inside the plot, not on its edge
    curve = next(line for line in ax.get_lines() if line.get_label().startswith("PRO curve"))
    assert f"{result.au_pro[0.05]:.4f}" in curve.get_label()  # the value as a fraction
    assert f"{100 * result.au_pro[0.05]:.2f} %" in curve.get_label()  # and in percent


def test_one_colour_scale_puts_the_threshold_in_the_middle_and_starts_at_the_offset() -> None:
    assert colour_scale(0.2, 0.5) == pytest.approx((0.2, 0.2 + COLOUR_MULTIPLE * 0.3))
    low, high = colour_scale(-1.5, 0.5)  # fused maps may be negative: the offset is the floor
    assert low == -1.5 and (0.5 - low) / (high - low) == pytest.approx(1 / COLOUR_MULTIPLE)
    assert colour_scale(0.2, None, 0.9) == (0.2, 0.9)  # no threshold: the validation range
    assert colour_scale(0.2, 0.1, 0.9) == (0.2, 0.9)  # a threshold below the offset too
    low, high = colour_scale(0.3, None, None)
    assert low == 0.3 and high > low


def test_score_histogram_shows_good_defective_and_validation_and_the_threshold() -> None:
    groups = {
        "good images": [0.1, 0.2, 0.25],
        "defective images": [0.5, 0.7],
        "images (unlabelled)": [],
        "validation images (normal)": [0.15, 0.2],
    }
    figure = score_histogram_figure(groups, 0.4, "bottles", "threshold 0.4")
    (ax,) = figure.axes
    labels = [text.get_text() for text in ax.get_legend().texts]
    assert labels == [
        "good images (3)",
        "defective images (2)",
        "validation images (normal) (2)",
        "threshold 0.4",
    ]  # the empty group is left out
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [0.4, 0.4]
    heights = [sum(p.get_height() for p in c) for c in ax.containers]
    assert heights == [3, 2, 2]
