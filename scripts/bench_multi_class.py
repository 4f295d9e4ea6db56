"""Multi-class against one run per category: time per epoch and memory, measured, extrapolated.

    python scripts/bench_multi_class.py                          # demo scale on the CPU
    python scripts/bench_multi_class.py preset=inpformer_paper encoder=tiny_random \\
        input.resize=[448,448] input.crop=[392,392] --images 64 --epochs 3   # on a GPU

Positional arguments are ff-train overrides (default: the demo preset without augmentation).
K synthetic categories (``--categories``, textures brick, grass, gravel) of ``--images``
training images each are trained once as one multi-class model (setting=multi_class) and
once as K single-class runs, each in a fresh process (its own peak memory), for ``--epochs``
epochs; the encoder is randomly initialised, which does not change the speed. Printed:
seconds per epoch (the mean of the epochs after the first), steps per epoch and peak memory
(CUDA max allocated, or the process's max RSS), then the extrapolation to MVTec AD (3,629
training images in 15 categories) with the formulas of docs/benchmarks.md: an epoch costs
the same per image either way, so the multi-class epoch is the sum of the 15 single-class
epochs; what grows is what a run holds for all its images at once (the decoded training
images and, with train.feature_cache, the encoder taps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import peak_memory, print_table, run_isolated  # noqa: E402

MVTEC_AD_TRAIN = {
    "bottle": 209,
    "cable": 224,
    "capsule": 219,
    "carpet": 280,
    "grid": 264,
    "hazelnut": 391,
    "leather": 245,
    "metal_nut": 220,
    "pill": 267,
    "screw": 320,
    "tile": 230,
    "toothbrush": 60,
    "transistor": 213,
    "wood": 247,
    "zipper": 240,
}
"""MVTec AD's train/good images per category (Bergmann et al., MVTec AD, CVPR 2019): 3,629."""
TEXTURES = ("brick", "grass", "gravel")


def train_variant(overrides: Sequence[str]) -> dict[str, Any]:
    """Train one run (in this fresh process); its epoch times, steps and peak memory."""
    import torch

    import filterformer as ff

    run = ff.train(*overrides)
    result = run.outcome.result
    device = torch.device(run.config.device)
    later = result.epoch_seconds[1:] or result.epoch_seconds
    return {
        "epoch_s": statistics.mean(later),
        "steps": result.step // result.epoch,
        "peak_gib": peak_memory(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", default=["preset=demo", "train.augment=null"])
    parser.add_argument("--categories", type=int, default=3, choices=(2, 3))
    parser.add_argument("--images", type=int, default=16, help="training images per category")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_multi_class_"))
    names = TEXTURES[: args.categories]
    common = [
        *args.overrides,
        "data=synthetic",
        f"data.root={work / 'data'}",
        f"data.counts={{train: {args.images}, validation: 2, test_public_good: 1, "
        "test_public_bad: 1, test_private: 1, test_private_mixed: 1}",
        f"train.epochs={args.epochs}",
        "eval.every=0",
        "progress=false",
        "encoder.weights=null",
        "encoder.pretrained=false",
    ]
    multi = [*common, "setting=multi_class", f"setting.categories=[{','.join(names)}]"]
    jobs = [([*multi, f"run_dir={work / 'multi'}"],)]
    jobs += [
        ([*common, f"category.name={c}", f"data.texture={c}", f"run_dir={work / c}"],)
        for c in names
    ]
    results = run_isolated(train_variant, jobs)
    rows = [{"run": f"multi-class ({len(names)} categories)", **results[0]}]
    rows += [{"run": f"single-class {c}", **r} for c, r in zip(names, results[1:], strict=True)]
    rows.append(
        {
            "run": f"{len(names)} single-class runs",
            "epoch_s": sum(r["epoch_s"] for r in results[1:]),
            "steps": sum(r["steps"] for r in results[1:]),
            "peak_gib": max(r["peak_gib"] for r in results[1:]),
        }
    )
    for row in rows:
        row["epoch_s"] = f"{row['epoch_s']:.3f}"
        row["peak_gib"] = f"{row['peak_gib']:.3f}"
    print(f"{args.images} training images per category, batch and size from: {args.overrides}")
    print_table(rows, ["run", "epoch_s", "steps", "peak_gib"])
    extrapolate(results[0]["epoch_s"] / (len(names) * args.images))


def extrapolate(seconds_per_image: float) -> None:
    """MVTec AD at the official recipe (batch 16, 448 -> 392 px, ViT-B): the formulas."""
    total = sum(MVTEC_AD_TRAIN.values())
    multi_steps = total // 16
    single_steps = sum(n // 16 for n in MVTEC_AD_TRAIN.values())
    largest = max(MVTEC_AD_TRAIN.values())
    image_cache = 3 * 448 * 448  # uint8 decoded images at the resize size
    taps = 8 * 28 * 28 * 768  # ViT-B: 8 taps x 784 tokens x 768 channels
    gb = 1e9
    print(f"\nMVTec AD: {total} training images in {len(MVTEC_AD_TRAIN)} categories, batch 16")
    print(f"  steps per epoch: multi-class {multi_steps}; 15 single-class runs {single_steps}")
    print(
        f"  epoch time: multi-class = sum of the 15 single-class epochs = {total} images x "
        f"t_image (here {seconds_per_image:.4f} s per image: {total * seconds_per_image:.0f} s)"
    )
    print(
        f"  decoded training images held: multi-class {total * image_cache / gb:.2f} GB; "
        f"single-class at most {largest * image_cache / gb:.2f} GB (hazelnut)"
    )
    print(
        f"  feature cache, float32 / bfloat16: multi-class {total * taps * 4 / gb:.1f} / "
        f"{total * taps * 2 / gb:.1f} GB; single-class at most {largest * taps * 4 / gb:.1f} / "
        f"{largest * taps * 2 / gb:.1f} GB"
    )


if __name__ == "__main__":
    main()
