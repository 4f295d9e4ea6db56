"""Training speed: images/s and peak memory per precision, feature cache and torch.compile.

    python scripts/bench_train.py preset=inpformer_paper encoder=tiny_random \\
        input.resize=[224,224] input.crop=[196,196] train.batch_size=8 train.num_workers=0
    python scripts/bench_train.py preset=filterformer_paper --cache off --compile off on

Positional arguments are ff-train overrides (model, encoder, input size, batch, augmentation,
workers come from the composed config). Every variant runs ``train()`` for ``--epochs``
epochs on a synthetic category of ``--images`` training images at the input size, in a fresh
process (so that its peak memory is its own); the encoder is randomly initialised, which
does not change the speed. Reported per variant:

- first epoch: seconds of epoch 1, plus building the feature cache when it is on;
- images/s: training images per second over the later epochs (what every further epoch costs);
- peak memory: CUDA max allocated, or the process's max RSS on CPU.

bf16 autocast is CUDA-only: on CPU those variants are skipped (and the table says so).
Then the data pipeline alone: decoding + caching, and augmentation + normalisation per item.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.synthetic import make_synthetic_category
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import TrainAugment
from filterformer.runs.compose import config_dir
from filterformer.runs.run import build_from_config, build_geometry
from filterformer.runs.settings import train_settings
from filterformer.training.feature_cache import FeatureCacheSettings, cache_features
from filterformer.training.loop import train


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The ff-train config of ``overrides`` with a randomly initialised encoder."""
    overrides = [*overrides, "encoder.weights=null", "encoder.pretrained=false"]
    with initialize_config_dir(str(config_dir()), version_base=None):
        return compose("train", overrides=overrides)


def peak_memory(device: torch.device) -> float:
    """GiB: CUDA max allocated since the last reset, or this process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_isolated(function: Callable[..., dict[str, Any]], jobs: list[tuple]) -> list[dict]:
    """``function(*job)`` for every job, each in a fresh process (own peak memory, own caches)."""
    context = get_context("spawn")
    results = []
    for job in jobs:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            results.append(pool.submit(function, *job).result())
    return results


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """A fixed-width table of ``rows`` (values already formatted or numbers)."""
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def train_variant(
    overrides: Sequence[str],
    root: str,
    device: str,
    bf16: bool,
    cache: bool,
    compiled: bool,
    epochs: int,
) -> dict[str, Any]:
    """Train one variant on the synthetic category under ``root``; return its figures."""
    cfg = compose_config(overrides)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    device = torch.device(device)
    augment = cfg.train.augment
    augment = None if augment is None else TrainAugment(**OmegaConf.to_container(augment))
    images = TrainingImages(MVTecAD2(root, "bench", "train"), build_geometry(cfg), augment)
    images.preload(progress=False)
    model, identity = build_from_config(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cache_seconds = 0.0
    data = images
    if cache:
        started = time.perf_counter()
        fields = OmegaConf.to_container(cfg.train.feature_cache)
        settings = {k: fields[k] for k in ("views", "dtype")}
        data = cache_features(
            model.encoder,
            images,
            FeatureCacheSettings(**settings),
            device=device,
            batch_size=cfg.train.batch_size,
            amp_bf16=bf16,
            progress=False,
        )
        cache_seconds = time.perf_counter() - started
    settings = replace(
        train_settings(cfg),
        epochs=epochs,
        device=device,
        amp_bf16=bf16,
        compile_step=compiled,
        log_every=10**9,  # only the per-epoch flush, as in a long run
        progress=False,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, data, run_dir=run_dir, checkpoint_meta=identity, settings=settings)
    per_epoch = (len(images) // cfg.train.batch_size) * cfg.train.batch_size
    later = statistics.median(result.epoch_seconds[1:])
    return {
        "precision": "bf16" if bf16 else "fp32",
        "cache": "on" if cache else "off",
        "compile": "on" if compiled else "off",
        "first epoch s": cache_seconds + result.epoch_seconds[0],
        "images/s": per_epoch / later,
        "peak GiB": peak_memory(device),
    }


def model_table(args: argparse.Namespace, cfg: DictConfig) -> None:
    """Time every requested variant and print the table and the ratios to the first one."""
    device = torch.device(args.device)
    precisions = [p for p in args.precision if p == "fp32" or device.type == "cuda"]
    if "bf16" in args.precision and device.type != "cuda":
        print("bf16 autocast is CUDA-only: bf16 variants skipped on CPU.")
    geometry = build_geometry(cfg)
    with tempfile.TemporaryDirectory() as root:
        counts = {"train": args.images, "validation": 1, "test_public_good": 1}
        counts |= {"test_public_bad": 1, "test_private": 1, "test_private_mixed": 1}
        make_synthetic_category(root, "bench", image_size=geometry.resize_hw, counts=counts)
        jobs = [
            (args.overrides, root, args.device, p == "bf16", c == "on", k == "on", args.epochs)
            for p, c, k in itertools.product(precisions, args.cache, args.compile)
        ]
        rows = run_isolated(train_variant, jobs)
    base = rows[0]
    for row in rows:
        row["speed-up"] = f"{row['images/s'] / base['images/s']:.2f}x"
        row["memory"] = f"{row['peak GiB'] / base['peak GiB']:.2f}x"
    print(
        f"{cfg.model.name} on {cfg.encoder.variant}, input {geometry.input_size}, batch "
        f"{cfg.train.batch_size}, {args.images} images, {args.epochs} epochs, {device.type} "
        f"({torch.get_num_threads()} threads); ratios against the first row:"
    )
    columns = ["precision", "cache", "compile", "first epoch s", "images/s", "peak GiB"]
    print_table(rows, [*columns, "speed-up", "memory"])


def data_throughput(cfg: DictConfig, data_root: str | None, images: int) -> None:
    """Time decoding + caching, then augmentation + normalisation of every training item."""
    geometry = build_geometry(cfg)
    augment = cfg.train.augment
    augment = None if augment is None else TrainAugment(**OmegaConf.to_container(augment))
    with tempfile.TemporaryDirectory() as tmp:
        if data_root is None:
            counts = {"train": images, "validation": 1, "test_public_good": 1}
            counts |= {"test_public_bad": 1, "test_private": 1, "test_private_mixed": 1}
            make_synthetic_category(tmp, "bench", image_size=geometry.resize_hw, counts=counts)
            samples = MVTecAD2(tmp, "bench", "train")
        else:
            samples = MVTecAD2(data_root, cfg.category.name, "train")[:images]
        dataset = TrainingImages(samples, geometry, augment, seed=0)
        start = time.perf_counter()
        dataset.preload(progress=False)
        decode = time.perf_counter() - start
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        items = time.perf_counter() - start
    n = len(dataset)
    print(
        f"data: {n} images -> {geometry.input_size}, augment {'on' if augment else 'off'}: "
        f"decode+resize {n / decode:.1f} images/s, augment+normalise {n / items:.1f} images/s "
        "(per loader worker)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="ff-train config overrides, e.g. preset=demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument("--cache", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--images", type=int, default=32, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant (>= 2)")
    parser.add_argument(
        "--data-root", help="time the data pipeline on this AD 2 root (default: synthetic)"
    )
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: images/s is measured after the first epoch")
    cfg = compose_config(args.overrides)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    model_table(args, cfg)
    data_throughput(cfg, args.data_root, args.images)


if __name__ == "__main__":
    main()
