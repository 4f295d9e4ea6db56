"""CPR under changed lighting, on the synthetic category: our lighting options, their strength
chosen label-free on validation_pseudo_mixed.

    python scripts/cpr_lighting_study.py --out runs/cpr_lighting_study
    python scripts/cpr_lighting_study.py --variants cpr local0.125 --seeds 1 2 3

Each variant (:data:`VARIANTS`: ff-train overrides of our lighting options) is trained once
per training seed with ``preset=cpr_demo`` on the same synthetic data (more validation and
test images than the demo's, :data:`DATA`), into ``<out>/<variant>_s<seed>``, and scored by
AU-PRO up to FPR 0.05 on:

- validation_pseudo_mixed: pseudo-defects under the mixed split's lighting changes, made from
  validation images (no test label): the variant with the highest mean over the seeds is the
  one chosen;
- validation_pseudo: the same pseudo-defects in the validation images' own light;
- test_public, per lighting named in its stems (regular, overexposed, underexposed, shift_1:
  a directional ramp) and pooled: test labels, reported only, never used to choose.

A run folder that already holds a trained run is scored as it is. Writes ``results.csv`` (one
row per run) and ``results.json`` into ``--out`` and prints a markdown table of the means over
the seeds and the chosen variant.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from tqdm import tqdm

from filterformer.data.sample import Sample
from filterformer.evaluation.aupro import ProAccumulator
from filterformer.io import write_csv, write_json
from filterformer.runs.compose import config_dir
from filterformer.runs.run import load_run
from filterformer.runs.run_maps import RunMaps
from filterformer.runs.train import run_training
from filterformer.training.checkpoint import has_checkpoint
from filterformer.training.loop import last_checkpoint

OFF = ["model.photometric=none", "cpr.relight.probability=0"]
"""CPR's own training and inputs (what cpr_demo's lighting options replace)."""
LOCAL = ["model.photometric=local"]
VARIANTS: dict[str, list[str]] = {
    "cpr": OFF,
    "relight2": [*OFF, "cpr.relight.probability=0.5", "cpr.relight.strength=2"],
    "standardise": [*OFF, "model.photometric=standardise"],
    "local0.0625": [*OFF, *LOCAL, "model.photometric_sigma=0.0625"],
    "local0.125": [*OFF, *LOCAL, "model.photometric_sigma=0.125"],
    "local0.25": [*OFF, *LOCAL, "model.photometric_sigma=0.25"],
    "relight2+local0.125": [
        *OFF,
        *LOCAL,
        "model.photometric_sigma=0.125",
        "cpr.relight.probability=0.5",
        "cpr.relight.strength=2",
    ],
    "relight2+local0.25": [
        *OFF,
        *LOCAL,
        "model.photometric_sigma=0.25",
        "cpr.relight.probability=0.5",
        "cpr.relight.strength=2",
    ],
}
"""Ours: CPR's own light; relit pairs (strength 2: twice the mixed pseudo split's amplitudes,
half of the images); the photometric normalisations (sigma: of the shorter side); both."""
DATA = [
    "data.counts.validation=16",
    "data.counts.test_public_good=8",
    "data.counts.test_public_bad=24",
]
"""More validation images (the choice) and defects per lighting (the report) than the demo."""
LIGHTINGS = ("regular", "overexposed", "underexposed", "shift_1")
LIMIT = 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cpr_lighting_study"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="training seeds")
    parser.add_argument("overrides", nargs="*", help="ff-train overrides for every run")
    return parser


def train_once(run_dir: Path, overrides: Sequence[str]) -> None:
    """ff-train into ``run_dir`` unless it already holds a trained run."""
    if has_checkpoint(last_checkpoint(run_dir)):
        return
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("train", overrides=[*overrides, f"run_dir={run_dir}"])
    run_training(cfg)


def au_pro(pairs: Iterable[tuple[Sample, object]], group: bool = False) -> dict[str, float]:
    """AU-PRO@0.05 of (sample, map) pairs: pooled ("all"), and per lighting if ``group``."""
    accumulators: dict[str, ProAccumulator] = defaultdict(ProAccumulator)
    for sample, amap in pairs:
        mask = sample.load_mask()
        accumulators["all"].update(amap, mask, str(sample.relpath))
        lighting = sample.relpath.name.split("_", 1)[-1]
        if group and lighting in LIGHTINGS:
            accumulators[lighting].update(amap, mask, str(sample.relpath))
    return {k: acc.compute((LIMIT,)).au_pro[LIMIT] for k, acc in accumulators.items()}


def score(run_dir: Path) -> dict[str, float]:
    """The study's figures of one trained run (fractions)."""
    maps = RunMaps(load_run(run_dir, device="cpu"), device="cpu", progress=False)
    test = au_pro(maps.predict(maps.samples("test_public")), group=True)
    return {
        "pseudo_mixed": au_pro(maps.predict(maps.pseudo(mixed=True)))["all"],
        "pseudo": au_pro(maps.predict(maps.pseudo()))["all"],
        **{f"test_{k}": test.get(k, float("nan")) for k in (*LIGHTINGS, "all")},
    }


def means(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One row per variant: the mean over its seeds of every figure."""
    out = []
    for variant in dict.fromkeys(str(r["variant"]) for r in rows):
        runs = [r for r in rows if r["variant"] == variant]
        keys = [k for k in runs[0] if k not in ("variant", "seed")]
        out.append({"variant": variant, **{k: statistics.fmean(r[k] for r in runs) for k in keys}})
    return out


def table(rows: Sequence[dict[str, object]], chosen: str) -> str:
    """Markdown table in percent; the chosen variant in bold."""
    keys = [k for k in rows[0] if k != "variant"]
    lines = [
        "| variant | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for row in rows:
        name = f"**{row['variant']}**" if row["variant"] == chosen else str(row["variant"])
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = ["preset=cpr_demo", f"data.root={out / 'data'}", "progress=false", *DATA]
    rows = []
    jobs = [(variant, seed) for seed in args.seeds for variant in args.variants]
    for variant, seed in tqdm(jobs, desc="cpr lighting study", unit="run"):
        run_dir = out / f"{variant}_s{seed}"
        train_once(run_dir, [*common, *VARIANTS[variant], f"seed={seed}", *args.overrides])
        rows.append({"variant": variant, "seed": seed, **score(run_dir)})
    summary = means(rows)
    chosen = str(max(summary, key=lambda r: r["pseudo_mixed"])["variant"])
    write_csv(out / "results.csv", rows, list(rows[0]))
    document = {"overrides": args.overrides, "runs": rows, "means": summary, "chosen": chosen}
    write_json(out / "results.json", document)
    print(table(summary, chosen))
    print(f"chosen on validation_pseudo_mixed (label-free): {chosen}")


if __name__ == "__main__":
    main()
