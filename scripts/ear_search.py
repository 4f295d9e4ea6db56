"""Label-free per-category search of EAR's and FADeR's tuned settings (FADeR §4.1).

    # EAR's mosaic scale m* on one category (preset ear_paper's search.mosaic grid)
    python scripts/ear_search.py --grid mosaic --out runs/ear_search/can -- \\
        preset=ear_paper category=can
    # FADeR's learning rate x schedule on that category, on the chosen EAR run
    python scripts/ear_search.py --grid lr --out runs/fader_search/can -- preset=fader_paper \\
        category=can model.ear_run=runs/ear_search/can/mosaic_scale-16 model.mosaic_scale=16
    # the demo category, tiny and fast (CPU, a few minutes): see docs/benchmarks.md

The grid is the preset's ``search.<name>`` block: one list of values per setting, every
combination tried. Each candidate is an ff-train run in ``--out/<setting>-<value>_...``,
trained as the given overrides say and evaluated once, after its last epoch, on ``eval.split``
by ``eval.metric`` (the library's checkpoint-selection metric). The split must not be a test
split: the default, validation_pseudo, is the validation images with pasted pseudo-defects
and their exact masks, so no test label is read. The best candidate wins (the first one on a
tie). A candidate folder that already holds a trained run is scored as it is, so an
interrupted search continues where it stopped.

Writes ``search.json`` (every candidate's settings, scores and folder, and the choice) into
``--out`` and into the chosen run's folder, and prints the choice and the overrides that
select it.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from filterformer.io import write_json
from filterformer.runs.compose import config_dir
from filterformer.runs.train import run_training
from filterformer.training.checkpoint import has_checkpoint
from filterformer.training.loop import last_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grid", required=True, help="the preset's search.<grid> block, e.g. mosaic or lr"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the candidate runs")
    parser.add_argument("overrides", nargs="*", help="ff-train overrides for every candidate")
    return parser


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base=None):
        return compose("train", overrides=list(overrides))


def candidates(config: DictConfig, grid: str) -> list[dict[str, Any]]:
    """Every combination of the values of ``search.<grid>``: {setting: value} each."""
    block = OmegaConf.select(config, f"search.{grid}")
    if not isinstance(block, Mapping) or not block:
        known = sorted(config.get("search") or {})
        raise SystemExit(
            f"ear_search: the config has no search.{grid} grid (this preset has: "
            f"{', '.join(known) or 'none'}); pick the preset that defines it."
        )
    grid_values = OmegaConf.to_container(block, resolve=True)
    keys = list(grid_values)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid_values.values())
    ]


def tag(settings: Mapping[str, Any]) -> str:
    """Folder name of a candidate: ``mosaic_scale-16`` or ``lr-0.001_schedule-sgdr`` (no "=":
    the folder is passed on as an ff-train override)."""
    return "_".join(f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in settings.items())


def train_candidate(run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """ff-train into ``run_dir`` (unless trained), evaluated once after the last epoch."""
    config = compose_config([*overrides, f"run_dir={run_dir}"])
    config.eval.every = config.train.epochs
    if not has_checkpoint(last_checkpoint(run_dir)):
        run_training(config)
    return config


def final_scores(run_dir: Path, epoch: int) -> dict[str, float]:
    """The evaluation of the last epoch, of the run's map, from its ``eval_log.csv``."""
    log = run_dir / "eval_log.csv"
    rows = []
    if log.is_file():
        with open(log, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) == epoch]
    if not rows:
        raise SystemExit(
            f"ear_search: {run_dir} has no evaluation after epoch {epoch}: the search needs a "
            "validation split (MVTec AD 2, data=synthetic or data=folder; MVTec AD and VisA "
            "have none)."
        )
    row = rows[-1]
    return {key: float(value) for key, value in row.items() if key not in ("step", "epoch", "mode")}


def search(grid: str, out: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Train and score every candidate of ``search.<grid>``; the search record."""
    base = compose_config(overrides)
    split, metric = base.eval.split, base.eval.metric
    if str(split).startswith("test"):
        raise SystemExit(
            f"ear_search: eval.split={split} reads test labels; the search chooses on "
            "validation_pseudo (eval.split=validation_pseudo)."
        )
    rows = []
    for settings in candidates(base, grid):
        run_dir = (out / tag(settings)).resolve()
        chosen_by = [f"{key}={value}" for key, value in settings.items()]
        config = train_candidate(run_dir, [*overrides, *chosen_by])
        scores = final_scores(run_dir, int(config.train.epochs))
        rows.append({"settings": settings, "run_dir": str(run_dir), "scores": scores})
        print(f"ear_search: {tag(settings)}: {metric} {100 * scores[metric]:.2f} % on {split}")
    best = max(rows, key=lambda row: row["scores"][metric])  # max keeps the first on a tie
    return {
        "grid": grid,
        "chosen_on": split,
        "metric": metric,
        "overrides": list(overrides),
        "candidates": rows,
        "chosen": best,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record = search(args.grid, args.out, args.overrides)
    chosen = record["chosen"]
    write_json(args.out / "search.json", record)
    write_json(Path(chosen["run_dir"]) / "search.json", record)
    settings = " ".join(f"{key}={value}" for key, value in chosen["settings"].items())
    print(
        f"ear_search: chose {settings} ({record['metric']} on {record['chosen_on']}); "
        f"its run: {chosen['run_dir']}"
    )


if __name__ == "__main__":
    main()
