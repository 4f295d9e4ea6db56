"""Which threshold rule wins: SegF1 on test_public of every rule, and the gap to the oracle.

    python scripts/threshold_study.py                         # the synthetic category, three
                                                              # demo-sized models (minutes, CPU)
    python scripts/threshold_study.py --runs R1 R2 --data-root /data/mvtec_ad_2   # your runs

Without ``--runs`` it trains INP-Former (preset=demo model=inpformer), Filter-Former
(preset=demo) and CPR (preset=cpr_demo) on the built-in synthetic category into ``--work``.
For each run it scores validation, validation_pseudo (and its relit twin) and test_public, then
binarises test_public at the threshold of each rule: mean + 3 std and the 0.999-quantile of the
validation maps (label-free), f1_pseudo (label-free, pseudo-defects) and f1_optimal (the
F1-optimal threshold on test_public itself: an oracle, the ceiling of every rule). Prints a
table (SegF1 %, gap to the oracle in points) and writes it as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from filterformer.evaluation.segf1 import SegF1Accumulator, binarize
from filterformer.evaluation.thresholds import threshold_by_rule
from filterformer.io import write_json
from filterformer.runs.run import load_run
from filterformer.runs.run_maps import RunMaps

RULES = {
    "mean_std (k 3)": {"rule": "mean_std", "k": 3},
    "quantile (q 0.999)": {"rule": "quantile", "q": 0.999},
    "f1_pseudo": {"rule": "f1_pseudo"},
    "f1_optimal ORACLE": {"rule": "f1_optimal"},
}
RECIPES = {
    "inpformer": ["preset=demo", "model=inpformer"],
    "filterformer": ["preset=demo"],
    "cpr": [  # on the demo's images (one data root for all three)
        "preset=cpr_demo",
        "data.image_size=[168,210]",
        "data.counts={train: 48, validation: 8, test_public_good: 8, test_public_bad: 24, "
        "test_private: 10, test_private_mixed: 10}",
    ],
}


def train(work: Path) -> list[Path]:
    """Train the three demo-sized runs on the synthetic category (kept when already there)."""
    runs = []
    for name, overrides in RECIPES.items():
        run_dir = work / name
        if not (run_dir / "checkpoints").is_dir():
            command = ["ff-train", *overrides, f"run_dir={run_dir}", f"data.root={work / 'data'}"]
            subprocess.run([*command, "progress=false", "eval.every=0"], check=True)
        runs.append(run_dir)
    return runs


def maps_of(maps: RunMaps, samples) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(map, mask) of every sample, as ff-eval scores the run."""
    return [(amap, sample.load_mask()) for sample, amap in maps.predict(samples)]


def study(run_dir: Path, root: str | None) -> list[dict]:
    """One row per rule: its threshold and the SegF1 it gives on test_public."""
    run = load_run(run_dir, device="cpu")
    maps = RunMaps(run, device="cpu", data_root=root, progress=False)
    validation = [m for m, _ in maps_of(maps, maps.samples("validation"))]
    pseudo = {mixed: maps_of(maps, maps.pseudo(mixed)) for mixed in (False, True)}
    test = maps_of(maps, maps.samples("test_public"))
    rows = []
    for label, rule in RULES.items():
        threshold = threshold_by_rule(
            rule,
            lambda: iter(validation),
            lambda: iter(test),
            str(run_dir),
            lambda m: pseudo[m],
            labelled_split="test_public",
        )
        seg = SegF1Accumulator()
        for amap, mask in test:
            seg.update(binarize(amap, threshold.value), mask)
        rows.append(
            {
                "model": run.config.model.name,
                "rule": label,
                "threshold": threshold.value,
                "segf1": 100 * seg.compute().f1,
            }
        )
    oracle = rows[-1]["segf1"]
    for row in rows:
        row["gap"] = row["segf1"] - oracle
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, help="trained run folders")
    parser.add_argument("--data-root", help="dataset root of the runs (default: their own)")
    parser.add_argument("--work", type=Path, default=Path("runs/threshold_study"))
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    runs = args.runs or train(args.work)
    rows = [row for run in tqdm(runs, desc="runs") for row in study(run, args.data_root)]
    print(f"{'model':<13} {'rule':<19} {'threshold':>10} {'SegF1 %':>8} {'gap':>7}")
    for r in rows:
        print(
            f"{r['model']:<13} {r['rule']:<19} {r['threshold']:>10.4g} {r['segf1']:>8.2f} "
            f"{r['gap']:>+7.2f}"
        )
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
