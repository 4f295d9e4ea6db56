"""Zero-shot evaluation: a trained run on categories (and data) it never saw, without training.

As the INP-Former code's zero-shot script does (``INP_Former_Zero_Shot.py``): the model
trained on one dataset is evaluated on another's categories, its INPs taken from each test
image itself. By default the map is the one that code evaluates, each token's distance to
the image's nearest INP (the model family's ``zero_shot_maps``; no decoder, no fusion
statistics); ``map_name="reconstruction"`` keeps the run's own map (our option).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from filterformer.data.datasets import OFFICIAL_CATEGORIES, READERS
from filterformer.data.mvtec_ad2 import resolve_data_root
from filterformer.errors import ConfigError
from filterformer.evaluation.protocol import ZERO_SHOT_MAPS
from filterformer.inference.run import Run
from filterformer.models.registry import family
from filterformer.runs.compose import category_threshold_rule, config_dir
from filterformer.runs.run import (
    build_geometry,
    build_smoothing,
    build_tiling,
    image_score_rule,
    load_runs,
    read_run_config,
)
from filterformer.runs.setting import categories_text, category_settings


def zero_shot_runs(
    run_dir: str | Path,
    kind: str,
    categories: Sequence[str] | None = None,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
    map_name: str = ZERO_SHOT_MAPS[0],
    verify: bool = True,
) -> list[Run]:
    """One :class:`Run` per category of dataset ``kind`` (``categories``: those) with the
    model of ``run_dir``; each scored by that dataset's protocol and its category settings."""
    if map_name not in ZERO_SHOT_MAPS:
        raise ConfigError(
            f"zero-shot map {map_name!r} is unknown; valid: {', '.join(ZERO_SHOT_MAPS)}."
        )
    if kind not in READERS or kind == "synthetic":
        raise ConfigError(
            f"--data {kind}: zero-shot needs a dataset; valid: {', '.join(OFFICIAL_CATEGORIES)}."
        )
    trained = load_runs(run_dir, device=device, verify=verify)[0]
    top = read_run_config(Path(run_dir))
    model, mode, stats = trained.model, trained.mode, trained.map_stats
    if map_name != "reconstruction":
        model = family(top.model.name).zero_shot_maps(trained.model)
        if model is None:
            raise ConfigError(
                f"model={top.model.name} has no zero-shot map; evaluate with its own map "
                "(zero-shot map reconstruction)."
            )
        mode, stats = model.name, None
    data = _data_section(kind, data_root)
    names = list(categories or OFFICIAL_CATEGORIES.get(kind, ()))
    return [
        _category_run(trained, top, data, name, model, mode, stats, categories_text(top))
        for name in names
    ]


def _data_section(kind: str, root: str | Path | None) -> DictConfig:
    """configs/data/<kind>.yaml with its root (or FF_DATA_ROOT) made absolute."""
    section = OmegaConf.load(config_dir() / "data" / f"{kind}.yaml")
    section.root = str(resolve_data_root(root).resolve())
    return section


def _category_run(
    trained: Run,
    top: DictConfig,
    data: DictConfig,
    name: str,
    model: object,
    mode: str,
    stats: dict[str, tuple[float, float]] | None,
    trained_on: str,
) -> Run:
    """The run of category ``name`` of ``data``: the trained model, the target's settings."""
    view = trained.config.copy()
    view.data = data
    view.category = category_settings(top, name)
    view.eval.protocol = data.protocol  # the target's benchmark decides how it is scored
    return Run(
        run_dir=trained.run_dir,
        config=view,
        model=model,
        checkpoint=trained.checkpoint,
        geometry=build_geometry(view),
        category=name,
        mode=mode,
        map_stats=stats,
        threshold=None,
        threshold_rule=dict(view.category.get("threshold") or category_threshold_rule(name)),
        postprocess=dict(view.category.get("postprocess") or {}),
        tiling=build_tiling(view),
        data_root=Path(data.root),
        smoothing=build_smoothing(view),
        protocol=str(data.protocol),
        image_score=image_score_rule(view),
        trained_on=trained_on,
    )


def dataset_protocol(kind: str) -> str:
    """The evaluation protocol of dataset ``kind`` (its config's ``protocol``)."""
    return str(OmegaConf.load(config_dir() / "data" / f"{kind}.yaml").protocol)
