"""Training throughput: model images/s and peak memory, and the data pipeline's images/s.

    python scripts/bench_train.py preset=filterformer_paper --device cuda --bf16
    python scripts/bench_train.py preset=demo --steps 20
    python scripts/bench_train.py preset=inpformer_paper encoder=dinov2_vits14_reg

Positional arguments are ff-train overrides (model, encoder, input size, batch, augmentation
come from the composed config). The encoder is randomly initialised: weights do not change
the speed. The data pipeline is timed on a synthetic category at the input size (or on
``--data-root`` with the config's category): decoding + caching, then augmentation +
normalisation per item as the DataLoader calls it.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from filterformer.cli.train import config_dir
from filterformer.data.mvtec_ad2 import MVTecAD2
from filterformer.data.synthetic import make_synthetic_category
from filterformer.data.training_set import TrainingImages
from filterformer.data.transforms import TrainAugment
from filterformer.runs import build_from_config, build_geometry
from filterformer.training.optim import build_optimizer


def model_throughput(
    cfg: DictConfig, device: torch.device, bf16: bool, steps: int, warmup: int
) -> None:
    """Time full training steps (forward, backward, clip, optimiser) on random inputs."""
    model, _ = build_from_config(cfg)
    model.to(device).train()
    opt_cfg = cfg.train.optimizer
    optimizer = build_optimizer(
        opt_cfg.name,
        model.trainable_parameters(),
        lr=opt_cfg.lr,
        betas=tuple(opt_cfg.betas),
        weight_decay=opt_cfg.weight_decay,
        eps=opt_cfg.eps,
        amsgrad=opt_cfg.amsgrad,
        clip_threshold=opt_cfg.clip_threshold,
    )
    batch = cfg.train.batch_size
    images = torch.randn(batch, 3, *build_geometry(cfg).input_size, device=device)
    use_bf16 = bf16 and device.type == "cuda"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(images)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.train.grad_clip or 1e9)
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA allocated)"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak = f"{rss:.2f} GiB (process max RSS)"
    elapsed = time.perf_counter() - start
    print(
        f"model: {cfg.model.name} on {cfg.encoder.variant}, input {tuple(images.shape[-2:])}, "
        f"batch {batch}, {device.type}{' bf16' if use_bf16 else ' fp32'}: "
        f"{steps * batch / elapsed:.2f} images/s ({elapsed / steps * 1000:.0f} ms/step), "
        f"peak {peak}"
    )


def data_throughput(cfg: DictConfig, data_root: str | None, images: int) -> None:
    """Time decoding + caching, then augmentation + normalisation of every training item."""
    geometry = build_geometry(cfg)
    augment = cfg.train.augment
    augment = None if augment is None else TrainAugment(**OmegaConf.to_container(augment))
    with tempfile.TemporaryDirectory() as tmp:
        if data_root is None:
            counts = {
                "train": images,
                "validation": 1,
                "test_public_good": 1,
                "test_public_bad": 1,
                "test_private": 1,
                "test_private_mixed": 1,
            }
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
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (CUDA only)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--data-root", help="time the pipeline on this AD 2 root (default: synthetic)"
    )
    parser.add_argument("--data-images", type=int, default=16, help="images for the data benchmark")
    args = parser.parse_args()
    overrides = [*args.overrides, "encoder.weights=null", "encoder.pretrained=false"]
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("train", overrides=overrides)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    model_throughput(cfg, torch.device(args.device), args.bf16, args.steps, args.warmup)
    data_throughput(cfg, args.data_root, args.data_images)


if __name__ == "__main__":
    main()
