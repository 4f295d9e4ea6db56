"""The end of every exported map path, and the trace of one graph into an ONNX file.

A family's :class:`~filterformer.models.export_plan.ExportPlan` ends with :class:`MapFinish`:
the model's raw maps fused by the run's mode (its validation statistics become constants of
the graph), smoothed, at network-input resolution, and the run's image score (``max``, or
``top1``: the mean of the top 1 %) of those maps. Cutting the graphs there keeps every step
that depends on the image size (resize, letterbox, crop, tiles, the way back) outside them:
one export serves images of any size, and export.json says how to do those steps.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from filterformer.errors import DeployError
from filterformer.evaluation.image_metrics import TOP_FRACTION, parse_sum_top
from filterformer.inference.predict import Smoothing, finish_maps
from filterformer.models.encoder import DinoEncoder
from filterformer.models.export_plan import IMAGES, Graph
from filterformer.models.family import ModelFamily
from filterformer.models.registry import families, family

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
    """B image scores of B x h x w maps: their max, the mean of their top 1 % (``top1``), or
    the sum of their T largest values (``sum_top<T>[@<H>x<W>]``, as
    :func:`~filterformer.evaluation.image_metrics.top_sum`; a fixed map size)."""
    flat = maps.flatten(1)
    if rule == "max":
        return flat.amax(dim=1)
    if rule == "top1":
        return flat.topk(top_count(flat.shape[1]), dim=1).values.mean(dim=1)
    count, reference = parse_sum_top(rule)
    pixels = int(flat.shape[1])
    scale = 1.0 if reference is None else reference / pixels
    k = min(pixels, max(1, round(count / scale)))
    return flat.topk(k, dim=1).values.sum(dim=1) * scale


class MapFinish(nn.Module):
    """Raw maps (name -> B x h x w) -> the run's (maps, image scores), as ff-predict makes them."""

    def __init__(
        self,
        mode: str,
        map_stats: Mapping[str, tuple[float, float]] | None,
        smoothing: Smoothing,
        image_score: str,
    ) -> None:
        super().__init__()
        if image_score not in ("max", "top1") and parse_sum_top(image_score) is None:
            raise DeployError(
                f"ff-export computes the image scores max, top1 and sum_top<T>, not "
                f"eval.image_score {image_score!r}; score this run with ff-predict --backend torch"
            )
        self.mode = mode
        self.map_stats = None if map_stats is None else dict(map_stats)
        self.smoothing = smoothing
        self.image_score = image_score

    def forward(self, raw: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        maps = finish_maps(raw, self.mode, self.map_stats, self.smoothing)
        return maps, image_scores(maps, self.image_score)


def exportable_families() -> list[str]:
    """Families whose map path exports (checked against torch at every export)."""
    return sorted(name for name, plugin in families().items() if plugin.exportable)


def check_exportable(model_name: str) -> ModelFamily:
    """The family of ``model_name``; refused when its map path does not export."""
    plugin = family(model_name)
    if not plugin.exportable:
        raise DeployError(
            f"ff-export supports the {', '.join(exportable_families())} models; model "
            f"{model_name!r} has no exportable map path yet. Use ff-predict --backend torch."
        )
    return plugin


def _encoders(module: nn.Module) -> list[DinoEncoder]:
    return [m for m in module.modules() if isinstance(m, DinoEncoder)]


def export_graph(
    graph: Graph,
    example: Sequence[torch.Tensor],
    path: Path,
    *,
    dynamic_size: bool = False,
) -> None:
    """Trace ``graph`` (torch.export) on ``example`` inputs and write it as ONNX at ``path``.

    The batch (dim 0 of every input) is always dynamic. With ``dynamic_size`` the height and
    width of ``images`` are too (any multiples of the encoder's patch); otherwise the graph is
    for the example's size only, and each encoder's resampled position table is a constant.
    """
    batch = torch.export.Dim("batch", min=1)
    dims: dict[str, dict[int, object]] = {name: {0: batch} for name in graph.inputs}
    contexts = contextlib.ExitStack()
    for encoder in _encoders(graph.module):
        if dynamic_size:
            patch = encoder.patch_size
            dims[IMAGES][2] = patch * torch.export.Dim("grid_h", min=1, max=MAX_GRID)
            dims[IMAGES][3] = patch * torch.export.Dim("grid_w", min=1, max=MAX_GRID)
        else:
            size = tuple(example[graph.inputs.index(IMAGES)].shape[-2:])
            contexts.enter_context(encoder.fixed_positions(encoder.grid_size(size)))
    graph.module.eval()
    # the exporter prints its progress to stdout and warns that the inputs share the batch
    # dimension (as meant); a failure still raises
    with contexts, torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        contexts.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="# The axis name: batch will not be used")
        program = torch.onnx.export(
            graph.module,
            tuple(example),
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_shapes=tuple(dims[name] for name in graph.inputs),
            dynamo=True,
            # onnxscript's graph rewrites cost a fifth of the export and buy nothing at run
            # time: ONNX Runtime and OpenVINO optimise the graph they load themselves
            # (docs/benchmarks.md, "Exporting without onnxscript's rewrites")
            optimize=False,
            verbose=False,
        )
        program.save(str(path))
