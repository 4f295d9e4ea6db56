"""CPR inference: anomaly-map images/s and the float16 memory bank for N reference images.

    python scripts/bench_cpr.py                                  # preset=cpr_paper, N = 300
    python scripts/bench_cpr.py preset=cpr_dinov2 --references 300 --batch 8
    python scripts/bench_cpr.py preset=cpr_demo --references 24  # seconds, for a smoke test

Positional arguments are ff-train overrides (default ``preset=cpr_paper``: DenseNet-201 at
320 x 320). The backbone has random weights (weights do not change the speed); the reference
set is fitted for real on N random images, each a noisy square on a noisy background so that
the foreground estimation of object categories finds an object (codebook, histograms,
foreground), then the bank is built and ``model.anomaly_maps`` is timed on batches of such
images: backbone, global retrieval against all N, windowed local retrieval against the K
retrieved, foreground weight.
The bank's measured size is printed beside the formula D x (h4 w4 + h8 w8) x 2 B x N. The
CPR paper (Li et al., "Target before Shooting", IEEE TIP 2024) reports 113 FPS on a GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_train import compose_config, peak_memory, print_table

from filterformer.runs.run import build_from_config, build_geometry


def object_images(count: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``count`` normalised images: a bright noisy square (half the side) on a dark noisy field."""
    images = torch.randn(count, 3, *size, generator=generator) * 0.3 - 1.0
    height, width = size
    images[:, :, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] += 2.0
    return images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="ff-train config overrides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--references", type=int, default=300, help="N training images")
    parser.add_argument("--batch", type=int, default=8, help="test images per call")
    parser.add_argument("--steps", type=int, default=5, help="timed batches")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(["preset=cpr_paper", *args.overrides])
    device = torch.device(args.device)
    model, _ = build_from_config(cfg)
    model.to(device).eval()
    size = build_geometry(cfg).input_size
    generator = torch.Generator().manual_seed(0)
    references = object_images(args.references, size, generator)

    started = time.perf_counter()
    model.fit_references(references, progress=True)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    bank = model.memory_bank()
    build = time.perf_counter() - started
    images = object_images(args.batch, size, generator).to(device)

    def run() -> None:
        model.anomaly_maps(images)["cpr"].cpu()  # waits for the device

    run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        run()
    elapsed = time.perf_counter() - started
    height, width = size  # the formula: D x (h_4 w_4 + h_8 w_8) x 2 B per image
    cells = sum((height // s) * (width // s) for s in model.encoder.strides)
    per_image = model.out_dim * cells * 2
    row = {
        "references": bank.size,
        "fit s": fit,
        "bank build s": build,
        "images/s": args.steps * args.batch / elapsed,
        "bank MiB": bank.nbytes / 2**20,
        "formula MiB": per_image * bank.size / 2**20,
        "per image MiB": per_image / 2**20,
        "peak GiB": peak_memory(device),
    }
    grids = " + ".join(f"{s.shape[2]}x{s.shape[3]}" for s in bank.scales)
    print(
        f"CPR on {cfg.encoder.variant}, input {size}, batch {args.batch}, {device.type}, "
        f"{torch.get_num_threads()} threads; bank {bank.scales[0].shape[1]} x ({grids}) x 2 B "
        "per image (float16)"
    )
    print_table([row], list(row))
    if bank.nbytes != per_image * bank.size:
        raise SystemExit("the bank's size differs from the formula")


if __name__ == "__main__":
    main()
