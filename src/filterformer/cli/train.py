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
from filterformer.data.folder import ImageFolderDataset, holdout_names, typical_size
from filterformer.data.mvtec_ad2 import resolve_data_root
from filterformer.data.sample import Sample
from filterformer.data.synthetic import make_synthetic_category
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import TrainAugment, short_side_size
from filterformer.errors import ConfigError
from filterformer.lock import lock_run
from filterformer.models.cpr import CPR
from filterformer.models.encoder import DinoEncoder
from filterformer.runs import (
    CONFIG_FILE,
    build_from_config,
    build_geometry,
    build_smoothing,
    build_tiling,
    create_run,
    holdout_fraction,
    patch_size,
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
FOLDER_KEYS = ("train_dir", "validation_dir", "test_dir", "mask_dir")
"""data=folder paths, stored absolute in the run's config."""


def config_dir() -> Path:
    """The hydra config folder: the installed ``filterformer.configs``, else the repository's."""
    try:
        folder = Path(str(resources.files("filterformer.configs")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[3] / "configs"
    return folder


def prepare_config(cfg: DictConfig, quiet: bool = False) -> DictConfig:
    """Resolve paths, generate synthetic data, hold out validation images, pick the device.

    Relative paths (run_dir, data root, the data.*_dir folders) are made absolute against the
    folder ff-train was started from, so the stored config works from anywhere. A folder run
    without validation_dir gets its held-out images (data.holdout); ``input.fit=short_side``
    gets its canvas (input.resize) fitted to the typical training image. ``quiet``: no notes.
    """
    cfg = cfg.copy()
    base = launch_dir()
    cfg.run_dir = str(_absolute(cfg.run_dir, base))
    if cfg.data.kind == "synthetic":
        root = _absolute(cfg.data.root, base)
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
        cfg.data.root = str(_absolute(resolve_data_root(cfg.data.root), base))
    elif cfg.data.kind == "folder":
        _prepare_folders(cfg, base, quiet)
    if cfg.input.get("fit") == "short_side":
        _fit_short_side(cfg, quiet)
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    OmegaConf.resolve(cfg)
    return cfg


def launch_dir() -> Path:
    """The folder ff-train was started from (hydra's runtime.cwd: hydra.job.chdir may move)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def _absolute(path: str | Path, base: Path) -> Path:
    path = Path(path).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"ff-train: {message}", file=sys.stderr)


def _prepare_folders(cfg: DictConfig, base: Path, quiet: bool) -> None:
    """Absolute data.*_dir folders; without validation_dir, the held-out training images."""
    for key in FOLDER_KEYS:
        if cfg.data.get(key) is not None:
            cfg.data[key] = str(_absolute(cfg.data[key], base))
    if cfg.data.validation_dir is not None:
        return
    images = ImageFolderDataset(cfg.data.train_dir, "train")
    if cfg.data.get("holdout") is None:
        cfg.data.holdout = holdout_names(images, holdout_fraction(cfg), int(cfg.seed))
    _note(
        f"no data.validation_dir: {len(cfg.data.holdout)} of {len(images)} training images are "
        f"held out as the validation split (data.validation_fraction={holdout_fraction(cfg)}, "
        f"seed {cfg.seed}) and not trained on; see data.holdout in {cfg.run_dir}/{CONFIG_FILE}",
        quiet,
    )


def _fit_short_side(cfg: DictConfig, quiet: bool) -> None:
    """Set input.resize to the short_side canvas of the typical training image."""
    typical = typical_size(split_samples(cfg, "train"))
    size = short_side_size(min(cfg.input.resize), typical, patch_size(cfg))
    cfg.input.resize = list(size)
    _note(
        f"input.fit=short_side: network input {size[0]} x {size[1]} for the typical training "
        f"image of {typical[0]} x {typical[1]}; other aspect ratios are letterboxed",
        quiet,
    )


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
    if distributed.is_main:  # the run folder's only writer from here on (data included)
        lock_run(cfg.run_dir)
    with main_first(distributed):  # rank 0 generates synthetic data, the others reuse it
        cfg = prepare_config(cfg, quiet=not distributed.is_main)
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
        + (f" (both chosen on {cfg.eval.split}: optimistic there)" if best else "")
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
    if cfg.data.kind == "folder":  # validation: validation_dir, else held-out training images
        test = split == "test_public" and cfg.data.test_dir is not None
        available = split == "validation" or test
        return split_samples(cfg, split) if available else None
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
