"""FADeR study on the synthetic category: EAR vs FADeR-EAR, INP-Former vs INP-Former + FADeR's
attenuation (our extension), over several training seeds.

    python scripts/fader_study.py --out runs/fader_study            # the demo recipe, seeds 1 2
    python scripts/fader_study.py --seeds 1 2 3 -- train.epochs=30  # ff-train overrides for all
    python scripts/fader_study.py --ear model.widths=[8,16,32,64,128]  # ... for EAR / FADeR only

Per seed, four runs into ``--out`` (each one ff-train run folder, trained on the same
synthetic data, ``preset=demo`` plus the given overrides):

- ``ear_s<seed>``: ``model=ear``;
- ``fader_s<seed>``: ``model=fader model.ear_run=<ear_s<seed>>`` (FADeR on that EAR run);
- ``inpformer_s<seed>``: ``model=inpformer``;
- ``inpformer_fader_s<seed>``: ``model=inpformer model.attenuation=fader``.

Each run is then scored by ff-eval on test_public: image AUROC (max of the map), pixel AUROC,
AU-PRO up to FPR 0.05 and SegF1 at the validation mean + 3 std threshold. A run folder that
already holds a trained run is evaluated as it is, so an interrupted study continues where it
stopped. Writes ``results.json`` and ``results.csv`` (one row per run, plus the mean and
spread over seeds per system) into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from tqdm import tqdm

from filterformer.cli.eval import main as eval_cli
from filterformer.io import write_csv, write_json
from filterformer.runs.compose import config_dir
from filterformer.runs.train import run_training
from filterformer.training.checkpoint import has_checkpoint
from filterformer.training.loop import last_checkpoint

SYSTEMS: dict[str, list[str]] = {
    "ear": ["model=ear"],
    "fader": ["model=fader"],  # + model.ear_run of the same seed
    "inpformer": ["model=inpformer"],
    "inpformer_fader": ["model=inpformer", "model.attenuation=fader"],
}
METRICS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "au_pro@0.05": "AU-PRO@0.05",
    "seg_f1": "SegF1",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fader_study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--ear", nargs="+", default=[], help="ff-train overrides for the EAR and FADeR runs only"
    )
    parser.add_argument("overrides", nargs="*", help="ff-train overrides for every run")
    return parser


def train_once(run_dir: Path, overrides: Sequence[str]) -> None:
    """ff-train into ``run_dir`` unless it already holds a trained run."""
    if has_checkpoint(last_checkpoint(run_dir)):
        return
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    run_training(cfg)


def evaluate(run_dir: Path) -> dict[str, float]:
    """ff-eval of the run on test_public; its metrics row."""
    if eval_cli(["--run", str(run_dir), "--no-progress"]) != 0:
        raise SystemExit(f"ff-eval failed on {run_dir}")
    metrics = json.loads(
        (run_dir.with_name(run_dir.name + "_eval") / "test_public" / "metrics.json").read_text()
    )
    return metrics["mean"]


def study(
    out: Path, seeds: Sequence[int], overrides: Sequence[str], ear: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Train and evaluate every system for every seed; one row per run.

    ``ear``: further overrides of the EAR and FADeR runs (their U-Net settings).
    """
    common = ["preset=demo", f"data.root={out / 'data'}", "progress=false", *overrides]
    rows = []
    jobs = [(seed, system) for seed in seeds for system in SYSTEMS]
    for seed, system in tqdm(jobs, desc="fader study", unit="run"):
        run_dir = (out / f"{system}_s{seed}").resolve()
        extra = [*ear] if system in ("ear", "fader") else []
        if system == "fader":
            extra.append(f"model.ear_run={(out / f'ear_s{seed}').resolve()}")
        train_once(run_dir, [*common, *SYSTEMS[system], *extra, f"seed={seed}"])
        metrics = evaluate(run_dir)
        rows.append({"system": system, "seed": seed, **{k: metrics[k] for k in METRICS}})
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system: mean and (max - min) / 2 over the seeds of every metric."""
    out = []
    for system in SYSTEMS:
        runs = [r for r in rows if r["system"] == system]
        entry: dict[str, Any] = {"system": system, "seeds": [r["seed"] for r in runs]}
        for key in METRICS:
            values = [r[key] for r in runs]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_spread"] = (max(values) - min(values)) / 2
        out.append(entry)
    return out


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown table: mean +- half range over the seeds, in percent."""
    lines = ["| system | " + " | ".join(METRICS.values()) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for entry in summaries:
        cells = [f"{100 * entry[k]:.1f} ± {100 * entry[k + '_spread']:.1f}" for k in METRICS]
        lines.append(f"| {entry['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = study(args.out, args.seeds, args.overrides, args.ear)
    summaries = summary(rows)
    write_csv(args.out / "results.csv", rows, ["system", "seed", *METRICS])
    write_json(
        args.out / "results.json",
        {
            "overrides": args.overrides,
            "ear_overrides": args.ear,
            "seeds": args.seeds,
            "runs": rows,
            "summary": summaries,
        },
    )
    print(table(summaries))


if __name__ == "__main__":
    main()
