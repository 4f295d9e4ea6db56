"""What a model family exports: its map path as torch graphs, with NumPy steps between them.

ff-export (:mod:`filterformer.export`) asks a family for an :class:`ExportPlan`
(:meth:`~filterformer.models.family.ModelFamily.export_plan`), traces each :class:`Graph` into
its own file, stores the arrays of the :class:`Step` s in one file beside them and lists the
stages in export.json; the torch-free runtime (:mod:`filterformer.runtime`) runs them in order
on named arrays, starting from ``images`` and ending with ``maps`` and ``scores``.

Most families are one graph (:func:`single_graph`): normalised images -> their finished maps.
A family whose map path holds a step that a graph cannot express well (a retrieval of its
nearest training images, in float64 over a bank of references) splits it: a graph up to the
step, the step (one of the runtime's NumPy ops, :data:`filterformer.runtime.ops.OPS`), a graph
after it that takes the step's results as inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

IMAGES = "images"
"""The first graph's input: normalised float32 B x 3 x h x w network inputs."""
MAPS, SCORES = "maps", "scores"
"""The last graph's outputs: B x h x w finished maps and their B image scores."""


@dataclass(frozen=True)
class Graph:
    """A torch module traced into one exported file: ``module(*inputs) -> outputs``."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """A NumPy op of the runtime between graphs: ``OPS[op](*inputs, **arrays, **settings)``.

    ``arrays`` maps the op's keyword to an array of the plan (stored once, in the bank file).
    """

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    arrays: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportPlan:
    """A family's map path as stages run in order on named arrays.

    ``arrays``: the data of the steps (e.g. a bank of reference descriptors), by name.
    ``any_size``: the one graph accepts other input sizes (multiples of the patch), so
    ``--dynamic-size`` may export it. ``checks``: torch values of intermediate arrays that the
    parity check compares too (integer arrays must be equal as sets per image, e.g. the
    indices of retrieved references); None checks the maps and scores only.
    """

    stages: tuple[Graph | Step, ...]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    any_size: bool = True
    checks: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None

    @property
    def graphs(self) -> list[Graph]:
        """The graph stages, in order."""
        return [stage for stage in self.stages if isinstance(stage, Graph)]


class WholeMapGraph(nn.Module):
    """``finish(model.anomaly_maps(images))``: a model whose whole map path traces."""

    def __init__(self, model: nn.Module, finish: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.finish = finish

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.model.anomaly_maps(images))


def single_graph(model: nn.Module, finish: nn.Module) -> ExportPlan:
    """One graph, ``images -> (maps, scores)``, of a model whose ``anomaly_maps`` traces.

    ``finish``: raw maps (name -> B x h x w) -> (maps, scores), the run's fusion, smoothing
    and image score (ff-export builds it).
    """
    return ExportPlan((Graph("model", WholeMapGraph(model, finish), (IMAGES,), (MAPS, SCORES)),))
