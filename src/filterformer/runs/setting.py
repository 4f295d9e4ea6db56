"""INP-Former's settings: one model per category, or one model on several (its members).

A single-class run (no ``setting`` section, or ``setting.name: single_class``) has one member:
its own config. A multi-class, few-shot or super-multi-class run (configs/setting/) lists its
members in ``setting.members``, which ff-train fills once (:func:`resolve_members`) so the
run folder is self-contained: each entry holds its ``key`` (the category's name; with several
data sources ``<kind>.<category>``), its ``data`` section, its ``category`` section and, for
few-shot, the ``shots`` it trains on (the drawn images, relative to the category folder).

:func:`members` turns them into :class:`Member` views: the run's config with the member's
``data`` and ``category`` in place and no ``setting``, so that everything written for one
category (readers, geometry, tiling, thresholds, evaluation) works on each member unchanged.
Keys index the run folder's per-category files (fusion.json, thresholds.json).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from filterformer.data.datasets import OFFICIAL_CATEGORIES
from filterformer.data.few_shot import FewShotViews, draw_shots
from filterformer.data.mvtec_ad2 import resolve_data_root
from filterformer.data.synthetic import TEXTURES
from filterformer.errors import ConfigError
from filterformer.io import check_name
from filterformer.runs.compose import config_dir

SINGLE_CLASS = "single_class"
FEW_SHOT = "few_shot"
SETTINGS = (SINGLE_CLASS, "multi_class", FEW_SHOT, "super_multi_class")
FOLDER_DIRS = ("train_dir", "validation_dir", "test_dir", "mask_dir")
"""data=folder: the folders that hold one sub-folder per category in a multi-class run."""


@dataclass(frozen=True)
class Member:
    """One category of a run: its key and the run's config seen as a one-category config."""

    key: str
    config: DictConfig
    shots: tuple[str, ...] | None = None
    """Few-shot: the training images it trains on (relative paths without suffix)."""


def setting_name(config: DictConfig) -> str:
    """The run's setting: ``single_class`` unless its config has a ``setting`` section."""
    setting = config.get("setting")
    name = SINGLE_CLASS if setting is None else setting.get("name", SINGLE_CLASS)
    if name not in SETTINGS:
        raise ConfigError(f"setting.name={name!r} is unknown; valid: {', '.join(SETTINGS)}.")
    return name


def is_single(config: DictConfig) -> bool:
    """True for a one-category run (every run made before the setting group existed)."""
    return setting_name(config) == SINGLE_CLASS


def members(config: DictConfig) -> list[Member]:
    """The run's members in training order: one view per category (itself when single-class)."""
    if is_single(config):
        return [Member(str(config.category.name), config)]
    entries = config.setting.get("members")
    if not entries:
        raise ConfigError(
            f"setting={setting_name(config)} lists no members (setting.members); ff-train "
            "fills them: train the run with ff-train, not by hand."
        )
    out = []
    for entry in entries:
        view = OmegaConf.masked_copy(config, [k for k in config if k != "setting"])
        view.data = OmegaConf.to_container(entry.data, resolve=True)
        view.category = OmegaConf.to_container(entry.category, resolve=True)
        if view.eval.get("pseudo") is not None:  # its own validation_pseudo sub-folder
            view.eval.pseudo.member = str(entry.key)
        shots = entry.get("shots")
        key = check_name(str(entry.key), "setting.members key")  # names output folders
        out.append(Member(key, view, None if shots is None else tuple(shots)))
    return out


def member(config: DictConfig, key: str) -> Member:
    """The member ``key`` of the run (a ConfigError lists the keys when there is none)."""
    found = {m.key: m for m in members(config)}
    if key not in found:
        raise ConfigError(f"the run has no category {key!r}; its categories: {', '.join(found)}.")
    return found[key]


def resolve_members(cfg: DictConfig, base: Path) -> None:
    """Fill ``setting.members`` of a multi-category config (once; kept when already set).

    The categories are ``setting.categories`` of the run's ``data`` (null: all of them), then
    those of each ``setting.datasets`` source (``kind: root``, all its categories, or
    ``kind: {root: ..., categories: [...]}``). Relative roots are taken from
    ``base``. Few-shot then draws each category's shots (:func:`draw_shots_of`).
    """
    if is_single(cfg) or cfg.setting.get("members"):
        return
    sources = [(cfg.data, cfg.setting.get("categories"))]
    for kind, spec in (cfg.setting.get("datasets") or {}).items():
        root, names = (spec.get("root"), spec.get("categories")) if _is_map(spec) else (spec, None)
        sources.append((_dataset_section(kind, root, base), names))
    qualified = len(sources) > 1
    entries = []
    for data, names in sources:
        for name in names or default_categories(data):
            key = f"{data.kind}.{name}" if qualified else str(name)
            entry = {"key": key, "data": _member_data(data, name)}
            entry["category"] = category_settings(cfg, name)
            if setting_name(cfg) == FEW_SHOT:
                entry["shots"] = None  # drawn by draw_shots_of
            entries.append(entry)
    keys = [e["key"] for e in entries]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"setting.categories names a category twice: {keys}.")
    cfg.setting.members = entries


def _is_map(value: Any) -> bool:
    return isinstance(value, Mapping | DictConfig)


def default_categories(data: DictConfig) -> Sequence[str]:
    """Every category of a data source: the dataset's list, or data=folder's sub-folders."""
    if data.kind == "folder":
        folder = Path(data.train_dir)
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if data.kind not in OFFICIAL_CATEGORIES:
        raise ConfigError(
            f"data={data.kind} has no fixed category list: name them, e.g. "
            "setting.categories=[brick,grass]."
        )
    return OFFICIAL_CATEGORIES[data.kind]


def category_settings(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The ``category`` section of category ``name`` in this run.

    Its own config file (configs/category/<name>.yaml; without one, data=synthetic's
    ``synthetic`` or else ``custom``), with every setting the run's ``category`` section gives
    (not null: what the preset and the command line changed, category/_members.yaml) on top,
    and named ``name``. For a single-class ``cfg`` (zero-shot targets): its own file only.
    """
    changes = {} if is_single(cfg) else _given(OmegaConf.to_container(cfg.category, resolve=True))
    changes.pop("name", None)
    fallback = "synthetic" if cfg.data.kind == "synthetic" else "custom"
    settings = load_category_file(name) or load_category_file(fallback) or {}
    merged = OmegaConf.merge(settings, changes)
    merged.name = name
    return OmegaConf.to_container(merged, resolve=True)


def _given(section: Mapping[str, Any]) -> dict[str, Any]:
    """``section`` without its null entries (nested)."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            if nested := _given(value):
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


def load_category_file(name: str) -> dict[str, Any] | None:
    """configs/category/<name>.yaml with the files its ``defaults`` list extends, or None.

    Category files extend shared parts of their own group (``defaults: [_benchmark, _self_]``);
    this composes them in that order, as hydra does.
    """
    folder = config_dir() / "category"
    path = folder / f"{name}.yaml"
    if not path.is_file() or name.startswith("_"):
        return None
    return OmegaConf.to_container(_compose_file(folder, path), resolve=True)


def _compose_file(folder: Path, path: Path) -> DictConfig:
    raw = OmegaConf.load(path)
    defaults = raw.pop("defaults", None) or ["_self_"]
    merged = OmegaConf.create()
    for item in defaults:
        part = raw if item == "_self_" else _compose_file(folder, folder / f"{item}.yaml")
        merged = OmegaConf.merge(merged, part)
    return merged


def _dataset_section(kind: str, root: str | None, base: Path) -> DictConfig:
    """The ``data`` section of another source of a super-multi-class run (configs/data/)."""
    path = config_dir() / "data" / f"{kind}.yaml"
    if kind not in OFFICIAL_CATEGORIES or not path.is_file():
        raise ConfigError(
            f"setting.datasets.{kind}: not a dataset with fixed categories; use one of "
            f"{', '.join(OFFICIAL_CATEGORIES)}."
        )
    section = OmegaConf.load(path)
    section.root = str((base / resolve_data_root(root)).resolve())
    return section


def _member_data(data: DictConfig, name: str) -> dict[str, Any]:
    """A member's ``data`` section: the source's, with a category's own folders or texture."""
    section = OmegaConf.to_container(data, resolve=True)
    if data.kind == "folder":
        for key in FOLDER_DIRS:
            if section.get(key) is not None:
                section[key] = os.path.join(section[key], name)
        section["holdout"] = None
    elif data.kind == "synthetic" and name in TEXTURES:
        section["texture"] = name
    return section


def draw_shots_of(cfg: DictConfig) -> None:
    """Few-shot: each member's ``shots``, drawn from its training split with the run's seed."""
    from filterformer.runs.run import split_samples

    views = members(cfg)
    pools = [split_samples(m.config, "train") for m in views]
    drawn = draw_shots(pools, int(cfg.setting.shots), int(cfg.seed))
    for entry, samples in zip(cfg.setting.members, drawn, strict=True):
        entry.shots = [str(s.relpath) for s in samples]


def few_shot_views(config: DictConfig) -> FewShotViews:
    """The fixed views of a few-shot run (``setting.views``)."""
    views = config.setting.views
    return FewShotViews(
        rotations=tuple(float(v) for v in views.rotations),
        translations=tuple((float(x), float(y)) for x, y in views.translations),
        hflip=bool(views.hflip),
        grey_weights=None if views.grey_weights is None else tuple(views.grey_weights),
        quarter_turns=tuple(int(k) for k in views.quarter_turns),
    )


def fusion_keys(config: DictConfig) -> str | list[str]:
    """The entries of the run's fusion.json: its category, or each member's key."""
    if is_single(config):
        return str(config.category.name)
    return [m.key for m in members(config)]


def categories_text(config: DictConfig) -> str:
    """What a run was trained on, for tables: ``mvtec_ad: 15 categories (multi_class)``."""
    if is_single(config):
        return f"{config.data.kind}: {config.category.name}"
    kinds: dict[str, int] = {}
    for entry in config.setting.members:
        kinds[entry.data.kind] = kinds.get(entry.data.kind, 0) + 1
    parts = " + ".join(f"{kind}: {count} categories" for kind, count in kinds.items())
    return f"{parts} ({setting_name(config)})"
