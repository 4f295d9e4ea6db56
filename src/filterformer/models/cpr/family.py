"""CPR as a model family: its training pairs, the reference set kept in the run, its checks.

The training loop is the common one: CPR's items are packed training pairs
(:class:`RetrievalPairs`), one loop epoch is ``cpr.steps / train.epochs`` optimiser steps, and
the model computes its own losses from them. The family reads the ``cpr`` section of the
config (set by the cpr_* presets) and the category's ``cpr`` block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from filterformer.data.pseudo_defects import (
    PseudoDefects,
    PseudoDefectSettings,
    load_defect_crops,
    load_textures,
)
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import InputGeometry
from filterformer.errors import ConfigError
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.cpr.export import cpr_export_plan
from filterformer.models.cpr.loss import SAMPLINGS
from filterformer.models.cpr.model import CPR, FOREGROUND_MAX_AT
from filterformer.models.cpr.pairs import WEIGHT_BORDERS, PairNoise, PairRelight, RetrievalPairs
from filterformer.models.cpr.photometric import PHOTOMETRIC
from filterformer.models.cpr.run_files import (
    REFERENCES_FILE,
    bank_summary,
    load_references,
    normalised,
    save_references,
)
from filterformer.models.export_plan import ExportPlan
from filterformer.models.family import ModelFamily, TrainingContext, register_family
from filterformer.ranges import choice, number

LOG = logging.getLogger("filterformer")


@register_family
class CPRFamily(ModelFamily):
    """``model=cpr``: trains on retrieval pairs; keeps its reference set in the run folder."""

    name = "cpr"
    model = CPR
    run_files = (REFERENCES_FILE,)
    exportable = True
    setting_ranges = {
        "model.loss_sampling": choice(*SAMPLINGS),
        "model.foreground_max_at": choice(*FOREGROUND_MAX_AT),
        "model.photometric": choice(*PHOTOMETRIC),
        "model.photometric_sigma": number(0, above=True, high=1),
        "cpr.relight.probability": number(0, high=1),
        "cpr.relight.strength": number(0),
        "cpr.weight_border": choice(*WEIGHT_BORDERS),
    }
    multi_class = False  # its reference set and retrieval are one category's

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Refuse settings that CPR cannot honour, naming the key to change."""
        if not any(key.startswith("cpr.") for key in settings):
            raise ConfigError(
                "model=cpr needs the cpr section of a CPR preset: use preset=cpr_paper, "
                "preset=cpr_dinov2, preset=cpr_lighting or preset=cpr_demo"
            )
        problems = {
            "category.tiling.enabled=false": bool(settings.get("category.tiling.enabled")),
            "input.fit=squash": settings.get("input.fit", "squash") != "squash",
            "train.augment=null": any(k.startswith("train.augment.") for k in settings),
            "train.feature_cache.enabled=false": bool(settings.get("train.feature_cache.enabled")),
        }
        wrong = [fix for fix, bad in problems.items() if bad]
        if wrong:
            raise ConfigError(
                "model=cpr scores whole images against whole training images and makes its own "
                f"training pairs; set {', '.join(wrong)}"
            )
        crops_dir = settings.get("cpr.pseudo_defects.crops_dir")
        pastes = settings.get("cpr.pseudo_defects.kinds.cut_paste", 0) > 0
        if pastes and not (crops_dir and Path(crops_dir).expanduser().is_dir()):
            raise ConfigError(
                f"cpr.pseudo_defects.kinds.cut_paste > 0 pastes defect crops, but "
                f"crops_dir={crops_dir} is no folder: give a folder of RGBA crops (README, CPR) or "
                "set cpr.pseudo_defects.kinds.cut_paste=0"
            )
        steps, epochs = settings["cpr.steps"], settings["train.epochs"]
        if steps % epochs:
            raise ConfigError(
                f"cpr.steps={steps} must be a multiple of train.epochs={epochs} "
                "(each epoch is cpr.steps / train.epochs optimiser steps)"
            )

    def training_set(
        self, model: FrozenEncoderModel, images: TrainingImages, context: TrainingContext
    ) -> RetrievalPairs:
        """Fit (or, when resuming, reload) the run's reference set; return the training pairs."""
        warning = demo_data_warning(context.config)
        if warning and context.is_main:
            LOG.warning("warning: %s", warning)
        settings, geometry = context.config["cpr"], images.geometry
        uint8 = [geometry.center_crop(images.resized_image(i)) for i in range(len(images))]
        model.to(context.device)
        references_file = context.run_dir / REFERENCES_FILE
        with context.main_first():
            if context.is_main and not (context.resume and references_file.is_file()):
                references = model.fit_references(
                    normalised(uint8, geometry), progress=context.progress
                )
                save_references(context.run_dir, references, uint8, context.encoder_weights)
            else:
                references = load_references(
                    context.run_dir, model, geometry, context.encoder_weights
                )
        if context.is_main:
            LOG.info(bank_summary(model, references))
        foreground = references.foreground_maps
        return RetrievalPairs(
            uint8,
            references.neighbours.numpy(),
            geometry,
            pseudo_defects(settings["pseudo_defects"]),
            foreground=None if foreground is None else foreground.numpy(),
            length=settings["steps"] // context.epochs * context.batch_size,
            seed=context.seed,
            noise=PairNoise(**settings["noise"]),
            relight=PairRelight(**settings.get("relight", {})),
            weight_border=settings.get("weight_border", "reflect101"),  # older runs: OpenCV's
        )

    def load_run_files(
        self,
        model: FrozenEncoderModel,
        run_dir: Path,
        geometry: InputGeometry,
        encoder_weights: str,
    ) -> None:
        """The run's training images and fitted retrieval state (references.safetensors)."""
        load_references(run_dir, model, geometry, encoder_weights)

    def export_plan(self, model: FrozenEncoderModel, finish: nn.Module) -> ExportPlan:
        """Query graph, NumPy retrieval over the bank, local-retrieval graph (cpr/export.py)."""
        return cpr_export_plan(model, finish)


def demo_data_warning(config: Mapping[str, Any]) -> str | None:
    """What preset=cpr_demo keeps when it trains on other data than it is made for, or None.

    ``config``: the resolved run config (plain values). The preset sets ``cpr.demo_data``;
    its category, K, head widths and input size are the demo's, whatever the data.
    """
    made_for, kind = config["cpr"].get("demo_data"), config["data"]["kind"]
    if made_for is None or kind == made_for:
        return None
    category, model = config["category"], config["model"]
    return (
        f"preset=cpr_demo is made for data={made_for}; on data={kind} it keeps "
        f"category={category['name']}'s CPR settings (foreground "
        f"{'on' if category['cpr']['foreground'] else 'off'}, {category['cpr']['steps']} steps) "
        f"and the demo's model.top_k={model['top_k']}, model.out_dim={model['out_dim']} and "
        f"input.resize={list(config['input']['resize'])}. For your data use preset=cpr_paper "
        "or preset=cpr_lighting with category=<yours>."
    )


def pseudo_defects(settings: Mapping[str, Any]) -> PseudoDefects:
    """The generator of ``cpr.pseudo_defects``, with the user's crop and texture folders."""
    options = dict(settings)
    crops_dir, textures_dir = options.pop("crops_dir", None), options.pop("textures_dir", None)
    crops = load_defect_crops(crops_dir) if crops_dir else []
    textures = load_textures(textures_dir) if textures_dir else []
    return PseudoDefects(PseudoDefectSettings(**options), crops=crops, textures=textures)
