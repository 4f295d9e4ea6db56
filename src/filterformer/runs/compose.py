"""Where ff-train's hydra configs live, how they are composed, and one-line messages for
composition errors.

Nothing here imports torch, so that every ``--help`` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from filterformer.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig


def config_dir() -> Path:
    """The hydra config folder: the installed ``filterformer.configs``, else the repository's."""
    try:
        folder = Path(str(resources.files("filterformer.configs")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[3] / "configs"
    return folder


def config_groups(folder: Path) -> dict[str, list[str]]:
    """Each config group (a sub-folder of ``folder``, hydra's own aside) -> its choices.

    Files whose names start with ``_`` are shared parts that choices extend, not choices.
    """
    return {
        group.name: sorted(file.stem for file in group.glob("[!_]*.yaml"))
        for group in sorted(folder.iterdir())
        if group.is_dir() and group.name != "hydra" and any(group.glob("*.yaml"))
    }


HELP_PREFIX = "# help: "
"""The comment line of a group file that says in one line what the choice is."""
TABLE_GROUPS = ("preset", "model", "encoder", "data", "setting", "logger", "suite")
"""The groups the README's table lists choice by choice (then ``category``, in one row)."""


REST_GROUPS = {
    "category": "per category: tiling, post-processing and threshold rule (MVTec AD 2, MVTec "
    "AD, VisA; `custom` for your own images, `synthetic` for the generated one)",
}


def choice_help(folder: Path, group: str, choice: str) -> str:
    """The one-line description of ``<group>/<choice>.yaml`` (its ``# help:`` line), or ''."""
    for line in (folder / group / f"{choice}.yaml").read_text().splitlines()[:3]:
        if line.startswith(HELP_PREFIX):
            return line[len(HELP_PREFIX) :].strip()
    return ""


def default_choices(folder: Path) -> dict[str, str]:
    """The choice of each group that ``train.yaml``'s defaults list picks."""
    from omegaconf import DictConfig, OmegaConf

    defaults = OmegaConf.load(folder / "train.yaml").get("defaults", [])
    return {k: v for item in defaults if isinstance(item, DictConfig) for k, v in item.items()}


def config_table(folder: Path) -> str:
    """The README's table of config groups, generated from the config files (a test compares)."""
    groups, defaults = config_groups(folder), default_choices(folder)
    lines = ["| group | choice | what it is |", "|---|---|---|"]
    for group in [g for g in TABLE_GROUPS if g in groups]:
        for choice in groups[group]:
            default = " (default)" if defaults.get(group) == choice else ""
            help_text = choice_help(folder, group, choice)
            lines.append(f"| `{group}` | `{choice}`{default} | {help_text} |")
    rest = [g for g in groups if g not in TABLE_GROUPS]
    for group in rest:
        choices = ", ".join(f"`{c}`" for c in groups[group])
        lines.append(f"| `{group}` | {choices} | {REST_GROUPS.get(group, '')} |")
    return "\n".join(lines)


FOLDER_KEYS = (
    "train_dir",
    "validation_dir",
    "test_dir",
    "mask_dir",
    "normal_test_dir",
    "abnormal_dir",
)
"""data=folder's folders (checked to exist before anything heavy is imported)."""


def check_paths(cfg: DictConfig, base: Path) -> None:
    """Refuse missing input paths at once (before torch is imported: seconds): the data
    folders of data=folder and a given encoder weights file; relative paths from ``base``."""

    def missing(value: object) -> bool:
        path = Path(str(value)).expanduser()
        return not (path if path.is_absolute() else base / path).exists()

    data = cfg.get("data") or {}
    for key in FOLDER_KEYS:
        value = data.get(key) if data.get("kind") == "folder" else None
        if value not in (None, "???") and missing(value):
            raise ConfigError(f"data.{key}={value}: folder not found. Check the path.")
    weights = (cfg.get("encoder") or {}).get("weights")
    if weights and missing(weights):
        raise ConfigError(
            f"encoder.weights={weights}: file not found; put the encoder's weights file there "
            "(see weights/README.md)."
        )


def config_error_message(err: Exception) -> str:
    """One line for a hydra composition or omegaconf error (bad override, missing value, ...).

    Hydra and omegaconf write several lines (the config search path, ``full_key: ...``); the
    line keeps what names the culprit and, for an unknown choice, lists the valid ones.
    """
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    text = str(err).split("\n\n")[0]  # hydra appends the options and search path after a gap
    unknown = re.match(r"Could not override '([^']+)'\.\nTo append", text)
    if unknown:  # hydra suggests +key=value, which hides a misspelt name
        key = unknown.group(1)
        return (
            f"'{key}' is neither a setting nor a config group; check the spelling "
            f"(to add a new key on purpose, write +{key}=...)."
        )
    if isinstance(err, ConfigKeyError | ConfigAttributeError) and err.full_key:
        return f"setting {err.full_key} is missing from the config; check the overrides."
    if isinstance(err, OmegaConfBaseException):
        text = text.splitlines()[0] if text else type(err).__name__
        if err.full_key and err.full_key not in text:
            text += f" (key {err.full_key})"
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and not isinstance(err, OmegaConfBaseException):
        text += f" ({str(cause).splitlines()[0]})"
    if isinstance(err, OverrideParseException):
        text = f"cannot read the override {err.override!r}: {text}"
    if isinstance(err, MissingConfigException) and err.options:
        text += f"; valid: {', '.join(sorted(err.options))}"
    return " ".join(text.split())


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """ff-train's config for ``overrides`` (``key=value``, ``group=choice``), as ff-train
    composes it; hydra's errors become one-line :class:`ConfigError` messages."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return compose(config_name="train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(config_error_message(err)) from None


def category_threshold_rule(category: str) -> dict:
    """The threshold rule of ``configs/category/<category>.yaml`` (``custom``'s for a category
    without a config): where every default threshold rule lives."""
    from omegaconf import OmegaConf

    known = (config_dir() / "category" / f"{category}.yaml").is_file()
    config = compose_config([f"category={category if known else 'custom'}"])
    return OmegaConf.to_container(config.category.threshold, resolve=True)
