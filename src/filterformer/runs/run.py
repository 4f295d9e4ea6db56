"""Run folders: create one from a resolved config, and load one back as ready-to-use objects.

A run folder (docs/architecture.md) holds one model trained on one category. Its
``config.yaml`` is the single source of truth: :func:`load_run` rebuilds the encoder and the
model from it, loads the checkpoint that fits the chosen fusion mode, and collects the
settings that ff-eval and ff-predict need (geometry, smoothing, tiling, post-processing,
thresholds). A relative ``encoder.weights`` path that names a file inside the run folder is
read from there, so a self-contained run folder (ff-convert's) can be moved.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import filterformer
from filterformer.data.datasets import READERS, read_split
from filterformer.data.datasets import SPLITS as DATASET_SPLITS
from filterformer.data.folder import (
    ImageFolderDataset,
    folder_test_set,
    holdout_names,
    split_holdout,
)
from filterformer.data.pseudo_split import SPLIT as PSEUDO_SPLIT
from filterformer.data.pseudo_split import pseudo_validation
from filterformer.data.sample import Sample
from filterformer.data.tiling import AnyTiling, GridTiling, Tiling
from filterformer.data.transforms import InputGeometry
from filterformer.errors import CheckpointError, ConfigError, DataError
from filterformer.evaluation.protocol import MVTEC_AD2, check_protocol, resolve_image_score
from filterformer.evaluation.thresholds import Threshold, read_thresholds
from filterformer.export.manifest import graph_record
from filterformer.inference.predict import Smoothing
from filterformer.inference.run import Run
from filterformer.io import atomic_path, check_name, require_run_folder, write_json
from filterformer.manifest import signing
from filterformer.models.base import FrozenEncoderModel
from filterformer.models.encoder import weights_sha256
from filterformer.models.registry import (
    build_encoder,
    build_model,
    encoder_hub_name,
    encoder_stride,
    family,
)
from filterformer.runs.compose import category_threshold_rule
from filterformer.runs.files import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    THRESHOLDS_FILE,
    VERSIONS_FILE,
    parse_map_stats,
    read_fusion,
    read_map_stats,
    verify_run_files,
)
from filterformer.runs.setting import Member, member, members
from filterformer.training.checkpoint import (
    LoadedCheckpoint,
    checkpoint_files,
    has_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
)
from filterformer.training.seed import seed_everything

LOG = logging.getLogger("filterformer")
DATA_KINDS = (*READERS, "folder")
DEFAULT_HOLDOUT_FRACTION = 0.1
"""Share of the training images held out as validation when a folder run has no validation_dir."""


def build_geometry(config: DictConfig) -> InputGeometry:
    """The network input geometry of ``config.input`` (``fit`` is ``squash`` when absent).

    A fit that keeps the aspect ratio works on whole images only: tiles are cut at the
    category's fixed tile shape and trained as squashed crops.
    """
    crop = config.input.get("crop")
    fit = config.input.get("fit", "squash")
    tiling = config.category.get("tiling")
    if fit != "squash" and tiling and tiling.enabled:
        raise ConfigError(
            f"input.fit={fit} keeps whole images' aspect ratio, but category "
            f"{config.category.name!r} is scored in tiles (category.tiling.enabled=true). Set "
            "input.fit=squash (tiles are resized as the MVTec AD 2 recipes do), or "
            "category.tiling.enabled=false."
        )
    return InputGeometry(
        list(config.input.resize),
        None if crop is None else list(crop),
        interpolation=config.input.get("interpolation", "area"),
        fit=fit,
    )


def patch_size(config: DictConfig) -> int:
    """The side network inputs must be a multiple of: the encoder's patch (or CNN stride)."""
    return encoder_stride(config.encoder.variant)


def build_tiling(config: DictConfig, *, training: bool = False) -> AnyTiling | None:
    """The category's tiling (sliding windows or an ISVL grid), or None when it is off.

    ``training``: the tiling of training crops, None unless ``category.tiling.train`` too.
    """
    tiling = config.category.get("tiling")
    if not tiling or not tiling.enabled or (training and not tiling.get("train", False)):
        return None
    mode = tiling.get("mode", "window")
    if mode == "grid":
        pyramid = tiling.get("pyramid") if training else None
        return GridTiling(list(tiling.grid), None if pyramid is None else list(pyramid))
    if mode != "window":
        raise ConfigError(f"category.tiling.mode={mode!r}: use window (overlapping) or grid.")
    return Tiling(tuple(tiling.tile), tiling.overlap, tiling.get("window", "hann"))


def build_smoothing(config: DictConfig) -> Smoothing:
    """The map smoothing of ``config.eval`` (module defaults for keys an older run lacks)."""
    settings, default = config.eval, Smoothing()
    size = settings.get("protocol_size")
    return Smoothing(
        sigma=float(settings.get("sigma", default.sigma)),
        kernel_size=int(settings.get("blur_kernel", default.kernel_size)),
        padding=settings.get("blur_padding", default.padding),
        size=None if size is None else tuple(int(v) for v in size),
        at_original=settings.get("blur_at", "network") == "original",
        levels=settings.get("levels"),
    )


def protocol_of(config: DictConfig) -> str:
    """``eval.protocol`` (``mvtec_ad2`` when an older run lacks it), validated."""
    return check_protocol(config.eval.get("protocol") or MVTEC_AD2)


def image_score_rule(config: DictConfig, protocol: str | None = None) -> str:
    """``eval.image_score``, else the image score of ``protocol`` (default: the run's); a
    ``sum_top<T>`` rule counts T on the network input's size."""
    rule, protocol = config.eval.get("image_score"), protocol or protocol_of(config)
    counted = isinstance(rule, str) and rule.startswith("sum_top")
    return resolve_image_score(
        rule, protocol, build_geometry(config).input_size if counted else None
    )


def resolve_run_paths(config: DictConfig, run_dir: Path) -> DictConfig:
    """A copy of ``config`` whose relative ``encoder.weights`` points into ``run_dir``.

    Only when that file exists there; otherwise the path is left as it is (relative to the
    working folder, as the user gave it).
    """
    config = config.copy()
    weights = config.encoder.get("weights")
    if weights and not Path(weights).expanduser().is_absolute():
        inside = run_dir / weights
        if inside.is_file():
            config.encoder.weights = str(inside)
    return config


def encoder_weights_id(config: DictConfig) -> str:
    """What identifies the frozen encoder's weights: the file's SHA-256, the hub or the seed.

    A randomly initialised encoder is reproduced by seeding with ``config.seed`` before it is
    built (:func:`build_from_config`), so the seed identifies it.
    """
    encoder = config.encoder
    if encoder.get("weights"):
        path = Path(encoder.weights).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"encoder weights file {path} not found; put it there or set encoder.weights "
                "(see weights/README.md)."
            )
        return weights_sha256(path)
    if encoder.get("pretrained"):
        return f"hub:{encoder_hub_name(encoder.variant)}"
    return f"random:seed={config.seed}"


def build_from_config(
    config: DictConfig, *, from_base_run: bool = True
) -> tuple[FrozenEncoderModel, dict[str, Any]]:
    """Seed, build the encoder and the model of ``config``; return it with its identity.

    The identity (``model``, ``encoder``, ``encoder_weights``) is what checkpoints record and
    what loading them checks. A model trained on top of another run (its family's
    ``base_run``, whose key in ``model`` names that run's folder) starts from it;
    ``from_base_run=False`` skips them (:func:`load_run`: the run's own checkpoint holds
    every weight, so the base run need not exist any more).
    """
    seed_everything(int(config.seed))
    encoder_args = OmegaConf.to_container(config.encoder, resolve=True)
    model_args = OmegaConf.to_container(config.model, resolve=True)
    name = model_args.pop("name")
    base_run = family(name).base_run
    base_key = None if base_run is None else base_run.key
    model_args.pop(base_key, None)
    encoder = build_encoder(encoder_args.pop("variant"), **encoder_args)
    model = build_model(name, encoder, **model_args)
    identity = {
        "model": config.model.name,
        "encoder": config.encoder.variant,
        "encoder_weights": encoder_weights_id(config),
    }
    if base_key is not None and from_base_run:
        start_from_base_run(model, config, identity)
    return model, identity


def start_from_base_run(
    model: FrozenEncoderModel, config: DictConfig, identity: Mapping[str, Any]
) -> None:
    """Load into ``model`` the trained weights of the run its config builds on.

    The base run must hold the base model with the same settings (``model`` keeps them, e.g.
    the model keeps its base's architecture) and the same encoder weights.
    """
    name = config.model.name
    base_run = family(name).base_run
    key, base_name = base_run.key, base_run.family
    if not config.model.get(key):
        raise ConfigError(
            f"model={name} starts from a trained {base_name} run: set model.{key}=<its run "
            f"folder> (made by ff-train model={base_name} ...)."
        )
    run_dir = Path(config.model[key]).expanduser()
    base = read_run_config(run_dir)
    if base.model.name != base_name:
        raise ConfigError(
            f"model.{key}={run_dir} holds model {base.model.name}; model={name} needs a run of "
            f"model {base_name} (ff-train model={base_name} ...)."
        )
    settings = OmegaConf.to_container(base.model, resolve=True)
    settings.pop("name")
    ours = OmegaConf.to_container(config.model, resolve=True)
    differing = {k: v for k, v in settings.items() if ours.get(k) != v}
    if differing:
        fix = " ".join(f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in differing.items())
        raise ConfigError(
            f"{run_dir} was trained with other {base_name} settings than this config; add {fix}"
        )
    base_model = build_model(base_name, model.encoder, **settings)
    fix = f"Restore {run_dir} from a copy, or train it again (ff-train model={base_name} ...)."
    verify_run_files(run_dir, fix)
    modes = base_model.fusion_modes
    mode = _fusion_mode(run_dir, members(base)[0], modes)
    checkpoint = _default_checkpoint(run_dir, _check_mode(run_dir, base, modes, mode))
    expected = {**identity, "model": base_name}
    load_checkpoint(run_dir / CHECKPOINTS_DIR / checkpoint, base_model, expected=expected, fix=fix)
    model.load_state_dict(base_model.trainable_state_dict(), strict=False)


def split_samples(
    config: DictConfig, split: str, root: str | os.PathLike | None = None
) -> Sequence[Sample]:
    """The samples of ``split`` for the run's data source and category.

    Root-based data (``mvtec_ad2``, ``synthetic``, ``mvtec_ad``, ``visa``) is read from
    ``root``, else ``data.root``, with the splits of its reader; a ``folder`` source maps
    ``train`` / ``validation`` / ``test_public`` to its train_dir / validation_dir / test_dir
    (test_dir/good/ and defect subfolders, or data.normal_test_dir and data.abnormal_dir;
    masks optional in mask_dir: :func:`~filterformer.data.folder.folder_test_set`). Without
    a validation_dir, the validation split is the training images named in ``data.holdout``
    (ff-train stores them; when absent they are drawn by :func:`holdout_names` with
    ``data.validation_fraction`` and the run's seed), and the train split is the rest.
    """
    data, category = config.data, config.category.name
    if split == PSEUDO_SPLIT:
        return pseudo_samples(config, split_samples(config, "validation", root))
    if data.kind in READERS:
        return read_split(data.kind, data.root if root is None else root, category, split)
    if data.kind != "folder":
        raise ConfigError(f"unknown data.kind {data.kind!r}; valid: {', '.join(DATA_KINDS)}.")
    if split == "test_public" and has_folder_test(data):
        return folder_test_set(
            data.test_dir,
            data.get("mask_dir"),
            category,
            data.get("normal_test_dir"),
            data.get("abnormal_dir"),
        )
    if split == "validation" and data.validation_dir is not None:
        return ImageFolderDataset(data.validation_dir, "train", None, category)
    if split not in ("train", "validation"):
        raise ConfigError(
            f"data.kind=folder has no folder for split {split!r}: test_public is data.test_dir "
            "(good/ and defect subfolders, masks optional in data.mask_dir), set when training. "
            "To score any folder of images, use ff-predict --images DIR."
        )
    train = ImageFolderDataset(data.train_dir, "train", None, category)
    if data.validation_dir is not None:
        return train
    holdout = data.get("holdout")
    if holdout is None:
        holdout = holdout_names(train, holdout_fraction(config), int(config.seed))
    kept, held = split_holdout(train, holdout)
    return kept if split == "train" else held


def has_folder_test(data: DictConfig) -> bool:
    """Whether a folder run names test images (test_dir, normal_test_dir or abnormal_dir)."""
    keys = ("test_dir", "normal_test_dir", "abnormal_dir")
    return any(data.get(key) is not None for key in keys)


def holdout_fraction(config: DictConfig) -> float:
    """``data.validation_fraction``: the share of train_dir held out without a validation_dir."""
    return float(config.data.get("validation_fraction", DEFAULT_HOLDOUT_FRACTION))


def pseudo_samples(
    config: DictConfig,
    validation: Sequence[Sample],
    cache_dir: str | os.PathLike | None = None,
    mixed: bool = False,
) -> list[Sample]:
    """The ``validation_pseudo`` split of ``validation`` by ``config.eval.pseudo``.

    ``cache_dir`` defaults to ``eval.pseudo.dir`` (the run folder's ``validation_pseudo``); a
    category of a multi-category run uses its sub-folder ``<key>`` (``eval.pseudo.member``).
    """
    settings = config.eval.get("pseudo") or {}
    cache = cache_dir or settings.get("dir")
    if not cache:
        raise ConfigError(
            f"split {PSEUDO_SPLIT} needs a cache folder: set eval.pseudo.dir (e.g. "
            "${run_dir}/validation_pseudo)."
        )
    if settings.get("member"):  # one category of a multi-category run: its own sub-folder
        cache = Path(cache) / str(settings.get("member"))
    kinds = settings.get("kinds")
    return pseudo_validation(
        validation,
        cache,
        int(settings.get("seed", 0)),
        None if kinds is None else dict(kinds),
        mixed,
    )


def run_pseudo_samples(
    run: Run, root: str | os.PathLike | None = None, mixed: bool = False
) -> list[Sample]:
    """A loaded run's validation_pseudo(_mixed) samples, cached in its folder (``root``: data)."""
    validation = split_samples(run.config, "validation", root)
    return pseudo_samples(run.config, validation, run.run_dir / PSEUDO_SPLIT, mixed)


def optional_split(config: DictConfig, split: str) -> Sequence[Sample] | None:
    """The split's samples, or None when the data source has no such split.

    MVTec AD and VisA have no validation split, and an MVTec AD 2-layout root may lack one.
    """
    data = config.data
    if split == PSEUDO_SPLIT:
        validation = optional_split(config, "validation")
        return None if validation is None else pseudo_samples(config, validation)
    if data.kind == "folder":  # validation: validation_dir, else held-out training images
        test = split == "test_public" and has_folder_test(data)
        return split_samples(config, split) if split == "validation" or test else None
    if split not in DATASET_SPLITS.get(data.kind, ()):
        return None
    if (
        data.kind in ("mvtec_ad2", "synthetic")
        and not (Path(data.root) / config.category.name / split).is_dir()
    ):
        return None
    return split_samples(config, split)


def require_training_splits(config: DictConfig) -> None:
    """Refuse up front a dataset category without the validation split its training needs.

    In the MVTec AD 2 layout, ``validation/`` is what the map statistics, the best
    checkpoints and the threshold come from; a run trained without it would have none of
    them, and ff-eval would fail only afterwards. (The synthetic category is generated with
    it; MVTec AD and VisA have no validation split, and are scored without one.)
    """
    data, category = config.data, config.category.name
    if data.kind == "synthetic" or "validation" not in DATASET_SPLITS.get(data.kind, ()):
        return
    folder = Path(data.root) / category / "validation"
    if (Path(data.root) / category).is_dir() and not folder.is_dir():
        raise DataError(
            f"{folder}: missing. Training on {data.kind} data needs the category's validation "
            "images (map statistics, best checkpoints and the threshold come from them): "
            "restore the folder from the dataset archive, or train on the images with "
            "data=folder, which holds some training images out as validation."
        )


def versions(seed: int, encoder_weights: str) -> dict[str, Any]:
    """Library versions, git commit and the run's seed and encoder identity (versions.json)."""
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "hydra-core": metadata.version("hydra-core"),
        "filterformer": filterformer.__version__,
        "git_commit": _git_commit(),
        "seed": seed,
        "encoder_weights": encoder_weights,
    }


def _git_commit() -> str | None:
    """The commit of the filterformer source tree, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(filterformer.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def create_run(run_dir: str | Path, config: DictConfig, encoder_weights: str) -> Path:
    """Write config.yaml (resolved) and versions.json into ``run_dir``, signed; return its path.

    The caller is the run's writer (it holds the run's lock).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with signing(run_dir, run_dir / CONFIG_FILE, run_dir / VERSIONS_FILE):
        with atomic_path(run_dir / CONFIG_FILE) as tmp:
            tmp.write_text(OmegaConf.to_yaml(config, resolve=True))
        write_json(run_dir / VERSIONS_FILE, versions(int(config.seed), encoder_weights))
    return run_dir


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    checkpoint: str | None = None,
    verify: bool = True,
    mode: str | None = None,
    read_threshold: bool = True,
    category: str | None = None,
) -> Run:
    """Load a run folder: model (eval mode) with the checkpoint of its fusion mode, and settings.

    ``mode``: a fusion mode other than the run's own (fusion.json). ``checkpoint`` names a
    checkpoint in ``checkpoints/`` (e.g. ``"last"``); by default it is ``best_<mode>`` when
    that exists, else ``last``. ``verify``: check the run's files against its manifest and
    the checkpoint's files against the SHA-256 its metadata records, before anything is
    built (False skips that, the user's explicit choice). The mode's threshold comes from
    thresholds.json (``read_threshold=False``: not read, for calibration); one calibrated on
    another checkpoint is refused. ``category``: which category of a model trained on
    several (setting=multi_class ...; :func:`load_runs` loads them all).
    """
    keys = None if category is None else [category]
    options = dict(checkpoint=checkpoint, verify=verify, mode=mode, read_threshold=read_threshold)
    runs = load_runs(run_dir, device=device, categories=keys, **options)
    if len(runs) > 1:
        raise ConfigError(
            f"{run_dir} holds one model of {len(runs)} categories "
            f"({', '.join(r.category for r in runs)}); name one (--category, or "
            "load_run(..., category=...)), or load them all (load_runs)."
        )
    return runs[0]


def load_runs(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    checkpoint: str | None = None,
    verify: bool = True,
    mode: str | None = None,
    read_threshold: bool = True,
    categories: Sequence[str] | None = None,
) -> list[Run]:
    """Every category of a run folder (``categories``: those), loaded as one :class:`Run`
    each, in training order; a single-class run gives one. The categories of a multi-class
    model share its weights (one copy per checkpoint). The options are :func:`load_run`'s."""
    run_dir = Path(run_dir)
    if verify:
        require_run_folder(run_dir)
        verify_run_files(run_dir)
    config = resolve_run_paths(read_run_config(run_dir), run_dir)
    chosen = members(config) if categories is None else [member(config, k) for k in categories]
    modes = family(config.model.name).model.fusion_modes
    models: dict[str, tuple[FrozenEncoderModel, LoadedCheckpoint]] = {}
    runs = []
    for part in chosen:
        key_mode = _check_mode(run_dir, config, modes, mode or _fusion_mode(run_dir, part, modes))
        name = checkpoint or _default_checkpoint(run_dir, key_mode)
        if name not in models:  # one model per checkpoint the categories use (usually one)
            model, identity = build_from_config(config, from_base_run=False)
            loaded = load_checkpoint(
                run_dir / CHECKPOINTS_DIR / name, model, expected=identity, verify=verify
            )
            model.to(device).eval()
            geometry = build_geometry(part.config)
            weights = identity["encoder_weights"]
            family(config.model.name).load_run_files(model, run_dir, geometry, weights)
            models[name] = (model, loaded)
        model, loaded = models[name]
        threshold = None
        if read_threshold:
            sha = _weights_sha(loaded) if verify else None
            threshold = _stored_threshold(run_dir, part.key, key_mode, sha, checkpoint is not None)
        runs.append(_member_run(run_dir, part, model, loaded, key_mode, threshold))
    return runs


def _member_run(
    run_dir: Path,
    part: Member,
    model: FrozenEncoderModel,
    loaded: LoadedCheckpoint,
    mode: str,
    threshold: Threshold | None,
) -> Run:
    """The :class:`Run` of one category of a loaded model."""
    view = part.config
    map_stats = _checkpoint_map_stats(run_dir, loaded.meta, loaded.files.meta)
    root = view.data.get("root")
    return Run(
        run_dir=run_dir,
        config=view,
        model=model,
        checkpoint=loaded.files.weights,
        geometry=build_geometry(view),
        category=part.key,
        mode=mode,
        map_stats=map_stats,
        threshold=threshold,
        threshold_rule=dict(
            view.category.get("threshold") or category_threshold_rule(view.category.name)
        ),
        postprocess=dict(view.category.get("postprocess") or {}),
        tiling=build_tiling(view),
        data_root=None if root is None else Path(root),
        smoothing=build_smoothing(view),
        protocol=protocol_of(view),
        image_score=image_score_rule(view),
    )


def _checkpoint_map_stats(
    run_dir: Path, meta: Mapping[str, Any], meta_file: Path
) -> dict[str, tuple[float, float]] | None:
    """A best checkpoint carries the statistics of its own maps; `last` uses map_stats.json."""
    stored = meta.get("map_stats")
    if stored is None:
        return read_map_stats(run_dir)
    fix = "Restore it from a copy of the run folder, or use another checkpoint."
    return parse_map_stats(stored, f"{meta_file}: map_stats", fix)


def current_state(run_dir: str | Path, category: str | None = None) -> dict[str, Any]:
    """export.json's graph keys of the run folder as it is now, without building its model.

    What ff-predict compares with an export before it runs it: the checkpoint ``load_run``
    would load (its SHA-256), the fusion mode and statistics, smoothing and image score of
    ``category`` (needed for a run of several categories).
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    parts = members(config) if category is None else [member(config, category)]
    if len(parts) > 1:
        raise ConfigError(
            f"{run_dir} holds one model of {len(parts)} categories; name one (--category)."
        )
    part, modes = parts[0], family(config.model.name).model.fusion_modes
    mode = _check_mode(run_dir, config, modes, _fusion_mode(run_dir, part, modes))
    checkpoint = run_dir / "checkpoints" / _default_checkpoint(run_dir, mode)
    files = checkpoint_files(checkpoint)
    map_stats = _checkpoint_map_stats(run_dir, read_checkpoint_meta(checkpoint), files.meta)
    return graph_record(
        config.model.name,
        config.encoder.variant,
        files.weights,
        mode,
        map_stats,
        build_smoothing(part.config),
        image_score_rule(part.config),
    )


def _default_checkpoint(run_dir: Path, mode: str) -> str:
    """``best_<mode>`` if the run saved one, else ``last``.

    A verified run cannot have lost its best checkpoint (the manifest lists it); an
    unverified one that evaluated (fusion.json) but has none is said to fall back.
    """
    best = f"best_{mode}"
    if has_checkpoint(run_dir / CHECKPOINTS_DIR / best):
        return best
    if (run_dir / "fusion.json").is_file():
        LOG.warning("%s: no checkpoints/%s.json; using checkpoints/last", run_dir, best)
    return "last"


def read_run_config(run_dir: Path) -> DictConfig:
    """The run's config.yaml, checked to be an ff-train run config with a usable category."""
    file = require_run_folder(run_dir)
    try:
        config = OmegaConf.load(file)
    except Exception as err:  # PyYAML's errors (omegaconf's parser), omegaconf's, decoding
        problem = " ".join(str(err).split())
        raise ConfigError(
            f"{file}: not a readable run config ({problem}). Restore it from a copy of the run."
        ) from None
    if not isinstance(config, DictConfig) or not all(
        isinstance(config.get(key), DictConfig) for key in ("model", "category")
    ):
        raise ConfigError(f"{file}: not an ff-train run config (no model/category section).")
    check_name(config.category.get("name"), f"{file}: category.name")
    return config


def fusion_modes(run_dir: str | Path) -> tuple[str, ...]:
    """The fusion modes the run's model offers (its family's model class says)."""
    return family(read_run_config(Path(run_dir)).model.name).model.fusion_modes


def _weights_sha(loaded: LoadedCheckpoint) -> str:
    """SHA-256 of the loaded weights: as recorded (and verified on loading), else computed."""
    recorded = ((loaded.meta.get("files") or {}).get("weights") or {}).get("sha256")
    return recorded or weights_sha256(loaded.files.weights)


def _stored_threshold(
    run_dir: Path, category: str, mode: str, sha: str | None, chosen: bool
) -> Threshold | None:
    """The mode's threshold from thresholds.json, checked to be of the loaded checkpoint,
    whose weights have SHA-256 ``sha`` (None: not checked, the user's ``--no-verify``).

    One of another checkpoint is refused; with a checkpoint the caller chose (not the mode's
    own), there is simply none.
    """
    thresholds_file = run_dir / THRESHOLDS_FILE
    if not thresholds_file.is_file():
        return None
    threshold = read_thresholds(thresholds_file, mode).get(category)
    if sha is None or threshold is None:
        return threshold
    if threshold.checkpoint != sha:
        if chosen:
            return None
        raise CheckpointError(
            f"{thresholds_file}: the {mode!r} threshold of {category!r} was calibrated on "
            f"another checkpoint than the one loaded. Calibrate it again: ff-eval --calibrate "
            f"--run {run_dir}"
        )
    return threshold


def _fusion_mode(run_dir: Path, part: Member, modes: Sequence[str]) -> str:
    """fusion.json's mode for the category, else the config's default, else the model's own map."""
    mode = read_fusion(run_dir, part.key)
    mode = mode or part.config.eval.get("default_mode")
    return mode or ("filter" if "filter" in modes else modes[0])


def _check_mode(run_dir: Path, config: DictConfig, modes: Sequence[str], mode: str) -> str:
    """``mode`` if the run's model offers it (``modes``)."""
    if mode not in modes:
        raise ConfigError(
            f"{run_dir}: fusion mode {mode!r} is not available for model {config.model.name!r}; "
            f"valid: {', '.join(modes)}. Fix fusion.json or eval.default_mode."
        )
    return mode
