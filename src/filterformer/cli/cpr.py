"""ff-train's part for model=cpr: fit the reference set, keep it in the run, build the pairs.

The training loop is the common one: CPR's items are packed training pairs
(:class:`RetrievalPairs`), one loop epoch is ``cpr.steps / train.epochs`` optimiser steps, and
the model computes its own losses from them. This module reads the ``cpr`` section of the
config (set by the cpr_* presets) and the category's ``cpr`` block.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from filterformer.data.cpr_pairs import PairNoise, PairRelight, RetrievalPairs
from filterformer.data.pseudo_defects import (
    PseudoDefects,
    PseudoDefectSettings,
    load_defect_crops,
    load_textures,
)
from filterformer.data.training_set import TrainingImages
from filterformer.errors import ConfigError
from filterformer.models.cpr import CPR
from filterformer.training.cpr_references import (
    REFERENCES_FILE,
    bank_summary,
    load_references,
    normalised,
    save_references,
)
from filterformer.training.distributed import DistributedContext, main_first


def check_cpr_config(cfg: DictConfig) -> None:
    """Refuse settings that CPR cannot honour, naming the key to change."""
    if "cpr" not in cfg:
        raise ConfigError(
            "model=cpr needs the cpr section of a CPR preset: use preset=cpr_paper, "
            "preset=cpr_dinov2 or preset=cpr_demo"
        )
    problems = {
        "category.tiling.enabled=false": bool(cfg.category.get("tiling", {}).get("enabled")),
        "input.fit=squash": cfg.input.get("fit", "squash") != "squash",
        "train.augment=null": cfg.train.get("augment") is not None,
        "train.feature_cache.enabled=false": bool(cfg.train.feature_cache.enabled),
    }
    wrong = [fix for fix, bad in problems.items() if bad]
    if wrong:
        raise ConfigError(
            "model=cpr scores whole images against whole training images and makes its own "
            f"training pairs; set {', '.join(wrong)}"
        )
    if cfg.cpr.steps % cfg.train.epochs:
        raise ConfigError(
            f"cpr.steps={cfg.cpr.steps} must be a multiple of train.epochs={cfg.train.epochs} "
            "(each epoch is cpr.steps / train.epochs optimiser steps)"
        )


def demo_data_warning(cfg: DictConfig) -> str | None:
    """What preset=cpr_demo keeps when it trains on other data than it is made for, or None.

    The preset sets ``cpr.demo_data``; its category, K, head widths and input size are the
    demo's, whatever the data.
    """
    made_for = cfg.cpr.get("demo_data")
    if made_for is None or cfg.data.kind == made_for:
        return None
    category = cfg.category
    return (
        f"ff-train: warning: preset=cpr_demo is made for data={made_for}; on data="
        f"{cfg.data.kind} it keeps category={category.name}'s CPR settings (foreground "
        f"{'on' if category.cpr.foreground else 'off'}, {category.cpr.steps} steps) and the "
        f"demo's model.top_k={cfg.model.top_k}, model.out_dim={cfg.model.out_dim} and "
        f"input.resize={list(cfg.input.resize)}. For your data use preset=cpr_paper or "
        "preset=cpr_lighting with category=<yours>."
    )


def pseudo_defects(settings: DictConfig) -> PseudoDefects:
    """The generator of ``cpr.pseudo_defects``, with the user's crop and texture folders."""
    options = OmegaConf.to_container(settings, resolve=True)
    crops_dir, textures_dir = options.pop("crops_dir", None), options.pop("textures_dir", None)
    crops = load_defect_crops(crops_dir) if crops_dir else []
    textures = load_textures(textures_dir) if textures_dir else []
    return PseudoDefects(PseudoDefectSettings(**options), crops=crops, textures=textures)


def cpr_training_set(
    cfg: DictConfig,
    model: CPR,
    images: TrainingImages,
    identity: Mapping[str, str],
    distributed: DistributedContext,
) -> RetrievalPairs:
    """Fit (or, when resuming, reload) the run's reference set; return the training pairs.

    ``identity``: the run's model identity (its ``encoder_weights`` is recorded with the set).
    """
    encoder_weights = identity["encoder_weights"]
    check_cpr_config(cfg)
    warning = demo_data_warning(cfg)
    if warning and distributed.is_main:
        print(warning, file=sys.stderr)
    run_dir, geometry = Path(cfg.run_dir), images.geometry
    uint8 = [geometry.center_crop(images.resized_image(i)) for i in range(len(images))]
    model.to(cfg.device)
    with main_first(distributed):
        fit = distributed.is_main and not (cfg.resume and (run_dir / REFERENCES_FILE).is_file())
        if fit:
            references = model.fit_references(normalised(uint8, geometry), progress=cfg.progress)
            save_references(run_dir, references, uint8, encoder_weights)
        else:
            references = load_references(run_dir, model, geometry, encoder_weights)
    if distributed.is_main:
        print(bank_summary(model, references), file=sys.stderr)
    foreground = references.foreground_maps
    return RetrievalPairs(
        uint8,
        references.neighbours.numpy(),
        geometry,
        pseudo_defects(cfg.cpr.pseudo_defects),
        foreground=None if foreground is None else foreground.numpy(),
        length=cfg.cpr.steps // cfg.train.epochs * cfg.train.batch_size,
        seed=int(cfg.seed),
        noise=PairNoise(**OmegaConf.to_container(cfg.cpr.noise, resolve=True)),
        relight=PairRelight(**OmegaConf.to_container(cfg.cpr.relight, resolve=True)),
        weight_border=cfg.cpr.weight_border,
    )
