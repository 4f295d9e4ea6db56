"""Figures for people: PRO curves, score histograms, and labelled overlays of one image.

Both are built as matplotlib figures (no pyplot state, so they are safe in any process and
easy to inspect in tests) and saved as PNG with :func:`save_figure`. Data stay in fractions
and original score units; only labels meant for reading show percent.

Contours are drawn in colours that show on any image: prediction cyan, ground truth magenta,
each with a black outline.

**One colour scale for every overlay** (ff-eval, ff-predict, ff-demo; :func:`colour_scale`):
the map's colours run from the run's offset, the lowest score of its validation images (the
value the float16 TIFFs call 0), to that offset plus :data:`COLOUR_MULTIPLE` times the
threshold's height above it. The threshold therefore always sits at the same place on the
colour bar (its middle), every image of a run is coloured alike, and scores above the top or
below the offset are clipped to the end colours (never shown as negative).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patheffects import withStroke

from filterformer.evaluation.aupro import ProResult
from filterformer.io import write_png

PREDICTION_COLOUR = "cyan"
GROUND_TRUTH_COLOUR = "magenta"
OUTLINE = [withStroke(linewidth=4.5, foreground="black")]
"""A dark outline around contour lines, so that light and dark images alike show them."""
HEAT_CMAP = "inferno"
HEAT_ALPHA = 0.55
"""Opacity of the coloured map over the image in the middle panel."""
COLOUR_MULTIPLE = 2.0
"""The top of the overlay colour scale: the offset plus this many times (threshold - offset)."""
HISTOGRAM_BINS = 30
HISTOGRAM_COLOURS = {"good": "tab:green", "defective": "tab:red", "validation": "tab:grey"}
"""Histogram colours by the first word of a group's name (other groups: blue)."""
FIGURE_PNG_COMPRESSION = 1
"""zlib level of figure PNGs: a fifth of the write time of OpenCV's default, files ~20 % larger."""
PANEL_HEIGHT_PX = 450
"""Height of each overlay panel: detail stays readable on small images (upscaled)."""
DPI = 100


def figure_array(figure: Figure) -> np.ndarray:
    """Render ``figure`` as an H x W x 3 uint8 RGB array."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, :3])


def save_figure(path: str | os.PathLike, figure: Figure) -> None:
    """Render ``figure`` and write it as an RGB PNG (atomically)."""
    write_png(path, figure_array(figure), compression=FIGURE_PNG_COMPRESSION)


def pro_curve_figure(result: ProResult, limit: float, title: str) -> Figure:
    """The PRO curve up to twice the integration limit, with the chance line and the limit.

    A random map flags defect and normal pixels alike, so its PRO equals the FPR (the
    diagonal); its AU-PRO is ``limit / 2``. The area that AU-PRO integrates is shaded.
    """
    figure = Figure(figsize=(6, 4.5), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    value = result.au_pro.get(limit, float("nan"))
    x_max = min(1.0, 2 * limit)
    ax.plot(
        result.fpr,
        result.pro,
        color="tab:blue",
        label=f"PRO curve: AU-PRO@{limit:g} = {value:.4f} ({100 * value:.2f} %)",
    )
    inside = result.fpr <= limit
    ax.fill_between(result.fpr[inside], result.pro[inside], color="tab:blue", alpha=0.15)
    ax.plot(
        [0, x_max],
        [0, x_max],
        color="grey",
        linestyle="--",
        label=f"chance (random map): PRO = FPR, AU-PRO@{limit:g} = {limit / 2:.4f}",
    )
    ax.axvline(limit, color="black", linestyle=":", label=f"integration limit FPR = {limit:g}")
    ax.set(
        xlim=(0, x_max),
        ylim=(0, 1.01),
        xlabel="false positive rate (fraction of normal pixels flagged)",
        ylabel="PRO (mean fraction of each defect region found)",
        title=title,
    )
    ax.legend(loc="upper left", fontsize="small")
    return figure


def plot_pro_curve(path: str | os.PathLike, result: ProResult, limit: float, title: str) -> None:
    """PNG of :func:`pro_curve_figure`."""
    save_figure(path, pro_curve_figure(result, limit, title))


def colour_scale(
    offset: float, threshold: float | None, high: float | None = None
) -> tuple[float, float]:
    """The overlay colour range (low, high) in score units (module docstring).

    ``offset``: the run's lowest validation score; without a threshold (or one at or below
    the offset) the range ends at ``high`` (e.g. the highest validation score) instead.
    """
    if threshold is not None and threshold > offset:
        return offset, offset + COLOUR_MULTIPLE * (threshold - offset)
    top = offset if high is None else max(high, offset)
    return offset, top if top > offset else offset + 1e-12


def score_histogram_figure(
    groups: Mapping[str, Sequence[float]],
    threshold: float | None,
    title: str,
    threshold_label: str = "threshold",
) -> Figure:
    """Histograms of image scores per group on shared bins, with the threshold as a line.

    ``groups``: e.g. ``{"good test images": [...], "defective test images": [...],
    "validation images (normal)": [...]}``; empty groups are left out. The picture to set a
    threshold by: the line should separate the defective images from the good ones.
    """
    figure = Figure(figsize=(7, 4.2), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    values = [float(v) for scores in groups.values() for v in scores]
    values += [] if threshold is None else [float(threshold)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)
    for name, scores in groups.items():
        if len(scores):
            colour = HISTOGRAM_COLOURS.get(name.split()[0], "tab:blue")
            label = f"{name} ({len(scores)})"
            ax.hist(np.asarray(scores, float), bins, alpha=0.55, color=colour, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=threshold_label)
    ax.set(xlabel="image score (max of the anomaly map)", ylabel="images", title=title)
    ax.legend(loc="upper right", fontsize="small")
    return figure


def write_score_histogram(
    path: str | os.PathLike,
    scores: Sequence[float],
    labels: Sequence[int | None],
    threshold: float | None,
    title: str,
    validation: Sequence[float] = (),
    threshold_label: str = "threshold",
) -> None:
    """PNG of :func:`score_histogram_figure`: images split by label (0 good, 1 defective,
    None unlabelled), plus the validation images' scores."""
    named = {0: "good images", 1: "defective images", None: "images (unlabelled)"}
    groups: dict[str, list[float]] = {name: [] for name in named.values()}
    for score, label in zip(scores, labels, strict=True):
        groups[named[label]].append(float(score))
    groups["validation images (normal, not trained on)"] = [float(v) for v in validation]
    figure = score_histogram_figure(groups, threshold, title, threshold_label)
    save_figure(path, figure)


def training_curves_figure(
    steps: Sequence[Mapping[str, float]],
    evaluations: Sequence[Mapping[str, Any]],
    metric: str,
    title: str,
) -> Figure:
    """Three panels over training: every loss per step, the learning rate, and the selection
    ``metric`` per fusion mode at each evaluation (by epoch).

    ``steps``: train_log.csv rows (``step``, ``epoch``, ``lr``, the losses); ``evaluations``:
    eval_log.csv rows (``epoch``, ``mode``, the metrics).
    """
    figure = Figure(figsize=(7, 8), dpi=DPI, layout="constrained")
    losses_ax, lr_ax, metric_ax = figure.subplots(3, 1)
    step = [float(row["step"]) for row in steps]
    names = [k for k in (steps[0] if steps else {}) if k not in ("step", "epoch", "lr")]
    for name in names:
        losses_ax.plot(step, [float(row[name]) for row in steps], label=name, linewidth=1)
    losses_ax.set(xlabel="step", ylabel="loss", title=title)
    if names and all(float(row[n]) > 0 for row in steps for n in names):
        losses_ax.set_yscale("log")
    if names:
        losses_ax.legend(loc="upper right", fontsize="small")
    lr_ax.plot(step, [float(row["lr"]) for row in steps], color="tab:purple")
    lr_ax.set(xlabel="step", ylabel="learning rate")
    modes = list(dict.fromkeys(str(row["mode"]) for row in evaluations))
    for mode in modes:
        rows = [row for row in evaluations if str(row["mode"]) == mode]
        epochs = [float(row["epoch"]) for row in rows]
        values = [100 * float(row[metric]) for row in rows]
        metric_ax.plot(epochs, values, marker="o", label=f"fusion mode {mode}")
    metric_ax.set(xlabel="epoch", ylabel=f"{metric} [%] (selection)")
    if modes:
        metric_ax.legend(loc="lower right", fontsize="small")
    else:
        metric_ax.text(
            0.5,
            0.5,
            "no evaluation during training (eval.every=0, or no split with defects)",
            ha="center",
            va="center",
            transform=metric_ax.transAxes,
        )
    return figure


def image_verdict(score: float, threshold: float | None) -> str | None:
    """``anomalous`` when the image score is above the pixel threshold, else ``normal``.

    The image score is the max of the map, so the verdict is anomalous exactly when the
    thresholded map (``score > threshold``, before post-processing) has a positive pixel.
    None without a threshold.
    """
    if threshold is None:
        return None
    return "anomalous" if score > threshold else "normal"


def verdict_title(name: str, score: float, threshold: float | None) -> str:
    """Figure title: the image, its score and, with a threshold, the verdict."""
    verdict = image_verdict(score, threshold)
    if verdict is None:
        return f"{name}: image score {score:.4g} (max of the map; no threshold)"
    sign = ">" if verdict == "anomalous" else "<="
    return f"{name}: {verdict} (image score {score:.4g} {sign} threshold {threshold:.4g})"


def _contour_lines(mask: np.ndarray, colour: str) -> LineCollection:
    """Outer boundaries of the regions of a bool mask, in the mask's pixel coordinates."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    segments = [np.vstack([c[:, 0], c[:1, 0]]).astype(float) for c in found]
    lines = LineCollection(segments, colors=colour, linewidths=2)
    lines.set_path_effects(OUTLINE)
    return lines


def _legend_handles(binary: np.ndarray | None, gt: np.ndarray | None) -> list[Line2D]:
    """Legend entries for the contours shown (also when a mask has no region)."""
    entries = [(binary, PREDICTION_COLOUR, "prediction"), (gt, GROUND_TRUTH_COLOUR, "ground truth")]
    return [
        Line2D([], [], color=colour, linewidth=2, path_effects=OUTLINE, label=label)
        for mask, colour, label in entries
        if mask is not None
    ]


def _overlay_axes(figure: Figure, width: float, height: float) -> list[Axes]:
    """Three image axes of ``width`` x ``height`` px and a colour-bar axis after the second.

    A fixed layout (no layout engine): each panel box has the image's aspect ratio, so the
    colour bar is exactly as tall as the map, and drawing is fast.
    """
    margin, gap, bar, bar_labels = 15, 20, 18, 85
    bottom, top = 40, 75  # legend below; panel titles and figure title above
    size = (
        2 * margin + 3 * width + 2 * gap + bar + bar_labels,
        bottom + height + top,
    )
    figure.set_size_inches(size[0] / DPI, size[1] / DPI)
    lefts = [margin, margin + width + gap, margin + 2 * width + 2 * gap + bar + bar_labels]
    boxes = [(left, bottom, width, height) for left in lefts]
    boxes.append((lefts[1] + width + gap / 2, bottom, bar, height))
    return [
        figure.add_axes((x / size[0], y / size[1], w / size[0], h / size[1]))
        for x, y, w, h in boxes
    ]


def _resized(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``array`` at the panel's pixel size (w, h): drawing a few hundred pixels instead of
    megapixels is what keeps an overlay fast (scripts/bench_overlays.py). Masks stay bool."""
    if array.shape[1::-1] == size:
        return array
    if array.dtype == bool:
        small = cv2.resize(array.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        return small > 0
    shrink = size[1] < array.shape[0]
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def overlay_figure(
    image: np.ndarray,
    amap: np.ndarray,
    binary: np.ndarray | None,
    gt: np.ndarray | None,
    score_range: tuple[float, float],
    threshold: float | None = None,
    name: str = "image",
) -> Figure:
    """Three titled panels: the image, its anomaly map (colour bar) and prediction vs truth.

    ``score_range`` fixes the colour scale, so that the overlays of one category compare;
    ``threshold`` (original score units) is marked on the colour bar and gives the verdict
    in the figure title. ``binary`` (the final binary map) and ``gt`` may each be None.
    """
    height, width = image.shape[:2]
    figure = Figure(dpi=DPI)
    *axes, bar_axis = _overlay_axes(figure, PANEL_HEIGHT_PX * width / height, PANEL_HEIGHT_PX)
    low, high = score_range
    norm = Normalize(vmin=low, vmax=max(high, low + 1e-12))
    size = (max(1, round(PANEL_HEIGHT_PX * width / height)), PANEL_HEIGHT_PX)  # (w, h) shown
    shown = _resized(image, size)
    heat = colormaps[HEAT_CMAP](norm(_resized(np.asarray(amap, np.float32), size)))[..., :3]
    blended = (1 - HEAT_ALPHA) * shown / 255.0 + HEAT_ALPHA * heat  # the map over the image
    panels = (shown, blended, shown)
    for ax, title, panel in zip(axes, ("image", "anomaly map", "prediction"), panels, strict=True):
        ax.imshow(panel, aspect="auto", interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    binary, gt = (None if m is None else _resized(m, size) for m in (binary, gt))
    colour_bar = figure.colorbar(ScalarMappable(norm=norm, cmap=HEAT_CMAP), cax=bar_axis)
    colour_bar.set_label("anomaly score")
    if threshold is not None and low <= threshold <= high:
        bar_axis.axhline(threshold, color=PREDICTION_COLOUR, linewidth=2, path_effects=OUTLINE)
        colour_bar.set_label("anomaly score (line: threshold)")
    for mask, colour in ((gt, GROUND_TRUTH_COLOUR), (binary, PREDICTION_COLOUR)):
        if mask is not None:
            axes[2].add_collection(_contour_lines(mask, colour), autolim=False)
    if gt is not None:
        axes[2].set_title("prediction vs ground truth")
    handles = _legend_handles(binary, gt)
    if handles:
        axes[2].legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=len(handles),
            frameon=False,
        )
    title_y = 1 - 12 / (figure.get_size_inches()[1] * DPI)  # 12 px below the top edge
    figure.suptitle(verdict_title(name, float(np.max(amap)), threshold), y=title_y, va="top")
    return figure


def write_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    amap: np.ndarray,
    binary: np.ndarray | None,
    gt: np.ndarray | None,
    score_range: Sequence[float],
    threshold: float | None = None,
    name: str = "image",
) -> None:
    """PNG of :func:`overlay_figure`."""
    low, high = score_range
    save_figure(path, overlay_figure(image, amap, binary, gt, (low, high), threshold, name))
