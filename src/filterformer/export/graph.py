"""The map path of a run as one torch module, and its trace into an ONNX file.

:class:`MapGraph` is what an export traces: normalised B x 3 x h x w network inputs ->
(``maps`` B x h x w, ``scores`` B). The maps are those ff-predict computes before it maps them
back to the original size: the model's maps fused by the run's mode (its validation
statistics become constants of the graph), smoothed, at network-input resolution. The scores
are the run's image score (``max``, or ``top1``: the mean of the top 1 %) of those maps.
Cutting the graph there keeps every step that depends on the image size (resize, letterbox,
crop, tiles, the way back) outside it: one graph serves images of any size, and export.json
says how to do those steps.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from filterformer.errors import DeployError
from filterformer.evaluation.image_metrics import TOP_FRACTION
from filterformer.inference.predict import Smoothing, network_maps
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.registry import families, family

INPUT_NAME = "images"
OUTPUT_NAMES = ("maps", "scores")
EXAMPLE_BATCH = 2
"""Batch of the example input; 2, because the exporter would specialise a batch of 1."""
MAX_GRID = 1024
"""Largest token grid side of a --dynamic-size export (14,336 px with patch 14)."""


def top_count(pixels: int) -> int:
    """How many pixels the ``top1`` image score averages: floor(1 % of them), at least one.

    Integer arithmetic (equal to ``int(pixels * TOP_FRACTION)`` of
    :func:`~filterformer.evaluation.image_metrics.top_fraction_mean`), so that a graph with a
    dynamic input size computes it from the size instead of freezing the example's count.
    """
    return torch.sym_max(1, pixels // round(1 / TOP_FRACTION))


def image_scores(maps: torch.Tensor, rule: str) -> torch.Tensor:
    """B image scores of B x h x w maps: their max, or the mean of their top 1 % (``top1``)."""
    flat = maps.flatten(1)
    if rule == "max":
        return flat.amax(dim=1)
    return flat.topk(top_count(flat.shape[1]), dim=1).values.mean(dim=1)


class MapGraph(nn.Module):
    """A run's whole map path: normalised network inputs -> (maps, image scores)."""

    def __init__(
        self,
        model: FrozenEncoderModel,
        mode: str,
        map_stats: Mapping[str, tuple[float, float]] | None,
        smoothing: Smoothing,
        image_score: str,
    ) -> None:
        super().__init__()
        if image_score not in ("max", "top1"):
            raise DeployError(
                f"ff-export computes the image scores max and top1, not eval.image_score "
                f"{image_score!r}; score this run with ff-predict --backend torch"
            )
        self.model = model.eval()
        self.mode = mode
        self.map_stats = None if map_stats is None else dict(map_stats)
        self.smoothing = smoothing
        self.image_score = image_score

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = network_maps(self.model, images, self.mode, self.map_stats, self.smoothing)
        return maps, image_scores(maps, self.image_score)


def exportable_families() -> list[str]:
    """Families whose whole map path has been exported and checked against torch."""
    return sorted(name for name, plugin in families().items() if plugin.exportable)


def check_exportable(model_name: str) -> None:
    """Refuse model families whose map path has not been checked as an exported graph."""
    if not family(model_name).exportable:
        raise DeployError(
            f"ff-export supports the {', '.join(exportable_families())} models; model "
            f"{model_name!r} has no exportable map path yet. Use ff-predict --backend torch."
        )


def export_onnx(
    graph: MapGraph, input_size: tuple[int, int], path: Path, *, dynamic_size: bool = False
) -> None:
    """Trace ``graph`` (torch.export) and write it as an ONNX file at ``path``.

    The batch is always dynamic. With ``dynamic_size`` the height and width are too (any
    multiples of the patch size); otherwise the graph is for ``input_size`` only, and the
    encoder's resampled position table is a constant of it.
    """
    encoder = graph.model.encoder
    patch = encoder.patch_size
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1)}
    fixed: contextlib.AbstractContextManager = encoder.fixed_positions(
        encoder.grid_size(input_size)
    )
    if dynamic_size:
        dims[2] = patch * torch.export.Dim("grid_h", min=1, max=MAX_GRID)
        dims[3] = patch * torch.export.Dim("grid_w", min=1, max=MAX_GRID)
        fixed = contextlib.nullcontext()
    example = torch.zeros(EXAMPLE_BATCH, 3, *input_size)
    graph.eval()
    # the exporter prints its progress to stdout; a failure still raises
    with fixed, torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: dims},
            dynamo=True,
            verbose=False,
        )
        program.save(str(path))
