"""The model-family plug-in interface: what the library asks of a family beyond its model.

A family (INP-Former, Filter-Former, CPR, EAR, FADeR, or one of yours) lives in its own folder
under ``models/`` (or anywhere importable) and registers a :class:`ModelFamily` subclass with
:func:`register_family`. The training loop, the run layer, the
CLIs, evaluation and export only ever talk to that object, never to the family by name:

- ``model``: the :class:`~filterformer.models.base.FrozenEncoderModel` subclass that
  ``model.name=<name>`` builds (its ``__init__`` keywords are the ``model.*`` settings, its
  ``fusion_modes`` the maps and fusions it offers).
- ``setting_ranges``: allowed values of its ``model.*`` settings, checked before any work.
- ``check_settings``: checks between settings that ranges cannot express.
- ``training_set``: what the loop iterates (default: the training images themselves); a
  family that trains on something else (CPR's retrieval pairs) builds it here, doing any
  fit-time preparation first and keeping its state in the run folder (``run_files``).
- ``load_run_files``: restore that state when a run is loaded.
- ``base_run``: the run a model starts from (FADeR: its trained EAR run).
- ``image_scores``: the image-score rules that make sense for its maps (None: all).
- ``exportable``: whether ff-export may export it (its plan checked against torch).
- ``export_plan``: its map path as graphs to trace and NumPy steps between them
  (:mod:`filterformer.models.export_plan`; default: one graph of ``anomaly_maps``).
- ``multi_class``: whether one model can train on several categories' images at once
  (setting=multi_class, few_shot); a family whose training state is per category cannot.
- ``zero_shot_maps``: the model's map without the training data's reconstruction, for
  categories it never saw (INP-Former's INP distance), or None when it has none.

docs/architecture.md ("Adding a model family") walks through a complete example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.export_plan import ExportPlan, single_graph
from filterformer.ranges import Allowed


@dataclass(frozen=True)
class BaseRun:
    """A model that starts from another run's trained weights."""

    key: str
    """The ``model.*`` setting that names the base run's folder (e.g. ``ear_run``)."""
    family: str
    """The family the base run must hold (e.g. ``ear``)."""


@dataclass(frozen=True)
class TrainingContext:
    """What a family's :meth:`ModelFamily.training_set` gets: plain values, no config objects."""

    config: Mapping[str, Any]
    """The resolved run config as plain nested values (the family reads its own section)."""
    run_dir: Path
    encoder_weights: str
    """Identity of the frozen encoder's weights (a SHA-256, hub name or seed)."""
    device: str
    seed: int
    epochs: int
    batch_size: int
    resume: bool
    progress: bool
    is_main: bool = True
    """False in the other processes of a distributed run (they write nothing)."""
    main_first: Callable[[], AbstractContextManager[None]] = field(default=nullcontext)
    """A block the main process runs before the others (they then read what it wrote)."""


class ModelFamily:
    """Base of the family plug-ins; subclasses set ``name`` and ``model`` and override hooks."""

    name: ClassVar[str]
    model: ClassVar[type[FrozenEncoderModel]]
    setting_ranges: ClassVar[Mapping[str, Allowed]] = {}
    base_run: ClassVar[BaseRun | None] = None
    run_files: ClassVar[tuple[str, ...]] = ()
    """Files the family adds to a run folder (relative to it)."""
    image_scores: ClassVar[tuple[str, ...] | None] = None
    exportable: ClassVar[bool] = False
    multi_class: ClassVar[bool] = True

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Raise :class:`~filterformer.errors.ConfigError` for settings the family cannot honour.

        ``settings``: the resolved config flattened to dotted keys (``train.epochs``).
        """

    def training_set(
        self, model: FrozenEncoderModel, images: TrainingImages, context: TrainingContext
    ) -> Dataset:
        """The dataset the training loop iterates; its items go to ``model(batch)``."""
        return images

    def zero_shot_maps(self, model: FrozenEncoderModel) -> ZeroShotMaps | None:
        """The model's zero-shot map (one map, no fusion), or None when the family has none."""
        return None

    def load_run_files(
        self,
        model: FrozenEncoderModel,
        run_dir: Path,
        geometry: InputGeometry,
        encoder_weights: str,
    ) -> None:
        """Restore what :meth:`training_set` kept in the run folder into a loaded ``model``."""

    def export_plan(self, model: FrozenEncoderModel, finish: nn.Module) -> ExportPlan:
        """The graphs (and NumPy steps) that compute ``model``'s finished maps (ff-export).

        ``finish`` turns the model's raw maps (name -> B x h x w) into the run's (maps,
        scores); the last graph must end with it. Default: one graph of ``anomaly_maps``.
        """
        return single_graph(model, finish)


class ZeroShotMaps(nn.Module):
    """A model seen through one of its other maps: ``anomaly_maps`` gives ``{name: maps}``.

    What zero-shot evaluation runs in place of the model (the same interface, one map and
    the fusion mode of that name), so every map pipeline works on it unchanged.
    """

    def __init__(
        self,
        model: FrozenEncoderModel,
        name: str,
        maps: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.model, self.name, self.maps = model, name, maps
        self.fusion_modes = (name,)

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: B x H x W}`` at the network input resolution."""
        return {self.name: self.maps(images)}


FAMILIES: dict[str, ModelFamily] = {}
"""Registered families by name (look them up through :mod:`filterformer.models.registry`)."""


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make ``model.name=<cls.name>`` build ``cls.model`` with ``cls``'s hooks."""
    name = cls.name
    known = type(FAMILIES[name]) if name in FAMILIES else cls
    if (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(
            f"model family {name!r} is registered twice ({known.__qualname__} "
            f"and {cls.__qualname__}); give one of them another name."
        )
    FAMILIES[name] = cls()
    return cls
