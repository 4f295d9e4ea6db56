"""Inference speed: anomaly-map images/s and peak memory per precision and torch.compile.

    python scripts/bench_infer.py preset=filterformer_paper --batch 4
    python scripts/bench_infer.py preset=inpformer_paper encoder=tiny_random --compile off on

Positional arguments are ff-train overrides (model, encoder, input size). Every variant runs
``model.anomaly_maps`` on random batches of ``--batch`` images at the network input size, in a
fresh process (so that its peak memory is its own), with a randomly initialised encoder: the
network alone, without decoding, tiling or the way back to the original size. bf16 autocast is
CUDA-only: on CPU those variants are skipped (and the output says so).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from typing import Any

import torch
from bench_train import compose_config, peak_memory, print_table, run_isolated

from filterformer.runs import build_from_config, build_geometry


def infer_variant(
    overrides: Sequence[str], device: str, bf16: bool, compiled: bool, batch: int, steps: int
) -> dict[str, Any]:
    """Time ``steps`` batches of anomaly maps after warm-up (and compilation)."""
    cfg = compose_config(overrides)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    device = torch.device(device)
    model, _ = build_from_config(cfg)
    model.to(device).eval()
    maps = torch.compile(model.anomaly_maps) if compiled else model.anomaly_maps
    images = torch.randn(batch, 3, *build_geometry(cfg).input_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def run() -> None:
        with autocast:
            out = maps(images)
        for amap in out.values():  # wait for the device, as copying the maps back would
            amap.float().cpu()

    started = time.perf_counter()
    run()
    first = time.perf_counter() - started
    run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    elapsed = time.perf_counter() - started
    return {
        "precision": "bf16" if bf16 else "fp32",
        "compile": "on" if compiled else "off",
        "first batch s": first,
        "images/s": steps * batch / elapsed,
        "peak GiB": peak_memory(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="ff-train config overrides, e.g. preset=demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--steps", type=int, default=10, help="timed batches per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = [p for p in args.precision if p == "fp32" or device.type == "cuda"]
    if "bf16" in args.precision and device.type != "cuda":
        print("bf16 autocast is CUDA-only: bf16 variants skipped on CPU.")
    jobs = [
        (args.overrides, args.device, p == "bf16", c == "on", args.batch, args.steps)
        for p, c in itertools.product(precisions, args.compile)
    ]
    rows = run_isolated(infer_variant, jobs)
    base = rows[0]
    for row in rows:
        row["speed-up"] = f"{row['images/s'] / base['images/s']:.2f}x"
        row["memory"] = f"{row['peak GiB'] / base['peak GiB']:.2f}x"
    cfg = compose_config(args.overrides)
    print(
        f"{cfg.model.name} on {cfg.encoder.variant}, input {build_geometry(cfg).input_size}, "
        f"batch {args.batch}, {device.type}; ratios against the first row:"
    )
    columns = ["precision", "compile", "first batch s", "images/s", "peak GiB"]
    print_table(rows, [*columns, "speed-up", "memory"])


if __name__ == "__main__":
    main()
