"""ff-train: train one model on one category into a run folder (hydra command line).

    ff-train category=vial data.root=/data/mvtec_ad_2 encoder.weights=weights/<file>
    ff-train preset=demo run_dir=runs/demo
    ff-train -m category=can,fabric             # several runs, one folder each
    ff-train -m hydra/launcher=joblib category=can,fabric   # ... in parallel processes
    torchrun --nproc_per_node 4 -m filterformer.cli.train category=vial  # one run, 4 GPUs
    ff-train --cfg job preset=filterformer_paper  # print the resolved config

The config groups and presets live in ``configs/`` (shipped as ``filterformer.configs``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from filterformer.cli.common import report_user_errors
from filterformer.cli.cpr import cpr_training_set
from filterformer.data.mvtec_ad2 import resolve_data_root
from filterformer.data.sample import Sample
from filterformer.data.synthetic import make_synthetic_category
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import TrainAugment
from filterformer.errors import ConfigError
from filterformer.models.cpr import CPR
from filterformer.models.encoder import DinoEncoder
from filterformer.runs import (
    CONFIG_FILE,
    build_from_config,
    build_geometry,
    build_smoothing,
    build_tiling,
    create_run,
    split_samples,
)
from filterformer.training.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    close_distributed,
    init_distributed,
    main_first,
)
from filterformer.training.feature_cache import FeatureCacheSettings, cache_features
from filterformer.training.loop import OptimizerSettings, check_run_dir, train
from filterformer.training.validation import FusionEvaluator, map_statistics

RESUME_FREE_KEYS = frozenset(
    {
        "resume",
        "progress",
        "device",
        "train.num_workers",
        "train.threads",
        "train.compile",
        "train.log_every",
        "train.feature_cache.storage",
        "train.feature_cache.dir",
        "eval.batch_size",
    }
)
"""Settings that may change when a run is resumed: they do not change what is computed."""


def config_dir() -> Path:
    """The hydra config folder: the installed ``filterformer.configs``, else the repository's."""
    try:
        folder = Path(str(resources.files("filterformer.configs")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[3] / "configs"
    return folder


def prepare_config(cfg: DictConfig) -> DictConfig:
    """Resolve paths (absolute run_dir and data root), generate synthetic data, pick the device."""
    cfg = cfg.copy()
    cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())
    if cfg.data.kind == "synthetic":
        root = Path(cfg.data.root).expanduser().resolve()
        counts = cfg.data.counts
        make_synthetic_category(
            root,
            cfg.category.name,
            seed=cfg.data.seed,
            image_size=tuple(cfg.data.image_size),
            counts=None if counts is None else OmegaConf.to_container(counts),
            texture=cfg.data.texture,
            progress=cfg.progress,
        )
        cfg.data.root = str(root)
    elif cfg.data.kind == "mvtec_ad2":
        cfg.data.root = str(resolve_data_root(cfg.data.root).resolve())
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    OmegaConf.resolve(cfg)
    return cfg


def check_resumable(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to resume a run whose stored config differs from ``cfg`` (beyond RESUME_FREE_KEYS)."""
    stored_file = run_dir / CONFIG_FILE
    if not stored_file.is_file():
        return
    stored = _flatten(OmegaConf.to_container(OmegaConf.load(stored_file)))
    current = _flatten(OmegaConf.to_container(cfg))
    differing = sorted(
        key
        for key in stored.keys() | current.keys()
        if key not in RESUME_FREE_KEYS and stored.get(key) != current.get(key)
    )
    if differing:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing[:5])
        raise ConfigError(
            f"{stored_file}: the run was started with another config ({shown}). Resume with the "
            "same settings, or train into a new run_dir."
        )


def run_training(cfg: DictConfig, distributed: DistributedContext = SINGLE_PROCESS) -> Path:
    """Train as ``cfg`` says (as one of several torchrun processes); return the run folder."""
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    with main_first(distributed):  # rank 0 generates synthetic data, the others reuse it
        cfg = prepare_config(cfg)
    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir, cfg.resume)
    if cfg.resume:
        check_resumable(run_dir, cfg)
    model, identity = build_from_config(cfg)
    if distributed.is_main:
        create_run(run_dir, cfg, identity["encoder_weights"])
    geometry = build_geometry(cfg)
    tiling = build_tiling(cfg)
    augment = None if cfg.train.augment is None else TrainAugment(**_plain(cfg.train.augment))
    train_set = TrainingImages(
        split_samples(cfg, "train"),
        geometry,
        augment,
        seed=cfg.seed,
        tiling=build_tiling(cfg, training=True),
    )
    train_set.preload(progress=cfg.progress and distributed.is_main)
    if isinstance(model, CPR):  # packed (pseudo-defect, reference) pairs: cli/cpr.py
        train_set = cpr_training_set(cfg, model, train_set, identity, distributed)
    elif cfg.train.feature_cache.enabled:
        train_set = _feature_cache(cfg, model.encoder, train_set, distributed)
    validation = _optional_split(cfg, "validation")
    evaluator = None
    if cfg.eval.every and validation is not None:
        test = _optional_split(cfg, cfg.eval.split)
        if test is not None and any(s.label == 1 for s in test):
            evaluator = FusionEvaluator(
                validation,
                test,
                geometry,
                tiling=tiling,
                smoothing=build_smoothing(cfg),
                device=cfg.device,
                batch_size=cfg.eval.batch_size,
                pro_limit=cfg.eval.pro_limit,
                progress=cfg.progress,
            )
    statistics = None
    if validation is not None:
        statistics = partial(
            map_statistics,
            samples=validation,
            geometry=geometry,
            tiling=tiling,
            device=cfg.device,
            batch_size=cfg.eval.batch_size,
            progress=cfg.progress,
        )
    result = train(
        model,
        train_set,
        run_dir=run_dir,
        checkpoint_meta={**identity, "config": OmegaConf.to_container(cfg)},
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        optimizer=OptimizerSettings(**_plain(cfg.train.optimizer)),
        grad_clip=cfg.train.grad_clip,
        device=cfg.device,
        amp_bf16=cfg.train.amp_bf16,
        seed=cfg.seed,
        deterministic=cfg.train.deterministic,
        num_workers=cfg.train.num_workers,
        compile_step=cfg.train.compile,
        log_every=cfg.train.log_every,
        distributed=distributed,
        eval_every=cfg.eval.every if evaluator else 0,
        evaluator=evaluator,
        select_metric=cfg.eval.metric,
        category=cfg.category.name,
        map_statistics=statistics,
        resume=cfg.resume,
        progress=cfg.progress,
    )
    best = ", ".join(f"{m} {b['score']:.4f}" for m, b in result.best.items())
    if not distributed.is_main:
        return run_dir
    print(
        f"ff-train: {run_dir} ({result.epoch} epochs, {result.step} steps)"
        + (f"; best {cfg.eval.metric}: {best}; fusion mode {result.fusion_mode}" if best else "")
    )
    return run_dir


def _feature_cache(
    cfg: DictConfig, encoder: DinoEncoder, images: TrainingImages, distributed: DistributedContext
) -> Dataset:
    """The encoder taps of ``images``, computed once (train.feature_cache).

    With a single view, items that change every epoch (augmentation, random training tiles)
    would be frozen to their epoch-0 version: then the cache stays off, and a note says how to
    cache several views instead.
    """
    cache = _plain(cfg.train.feature_cache)
    settings = FeatureCacheSettings(**{k: v for k, v in cache.items() if k != "enabled"})
    if settings.views == 1 and (images.augment is not None or images.tiling is not None):
        if distributed.is_main:
            print(
                "ff-train: feature cache off: the training items change every epoch "
                "(augmentation or training tiles); set train.feature_cache.views=K to train on "
                "K cached views per image.",
                file=sys.stderr,
            )
        return images
    with main_first(distributed):  # the disk cache is filled once, by rank 0
        return cache_features(
            encoder,
            images,
            settings,
            device=cfg.device,
            batch_size=cfg.train.batch_size,
            amp_bf16=cfg.train.amp_bf16,
            progress=cfg.progress and distributed.is_main,
        )


def _optional_split(cfg: DictConfig, split: str) -> Sequence[Sample] | None:
    """The split's samples, or None when the data source has no such split."""
    if cfg.data.kind == "folder":
        folder = {"validation": cfg.data.validation_dir, "test_public": cfg.data.test_dir}.get(
            split
        )
        return None if folder is None else split_samples(cfg, split)
    if not (Path(cfg.data.root) / cfg.category.name / split).is_dir():
        return None
    return split_samples(cfg, split)


def _plain(node: DictConfig) -> dict[str, Any]:
    """A config section as plain Python values (lists become tuples, e.g. betas)."""
    return {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in OmegaConf.to_container(node, resolve=True).items()
    }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@hydra.main(config_path=str(config_dir()), config_name="train", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    distributed = init_distributed()
    try:
        code = report_user_errors("ff-train", lambda: run_training(cfg, distributed))
    finally:
        close_distributed()
    if code:
        sys.exit(code)  # only on failure: a multirun sweep goes on after each job


def main() -> None:
    """Console entry point ``ff-train``."""
    _hydra_main()


if __name__ == "__main__":
    main()
