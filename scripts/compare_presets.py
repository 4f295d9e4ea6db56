"""How far preset=inpformer_fast (our speed-ups) moves results from preset=inpformer_paper.

    python scripts/compare_presets.py [--images 32] [--epochs 8] [--size 600 760] \\
        [--work /tmp/compare_presets] [ff-train overrides ...]

Every variant trains the same model from the same seed on the same synthetic category (built-in
texture photos with pasted defects, ``--size`` pixels so that both presets shrink the images
to 448 as they would real data) with the tiny random encoder (``encoder=tiny_random``: not
DINOv2, so the figures say how much the speed-ups perturb training, not what they do to a
trained DINOv2 model). Extra ff-train overrides apply to all. The warm-up is cut to 2 steps
so that the learning rate is at its working value within a short run. Printed:

- for each variant (each speed-up alone, then both = inpformer_fast) against inpformer_paper:
  the network inputs (PIL bilinear vs OpenCV area resize of the test images), the losses
  per step (|variant - paper| / paper for the total and its two terms, max over the steps
  and at the last one), and the 256 x 256 protocol maps of test_public made by each trained
  model on its own pipeline (max and mean |difference| relative to the paper map's range);
- the INP-Former metric set of every variant on test_public.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from filterformer.evaluation.protocol import METRICS, percent
from filterformer.inference.protocol_maps import evaluate_inpformer
from filterformer.runs.compose import config_dir
from filterformer.runs.run import Run, load_run, split_samples
from filterformer.runs.train import run_training

VARIANTS = {
    "inpformer_paper": ["preset=inpformer_paper"],
    "paper + area resize": ["preset=inpformer_paper", "input.interpolation=area"],
    "paper + fp32 cache": [
        "preset=inpformer_paper",
        "train.feature_cache.enabled=true",
        "train.feature_cache.dtype=float32",
    ],
    "paper + bf16 cache": [
        "preset=inpformer_paper",
        "train.feature_cache.enabled=true",
        "train.feature_cache.dtype=bfloat16",
    ],
    "inpformer_fast": ["preset=inpformer_fast"],
}
"""The official recipe, each speed-up alone (and the exact float32 cache), and both speed-ups
(inpformer_fast)."""
LOSSES = ("loss", "sm", "coherence")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="training images")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[600, 760], metavar=("H", "W"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/compare_presets"))
    parser.add_argument("overrides", nargs="*", help="ff-train overrides for both presets")
    return parser.parse_args(argv)


def variant_config(name: str, args: argparse.Namespace) -> DictConfig:
    """The ff-train config of one variant on the shared synthetic category."""
    height, width = args.size
    counts = (
        f"{{train: {args.images}, validation: 2, test_public_good: 4, test_public_bad: 8, "
        "test_private: 1, test_private_mixed: 1}"
    )
    overrides = [
        *VARIANTS[name],
        "encoder=tiny_random",
        "data=synthetic",
        "category=synthetic",
        f"data.root={args.work / 'data'}",
        f"data.image_size=[{height},{width}]",
        f"data.counts={counts}",
        f"run_dir={args.work / name.replace(' ', '_')}",
        f"train.epochs={args.epochs}",
        "train.num_workers=0",
        "train.optimizer.warmup_iters=2",
        "train.log_every=1",
        "progress=false",
        *args.overrides,
    ]
    with initialize_config_dir(str(config_dir()), version_base=None):
        return compose("train", overrides=overrides)


def losses(run_dir: Path) -> np.ndarray:
    """steps x (loss, sm, coherence) from train_log.csv."""
    with open(run_dir / "train_log.csv", newline="") as handle:
        return np.array([[float(row[k]) for k in LOSSES] for row in csv.DictReader(handle)])


def protocol_maps_and_row(run: Run) -> tuple[np.ndarray, dict]:
    """The run's 256 px protocol maps of test_public and its metric row."""
    samples = split_samples(run.config, "test_public")
    metrics, _ = evaluate_inpformer(
        run.model,
        samples,
        run.geometry,
        image_score_rule=run.image_score,
        mode=run.mode,
        progress=False,
    )
    return np.stack(metrics.maps), metrics.row(run.category)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    runs = {}
    for name in VARIANTS:
        config = variant_config(name, args)
        if Path(config.run_dir).exists():
            sys.exit(f"{config.run_dir} exists: pass another --work or remove it")
        runs[name] = load_run(run_training(config).run_dir)
    paper = runs["inpformer_paper"]
    images = [s.load_image() for s in split_samples(paper.config, "test_public")]
    paper_losses = losses(paper.run_dir)
    results = {name: protocol_maps_and_row(run) for name, run in runs.items()}
    paper_maps = results["inpformer_paper"][0]
    scale = float(paper_maps.max() - paper_maps.min())

    print(f"synthetic category, {args.images} training images of {args.size[0]} x {args.size[1]}")
    print(f"tiny random encoder, {len(paper_losses)} steps (batch {paper.config.train.batch_size})")
    print("differences from inpformer_paper: network inputs max |diff| (normalised units);")
    print("losses |diff| / paper, max over steps and at the last step; 256 px protocol maps of")
    print("test_public |diff| / paper map range, max and mean")
    print(f"{'variant':<20} {'inputs':>7} " + " ".join(f"{n + ' max/last':>20}" for n in LOSSES))
    for name, run in runs.items():
        inputs = max(
            float((paper.geometry.to_tensor(im) - run.geometry.to_tensor(im)).abs().max())
            for im in images
        )
        relative = np.abs(losses(run.run_dir) - paper_losses) / np.abs(paper_losses)
        cells = [f"{relative[:, i].max():.1e} / {relative[-1, i]:.1e}" for i in range(len(LOSSES))]
        map_diff = np.abs(results[name][0] - paper_maps) / scale
        print(
            f"{name:<20} {inputs:>7.3f} "
            + " ".join(f"{c:>20}" for c in cells)
            + f"   maps {map_diff.max():.1e} / {map_diff.mean():.1e}"
        )
    print(f"{'variant':<20} " + " ".join(f"{title:>10}" for _, title in METRICS))
    for name, (_, row) in results.items():
        print(f"{name:<20} " + " ".join(f"{percent(row[key]):>10}" for key, _ in METRICS))


if __name__ == "__main__":
    main()
