"""ff-train's training: from a composed config to a trained run folder.

The command line (help, hydra composition, one-line errors) is :mod:`filterformer.cli.train_app`;
``python -m filterformer.cli.train`` runs it too (what torchrun starts):

    ff-train category=vial data.root=/data/mvtec_ad_2 encoder.weights=weights/<file>
    ff-train preset=demo run_dir=runs/demo
    ff-train -m category=can,fabric             # several runs, one folder each
    ff-train -m hydra/launcher=joblib category=can,fabric   # ... in parallel processes
    torchrun --nproc_per_node 4 -m filterformer.cli.train category=vial  # one run, 4 GPUs
    ff-train --cfg job preset=filterformer_paper  # print the resolved config

The config groups and presets live in ``configs/`` (shipped as ``filterformer.configs``).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import Dataset

from filterformer.cli import train_app
from filterformer.cli.common import (
    config_dir,  # noqa: F401 (ff-demo, scripts, tests use it)
    config_error_message,
    outermost_missing,
)
from filterformer.config_checks import check_settings
from filterformer.data.mvtec_ad2 import resolve_data_root
from filterformer.data.sample import Sample
from filterformer.data.synthetic import make_synthetic_category
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import TrainAugment
from filterformer.errors import ConfigError
from filterformer.models.encoder import DinoEncoder, check_weights_source, encoder_spec
from filterformer.runs import (
    CONFIG_FILE,
    build_from_config,
    build_geometry,
    build_smoothing,
    build_tiling,
    create_run,
    split_samples,
)
from filterformer.training.distributed import SINGLE_PROCESS, DistributedContext, main_first
from filterformer.training.feature_cache import FeatureCacheSettings, cache_features
from filterformer.training.loop import OptimizerSettings, TrainResult, check_run_dir, train
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


def resolve_config(cfg: DictConfig, world_size: int = 1) -> DictConfig:
    """A checked, resolved copy of ``cfg`` (absolute paths, the device); nothing is written.

    Every value is checked up front (:func:`check_settings`, with the DDP ``world_size``) and
    the encoder's weights must be at hand (a file, or permission to download them), so a bad
    setting stops the run before data is generated or a folder is created.
    """
    cfg = cfg.copy()
    try:
        _require_values(cfg)
        cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())
        if cfg.data.kind == "synthetic":
            cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
        if cfg.device == "auto":
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(config_error_message(err)) from None
    encoder = cfg.encoder
    check_settings(
        _flatten(OmegaConf.to_container(cfg)),
        patch_size=encoder_spec(encoder.variant).patch_size,
        world_size=world_size,
    )
    if cfg.data.kind == "mvtec_ad2":
        cfg.data.root = str(resolve_data_root(cfg.data.root).resolve())
    weights = encoder.get("weights")
    check_weights_source(
        encoder.variant,
        None if weights is None else Path(weights).expanduser(),
        encoder.get("pretrained", False),
        encoder.get("allow_download", False),
    )
    return cfg


def make_data(cfg: DictConfig) -> None:
    """Generate the synthetic category of a resolved ``cfg`` (reused when it exists already)."""
    if cfg.data.kind != "synthetic":
        return
    counts = cfg.data.counts
    make_synthetic_category(
        cfg.data.root,
        cfg.category.name,
        seed=cfg.data.seed,
        image_size=tuple(cfg.data.image_size),
        counts=None if counts is None else OmegaConf.to_container(counts),
        texture=cfg.data.texture,
        progress=cfg.progress,
    )


def prepare_config(cfg: DictConfig) -> DictConfig:
    """:func:`resolve_config`, then generate the synthetic data it names."""
    cfg = resolve_config(cfg)
    make_data(cfg)
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
    """Train as ``cfg`` says (as one of several torchrun processes); return the run folder.

    Nothing is written before the config is checked and the model is built (encoder weights
    loaded); a run folder this call creates is removed again if the set-up fails.
    """
    cfg = resolve_config(cfg, distributed.world_size)
    arguments = _train_arguments(cfg)
    if cfg.train.get("threads"):
        torch.set_num_threads(cfg.train.threads)
    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir, cfg.resume)
    if cfg.resume:
        check_resumable(run_dir, cfg)
    model, identity = build_from_config(cfg)
    created = _start_run(run_dir, cfg, identity["encoder_weights"]) if distributed.is_main else None
    with _removed_on_failure(created):
        with main_first(distributed):  # rank 0 generates synthetic data, the others reuse it
            make_data(cfg)
        train_set = _training_set(cfg, model.encoder, distributed)
        evaluator, statistics = _evaluation(cfg)
    result = train(
        model,
        train_set,
        run_dir=run_dir,
        checkpoint_meta={**identity, "config": OmegaConf.to_container(cfg)},
        evaluator=evaluator,
        eval_every=cfg.eval.every if evaluator else 0,
        map_statistics=statistics,
        distributed=distributed,
        **arguments,
    )
    if distributed.is_main:
        _print_summary(run_dir, cfg.eval.metric, result)
    return run_dir


def _train_arguments(cfg: DictConfig) -> dict[str, Any]:
    """The arguments of :func:`train` that come straight from the config.

    Read before anything is written, so that a setting missing from the config (``~key``)
    is a one-line error and not a traceback in the middle of a new run folder.
    """
    try:
        return dict(
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
            select_metric=cfg.eval.metric,
            category=cfg.category.name,
            resume=cfg.resume,
            progress=cfg.progress,
        )
    except OmegaConfBaseException as err:
        raise ConfigError(config_error_message(err)) from None


def _start_run(run_dir: Path, cfg: DictConfig, encoder_weights: str) -> Path | None:
    """Write the run folder's config.yaml and versions.json; return the folder this created.

    The returned folder (``run_dir`` or its outermost new parent; None when ``run_dir``
    existed) is what a failed set-up removes. An operating-system error while writing (no
    space, read-only disk) removes it at once, leaving nothing behind.
    """
    created = outermost_missing(run_dir)
    with _removed_on_failure(created, OSError):
        create_run(run_dir, cfg, encoder_weights)
    return created


@contextmanager
def _removed_on_failure(
    folder: Path | None, errors: type[BaseException] = BaseException
) -> Iterator[None]:
    """Remove ``folder`` (when not None) if the block raises one of ``errors``."""
    try:
        yield
    except errors:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _training_set(
    cfg: DictConfig, encoder: DinoEncoder, distributed: DistributedContext
) -> Dataset:
    """The preloaded training images, or their cached encoder taps (train.feature_cache)."""
    augment = None if cfg.train.augment is None else TrainAugment(**_plain(cfg.train.augment))
    images = TrainingImages(
        split_samples(cfg, "train"),
        build_geometry(cfg),
        augment,
        seed=cfg.seed,
        tiling=build_tiling(cfg, training=True),
    )
    images.preload(progress=cfg.progress and distributed.is_main)
    if not cfg.train.feature_cache.enabled:
        return images
    return _feature_cache(cfg, encoder, images, distributed)


def _evaluation(cfg: DictConfig) -> tuple[FusionEvaluator | None, Callable | None]:
    """The periodic evaluator (needs validation and a split with defects) and map statistics."""
    validation = _optional_split(cfg, "validation")
    if validation is None:
        return None, None
    geometry, tiling = build_geometry(cfg), build_tiling(cfg)
    evaluator = None
    test = _optional_split(cfg, cfg.eval.split) if cfg.eval.every else None
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
    statistics = partial(
        map_statistics,
        samples=validation,
        geometry=geometry,
        tiling=tiling,
        device=cfg.device,
        batch_size=cfg.eval.batch_size,
        progress=cfg.progress,
    )
    return evaluator, statistics


def _print_summary(run_dir: Path, metric: str, result: TrainResult) -> None:
    """One line: the run folder, its length and the best score per fusion mode."""
    best = ", ".join(f"{m} {b['score']:.4f}" for m, b in result.best.items())
    print(
        f"ff-train: {run_dir} ({result.epoch} epochs, {result.step} steps)"
        + (f"; best {metric}: {best}; fusion mode {result.fusion_mode}" if best else "")
    )


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


def _require_values(cfg: DictConfig) -> None:
    """Refuse mandatory settings (``???`` in the config, e.g. data.train_dir) left unset."""
    missing = [k for k, v in _flatten(OmegaConf.to_container(cfg)).items() if v == "???"]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required but not set; add "
            f"{' '.join(f'{k}=...' for k in missing)} to the command line."
        )


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


def main() -> None:
    """``python -m filterformer.cli.train`` (what torchrun starts): the ff-train command line."""
    train_app.main()


if __name__ == "__main__":
    main()
