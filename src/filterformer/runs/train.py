"""Training a run: from a composed config to a trained run folder.

The command line (help, hydra composition, one-line errors) is :mod:`filterformer.cli.train`;
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

import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import Dataset

from filterformer.data.datasets import READERS, evaluated_split
from filterformer.data.few_shot import ViewSet
from filterformer.data.folder import (
    ImageFolderDataset,
    holdout_names,
    missing_pixel_truth,
    typical_size,
)
from filterformer.data.mvtec_ad2 import resolve_data_root
from filterformer.data.sample import Sample
from filterformer.data.synthetic import make_synthetic_category
from filterformer.data.training_set import ConcatImages, TrainingImages
from filterformer.data.transforms import TrainAugment, short_side_size
from filterformer.errors import ConfigError, DataError, FilterformerError
from filterformer.io import check_name, outermost_missing, resolved
from filterformer.lock import lock_run, unlock_run
from filterformer.manifest import signing
from filterformer.manifest import start as start_manifest
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.encoder import DinoEncoder
from filterformer.models.family import TrainingContext
from filterformer.models.registry import check_encoder_source, family
from filterformer.runs.calibrate import Calibration, calibrate_run
from filterformer.runs.checks import check_settings
from filterformer.runs.compose import FOLDER_KEYS, config_error_message
from filterformer.runs.files import verify_for_resume
from filterformer.runs.run import (
    CONFIG_FILE,
    build_from_config,
    build_geometry,
    build_smoothing,
    build_tiling,
    create_run,
    holdout_fraction,
    load_run,
    optional_split,
    patch_size,
    require_training_splits,
    split_samples,
)
from filterformer.runs.run_maps import RunMaps
from filterformer.runs.setting import (
    FEW_SHOT,
    Member,
    draw_shots_of,
    few_shot_views,
    fusion_keys,
    is_single,
    members,
    resolve_members,
    setting_name,
)
from filterformer.runs.settings import plain, resolve_device, train_settings
from filterformer.training.checkpoint import has_checkpoint
from filterformer.training.distributed import SINGLE_PROCESS, DistributedContext, main_first
from filterformer.training.feature_cache import FeatureCacheSettings, cache_features
from filterformer.training.loop import (
    EvaluationSettings,
    Evaluator,
    TrainResult,
    check_batch_size,
    check_run_dir,
    last_checkpoint,
    train,
)
from filterformer.training.trackers import check_tracker, make_tracker
from filterformer.training.validation import (
    FusionEvaluator,
    MultiClassEvaluator,
    pooled_map_statistics,
)
from filterformer.training.watch import TrainingWatch

LOG = logging.getLogger("filterformer")

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
UPSCALE_WARNING = 2.0
"""Warn when the network input is more than this many times the training images' size."""
TRACKED_OVERLAYS = 3
"""How many overlays of defective images a tracker gets at the end of training."""


def resolve_config(cfg: DictConfig, world_size: int = 1, quiet: bool = False) -> DictConfig:
    """A checked, resolved copy of ``cfg``: absolute paths, the device; nothing is written.

    Every value is checked up front (:func:`check_settings`, with the DDP ``world_size``) and
    the encoder's weights must be at hand (a file, or permission to download them), so a bad
    setting stops the run before data is generated or a folder is created. Relative paths
    (run_dir, data root, the data.*_dir folders) are made absolute against the folder
    ff-train was started from, so the stored config works from anywhere. A folder run
    without validation_dir gets its held-out images (data.holdout); ``input.fit=short_side``
    gets its canvas (input.resize) fitted to the typical training image. ``quiet``: no notes.
    """
    cfg = cfg.copy()
    base = launch_dir()
    try:
        _require_values(cfg)
        check_name(cfg.category.name, "category.name")
        cfg.run_dir = str(_absolute(cfg.run_dir, base))
        if cfg.data.kind == "synthetic":
            cfg.data.root = str(_absolute(cfg.data.root, base))
        cfg.device = resolve_device(cfg.device)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(config_error_message(err)) from None
    settings = _flatten(OmegaConf.to_container(cfg))
    plugin = family(cfg.model.name)
    if not is_single(cfg):  # null category settings: each category's own (checked below)
        _check_multi_class(cfg)
        settings = {k: v for k, v in settings.items() if v is not None or k[:9] != "category."}
    check_settings(
        settings,
        family_ranges=plugin.setting_ranges,
        patch_size=patch_size(cfg),
        world_size=world_size,
    )
    plugin.check_settings(settings)
    if cfg.data.kind in READERS and cfg.data.kind != "synthetic":  # a dataset's root
        cfg.data.root = str(_absolute(resolve_data_root(cfg.data.root), base))
    elif cfg.data.kind == "folder":
        _prepare_folders(cfg, base, quiet)
    if not is_single(cfg):
        _resolve_members(cfg, base, quiet)
        for member in members(cfg):  # each category's own settings, in range too
            category = _flatten({"category": OmegaConf.to_container(member.config.category)})
            check_settings(category)
    for member in members(cfg):
        require_training_splits(member.config)
    if cfg.input.get("fit") == "short_side":
        _fit_short_side(cfg, quiet)
    _warn_upscaling(cfg, quiet)
    weights = cfg.encoder.get("weights")
    check_encoder_source(
        cfg.encoder.variant,
        None if weights is None else Path(weights).expanduser(),
        cfg.encoder.get("pretrained", False),
        cfg.encoder.get("allow_download", False),
    )
    check_tracker(OmegaConf.to_container(cfg.get("logger") or {"kind": "none"}))
    return cfg


def make_data(cfg: DictConfig) -> None:
    """Generate the synthetic categories of a resolved ``cfg`` (reused when they exist already)."""
    for member in members(cfg):
        data = member.config.data
        if data.kind != "synthetic":
            continue
        counts = data.counts
        make_synthetic_category(
            data.root,
            member.config.category.name,
            seed=data.seed,
            image_size=tuple(data.image_size),
            counts=None if counts is None else OmegaConf.to_container(counts),
            texture=data.texture,
            progress=cfg.progress,
        )


def prepare_config(cfg: DictConfig, quiet: bool = False) -> DictConfig:
    """:func:`resolve_config`, then generate the synthetic data it names."""
    cfg = resolve_config(cfg, quiet=quiet)
    make_data(cfg)
    return cfg


def launch_dir() -> Path:
    """The folder ff-train was started from (hydra's runtime.cwd: hydra.job.chdir may move)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def _absolute(path: str | Path, base: Path) -> Path:
    path = Path(path).expanduser()
    return resolved(path if path.is_absolute() else base / path)


def _note(message: str, quiet: bool) -> None:
    """A note on what training decided (the CLIs show the ``filterformer`` log on stderr)."""
    if not quiet:
        LOG.info(message)


def _prepare_folders(cfg: DictConfig, base: Path, quiet: bool) -> None:
    """Absolute data.*_dir folders; without validation_dir, the held-out training images
    (of each category's folder when the run has several: see :func:`_resolve_members`)."""
    for key in FOLDER_KEYS:
        if cfg.data.get(key) is not None:
            cfg.data[key] = str(_absolute(cfg.data[key], base))
    if is_single(cfg):
        _hold_out(cfg.data, cfg, quiet)


def _hold_out(data: DictConfig, cfg: DictConfig, quiet: bool) -> None:
    """A folder ``data`` section without validation_dir gets its held-out images (holdout)."""
    if data.validation_dir is not None:
        return
    images = ImageFolderDataset(data.train_dir, "train")
    if data.get("holdout") is None:
        data.holdout = holdout_names(images, holdout_fraction(cfg), int(cfg.seed))
    _note(
        f"no validation_dir: {len(data.holdout)} of {len(images)} training images of "
        f"{data.train_dir} are held out as the validation split (data.validation_fraction="
        f"{holdout_fraction(cfg)}, seed {cfg.seed}) and not trained on (the run's {CONFIG_FILE} "
        "lists them: data.holdout)",
        quiet,
    )


def _check_multi_class(cfg: DictConfig) -> None:
    """Refuse a multi-category run the model family or the recipe cannot train."""
    if not family(cfg.model.name).multi_class:
        raise ConfigError(
            f"model={cfg.model.name} trains on one category at a time; use setting=single_class "
            "(ff-train -m category=a,b for several runs)."
        )
    if setting_name(cfg) == FEW_SHOT and cfg.train.augment is not None:
        raise ConfigError(
            "setting=few_shot trains on the INP-Former code's fixed views of each drawn image; "
            "set train.augment=null."
        )


def _resolve_members(cfg: DictConfig, base: Path, quiet: bool) -> None:
    """A multi-category run: its members (setting.members), each folder category's held-out
    images, and (few-shot) the drawn images, generating synthetic data first if needed."""
    resolve_members(cfg, base)
    for entry in cfg.setting.members:
        if entry.data.kind == "folder":
            _hold_out(entry.data, cfg, quiet)
    if setting_name(cfg) == FEW_SHOT and cfg.setting.members[0].shots is None:
        make_data(cfg)
        draw_shots_of(cfg)


def _typical_training_size(cfg: DictConfig) -> tuple[int, int]:
    """The most frequent (H, W) of the training images (data.image_size before generation)."""
    if cfg.data.kind == "synthetic":  # not generated yet; every image has data.image_size
        return tuple(cfg.data.image_size)  # type: ignore[return-value]
    return typical_size([s for m in members(cfg) for s in split_samples(m.config, "train")])


def _warn_upscaling(cfg: DictConfig, quiet: bool) -> None:
    """Say so when whole images are blown up to more than twice their size (the full recipe's
    896 px on 240 x 300 photos): it costs time and memory and adds no detail."""
    tiling = cfg.category.get("tiling")
    if quiet or (tiling and tiling.enabled):
        return
    try:
        height, width = _typical_training_size(cfg)
    except FilterformerError:  # no training images yet: their own check says so later
        return
    resize = list(cfg.input.resize)
    factor = max(resize[0] / height, resize[1] / width)
    if factor > UPSCALE_WARNING:
        patch = patch_size(cfg)
        fitted = [-(-side // patch) * patch for side in (height, width)]
        LOG.warning(
            "warning: input.resize %s is %.1fx the training images (%d x %d): upscaled, they "
            "cost time and memory and gain no detail; input.resize=[%d,%d] keeps their size",
            resize,
            factor,
            height,
            width,
            *fitted,
        )


def _fit_short_side(cfg: DictConfig, quiet: bool) -> None:
    """Set input.resize to the short_side canvas of the typical training image."""
    typical = _typical_training_size(cfg)
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
        if key not in RESUME_FREE_KEYS
        and not key.startswith("logger.")  # where the numbers are sent, not what they are
        and stored.get(key) != current.get(key)
    )
    if differing:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing[:5])
        raise ConfigError(
            f"{stored_file}: the run was started with another config ({shown}). Resume with the "
            "same settings, or train into a new run_dir."
        )


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`run_training` did: the run folder, where training ended, the calibration."""

    run_dir: Path
    result: TrainResult
    calibrations: list[Calibration]
    """Each fusion mode's threshold (empty in the other processes of a distributed run)."""
    selection_split: str
    """The split that chose the best checkpoints and the fusion mode (``eval.split``)."""
    selection_metric: str
    test_split: str | None = None
    """The split with labels that ff-eval scores (None: the run's data has none)."""


def run_training(cfg: DictConfig, distributed: DistributedContext = SINGLE_PROCESS) -> TrainOutcome:
    """Train as ``cfg`` says (as one of several torchrun processes); calibrate the run.

    Nothing is written before the config is checked and the model is built (encoder weights
    loaded); a run folder this call creates is removed again if the set-up fails.
    """
    cfg = resolve_config(cfg, distributed.world_size, quiet=not distributed.is_main)
    settings = train_settings(cfg)  # before anything is written: a missing key is one line
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    run_dir = Path(cfg.run_dir)
    model, identity = build_from_config(cfg)
    created = _start_run(run_dir, cfg, identity["encoder_weights"]) if distributed.is_main else None
    try:
        with _removed_on_failure(created):
            with main_first(distributed):  # rank 0 generates synthetic data, the others reuse it
                make_data(cfg)
            train_set = _training_set(cfg, model, identity["encoder_weights"], distributed)
            check_batch_size(len(train_set), cfg.train.batch_size)  # before a run starts
            evaluation = _evaluation_settings(cfg)
        watch = _watch(cfg) if distributed.is_main else None
        result = train(
            model,
            train_set,
            run_dir=run_dir,
            checkpoint_meta={**identity, "config": OmegaConf.to_container(cfg)},
            settings=settings,
            evaluation=evaluation,
            distributed=distributed,
            step_callback=None if watch is None else watch.steps,
            epoch_callback=None if watch is None else watch.epoch,
        )
        calibrations = _calibrate(cfg, run_dir) if distributed.is_main else []
        if watch is not None:
            best = {f"best/{m}/{cfg.eval.metric}": b["score"] for m, b in result.best.items()}
            overlays = _tracker_overlays(cfg, run_dir) if cfg.logger.kind != "none" else []
            watch.finish(best, overlays)
    finally:
        if distributed.is_main:  # the session may go on (the API): others may read the run now
            unlock_run(run_dir)
    return TrainOutcome(
        run_dir, result, calibrations, cfg.eval.split, cfg.eval.metric, _test_split(cfg)
    )


def _test_split(cfg: DictConfig) -> str | None:
    """The split ff-eval would score by default, if the run's data has it."""
    split = evaluated_split(cfg.data.kind)
    try:
        return split if optional_split(cfg, split) else None
    except FilterformerError:
        return None


def _watch(cfg: DictConfig) -> TrainingWatch:
    """The curves PNG of the run folder and the run's tracker (``logger``), config recorded."""
    run_dir = Path(cfg.run_dir)
    name = f"{cfg.model.name}/{cfg.category.name}"
    tracker = make_tracker(OmegaConf.to_container(cfg.logger), run_dir, run_dir.name)
    watch = TrainingWatch(run_dir, cfg.eval.metric, f"{name}: {run_dir}", tracker)
    watch.start(_flatten(OmegaConf.to_container(cfg)))
    return watch


def _tracker_overlays(cfg: DictConfig, run_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Overlays of up to three defective images of the selection split (for the tracker)."""
    from filterformer.evaluation.figures import colour_scale, figure_array, overlay_figure

    try:
        run = load_run(run_dir, device=cfg.device)
        maps = RunMaps(run, device=cfg.device, progress=False)
        samples = optional_split(cfg, cfg.eval.split) or optional_split(cfg, "validation") or []
    except FilterformerError:  # e.g. no threshold could be calibrated: no overlays
        return []
    chosen = [s for s in samples if s.label == 1][:TRACKED_OVERLAYS] or list(samples[:1])
    threshold = None if run.threshold is None else run.threshold.value
    low, high = run.threshold.map_range if run.threshold and run.threshold.map_range else (0, 1)
    images = []
    for sample, amap in maps.predict(chosen):
        binary = None if threshold is None else amap > threshold
        figure = overlay_figure(
            sample.load_image(),
            amap,
            binary,
            sample.load_mask() if sample.label is not None else None,
            colour_scale(low, threshold, high),
            threshold,
            name=str(sample.relpath),
        )
        images.append((f"overlay/{sample.relpath}", figure_array(figure)))
    return images


def _evaluation_settings(cfg: DictConfig) -> EvaluationSettings:
    """When and how training evaluates, keeps the best checkpoints and measures map statistics."""
    evaluator, statistics = _evaluation(cfg)
    return EvaluationSettings(
        every=cfg.eval.every if evaluator else 0,
        evaluator=evaluator,
        select_metric=cfg.eval.metric,
        category=fusion_keys(cfg),
        map_statistics=statistics,
    )


def _calibrate(cfg: DictConfig, run_dir: Path) -> list[Calibration]:
    """Every fusion mode's threshold, stored once by the writer (the readers never write).

    A run whose data cannot give one (no validation split) ends without thresholds; the
    commands that need one then say how to provide it.
    """
    try:
        return calibrate_run(
            run_dir,
            device=cfg.device,
            progress=cfg.progress,
            batch_size=cfg.eval.batch_size,
        )
    except FilterformerError as err:
        return [Calibration(mode="*", threshold=None, skipped=str(err))]


def _start_run(run_dir: Path, cfg: DictConfig, encoder_weights: str) -> Path | None:
    """Become the run folder's only writer, check it may be (re)started, write config.yaml
    and versions.json; return the folder this created.

    The returned folder (``run_dir`` or its outermost new parent; None when ``run_dir``
    existed) is what a failed set-up removes. An operating-system error here (no space, a
    read-only disk) removes it at once; a refusal (another writer, a trained run) does not,
    as the folder is then another run's.
    """
    created = outermost_missing(run_dir)
    with _removed_on_failure(created, OSError):
        lock_run(run_dir)  # the run folder's only writer from here on (data included)
        check_run_dir(run_dir, cfg.resume)
        if cfg.resume and has_checkpoint(last_checkpoint(run_dir)):
            verify_for_resume(run_dir)  # before anything of the run is read or rewritten
            check_resumable(run_dir, cfg)
        else:
            start_manifest(run_dir)  # training starts from nothing
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
    cfg: DictConfig,
    model: FrozenEncoderModel,
    encoder_weights: str,
    distributed: DistributedContext,
) -> Dataset:
    """What the loop iterates: the preloaded training images (every category's, concatenated,
    for a multi-category run; few-shot: the fixed views of the drawn images), their cached
    encoder taps (train.feature_cache), or what the model's family makes of them."""
    augment = None if cfg.train.augment is None else TrainAugment(**plain(cfg.train.augment))
    parts = [
        TrainingImages(
            _member_samples(member),
            build_geometry(member.config),
            augment,
            seed=cfg.seed,
            tiling=build_tiling(member.config, training=True),
            every_tile=OmegaConf.select(member.config, "category.tiling.train_tiles") == "all",
        )
        for member in members(cfg)
    ]
    images = parts[0] if len(parts) == 1 else ConcatImages(parts)
    images.preload(progress=cfg.progress and distributed.is_main)
    if setting_name(cfg) == FEW_SHOT:
        images = ViewSet([images[i] for i in range(len(images))], few_shot_views(cfg), cfg.seed)
    context = TrainingContext(
        config=OmegaConf.to_container(cfg, resolve=True),
        run_dir=Path(cfg.run_dir),
        encoder_weights=encoder_weights,
        device=cfg.device,
        seed=int(cfg.seed),
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        resume=cfg.resume,
        progress=cfg.progress,
        is_main=distributed.is_main,
        main_first=partial(main_first, distributed),
    )
    plugin = family(cfg.model.name)
    run_files = [Path(cfg.run_dir) / name for name in plugin.run_files]
    with signing(cfg.run_dir, *run_files) if distributed.is_main else nullcontext():
        train_set = plugin.training_set(model, images, context)
    if not cfg.train.feature_cache.enabled or train_set is not images:
        return train_set
    return _feature_cache(cfg, model.encoder, images, distributed)


def _member_samples(member: Member) -> Sequence[Sample]:
    """A member's training images: its train split, or (few-shot) the drawn ones, in order."""
    samples = split_samples(member.config, "train")
    if member.shots is None:
        return samples
    by_path = {str(s.relpath): s for s in samples}
    missing = [shot for shot in member.shots if shot not in by_path]
    if missing:
        raise DataError(
            f"{member.key}: the drawn training image(s) {', '.join(missing)} of setting.members "
            "are not in its train split any more; restore them or train a new run."
        )
    return [by_path[shot] for shot in member.shots]


def _evaluation(cfg: DictConfig) -> tuple[Evaluator | None, Callable | None]:
    """The periodic evaluator (needs validation and a split with defects) and map statistics.

    A multi-category run pools its categories' validation images for one set of statistics
    and scores each category, then their unweighted mean (``MultiClassEvaluator``).
    """
    parts = []
    for member in members(cfg):
        validation = optional_split(member.config, "validation")
        if validation is not None:
            test = optional_split(member.config, cfg.eval.split) if cfg.eval.every else None
            parts.append((member.config, validation, test))
    if not parts:
        return None, None
    geometry = build_geometry(cfg if is_single(cfg) else parts[0][0])
    common = dict(device=cfg.device, batch_size=cfg.eval.batch_size, progress=cfg.progress)
    statistics = partial(
        pooled_map_statistics,
        parts=[(validation, build_tiling(config)) for config, validation, _ in parts],
        geometry=geometry,
        **common,
    )
    for _, _, test in parts:
        gap = None if test is None else missing_pixel_truth(test)
        if gap is not None and any(s.label == 1 for s in test):
            _note(f"eval.split={cfg.eval.split}: {gap}, so training keeps the last weights", False)
    evaluators = [
        FusionEvaluator(
            validation,
            test,
            geometry,
            tiling=build_tiling(config),
            smoothing=build_smoothing(cfg),
            pro_limit=cfg.eval.pro_limit,
            **common,
        )
        for config, validation, test in parts
        if test is not None
        and any(s.label == 1 for s in test)
        and missing_pixel_truth(test) is None
    ]
    if not evaluators:
        return None, statistics
    if is_single(cfg):
        return evaluators[0], statistics
    return MultiClassEvaluator(evaluators, statistics), statistics


SPLIT_WORDS = {
    "validation_pseudo": "held-out good images with synthetic defects pasted in (no test image "
    "was used)",
    "validation": "the held-out good images",
    "test_public": "the test images themselves, so ff-eval's numbers on them are optimistic",
    "test": "the test images themselves, so ff-eval's numbers on them are optimistic",
}
RULE_WORDS = {
    "mean_std": "mean + {k:g} standard deviations of the held-out good images' scores",
    "quantile": "the {q:g} quantile of the held-out good images' scores",
    "f1_pseudo": "best F1 on the synthetic defects",
    "f1_optimal": "best F1 on the test images (an oracle)",
    "fixed": "a fixed level",
    "given": "given",
}


def describe_outcome(outcome: TrainOutcome) -> str:
    """The end of a run in words: what was chosen, on which images, what its score means,
    and the next command."""
    result, run_dir = outcome.result, _shown(outcome.run_dir)
    lines = [f"trained {run_dir} ({result.epoch} epochs, {result.step} steps)."]
    mode = result.fusion_mode
    if mode is not None and mode in result.best:
        best = result.best[mode]
        on = SPLIT_WORDS.get(outcome.selection_split, outcome.selection_split)
        lines.append(
            f"Chosen on {on}: the weights of epoch {best['epoch']} and the '{mode}' map "
            f"({outcome.selection_metric} {100 * best['score']:.1f} % there: a guide for the "
            "choice, not a test result)."
        )
    else:
        lines.append("No evaluation during training: the last weights are kept.")
    chosen = next((c for c in outcome.calibrations if c.threshold and c.mode == mode), None)
    chosen = chosen or next((c for c in outcome.calibrations if c.threshold), None)
    if chosen is not None:
        t = chosen.threshold
        rule = RULE_WORDS.get(t.rule, t.rule).format(**{"k": 3, "q": 0.99, **t.params})
        lines.append(f"Threshold {t.value:.4g} ({rule}): above it an image is anomalous.")
    else:
        reasons = "; ".join(f"{c.mode}: {c.skipped}" for c in outcome.calibrations)
        lines.append(f"No threshold could be set ({reasons}).")
    if outcome.test_split is not None:
        lines.append(f"Next: ff-eval --run {run_dir} (scores the {outcome.test_split} images).")
    else:
        lines.append(f"Next: ff-predict --run {run_dir} --images DIR --out DIR.")
    return " ".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it (shorter to retype)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _feature_cache(
    cfg: DictConfig, encoder: DinoEncoder, images: Dataset, distributed: DistributedContext
) -> Dataset:
    """The encoder taps of ``images`` (one category's, several categories' concatenated, or
    few-shot views), computed once (train.feature_cache).

    With a single view, items that change every epoch (augmentation, random training tiles)
    would be frozen to their epoch-0 version: then the cache stays off, and a note says how to
    cache several views instead.
    """
    cache = plain(cfg.train.feature_cache)
    settings = FeatureCacheSettings(**{k: v for k, v in cache.items() if k != "enabled"})
    varies = any(getattr(images, name, None) is not None for name in ("augment", "tiling"))
    if settings.views == 1 and varies:
        if distributed.is_main:
            LOG.info(
                "feature cache off: the training items change every epoch "
                "(augmentation or training tiles); set train.feature_cache.views=K to train on "
                "K cached views per image."
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


def _require_values(cfg: DictConfig) -> None:
    """Refuse mandatory settings (``???`` in the config, e.g. data.train_dir) left unset."""
    missing = [k for k, v in _flatten(OmegaConf.to_container(cfg)).items() if v == "???"]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required but not set; add "
            f"{' '.join(f'{k}=...' for k in missing)} to the command line."
        )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
