"""Inference time and GPU memory per image by MVTec's runtime protocol.

Follows MVTec's ``measure_runtime_and_memory.py`` (shipped with the dataset), so figures are
comparable with published ones:

* inputs: random ``randn`` float32 images 3 x H x W, batch 1, for H x W = 256x256, 512x512
  and 1024x1224 in turn;
* before each size the CUDA cache and peak statistics are reset and the model is built and
  moved to the device, so the peak memory includes the weights;
* timed per iteration: the host-to-device copy, the forward pass (input -> anomaly map at the
  input size) and ``.cpu()`` of the map (which synchronises); ``time.perf_counter`` instead of
  MVTec's ``time.time`` (same quantity, finer clock);
* GPU: 1000 warm-up iterations (dropped) and 1000 timed ones; CPU: no warm-up, peak NaN;
* memory: ``reserved_bytes.all.peak`` of the caching allocator in MiB; a size that runs out of
  memory is recorded as NaN.

The timed model is the whole deployed pipeline on the device: bilinear (antialiased) resize to
the network input, the model's maps, fusion, Gaussian smoothing, bilinear resize back to H x W.
A run's sliding-window tiling is not applied (at these sizes a tiled run would score about one
forward pass per tile instead of one per image).

    python scripts/measure_runtime.py --encoder dinov2_vitl14_reg --input-size 896 896 --out .
    python scripts/measure_runtime.py --device cpu --encoder tiny_random --iterations 5
    python scripts/measure_runtime.py --run runs/vial        # a trained run (filterformer.runs.run)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from filterformer.errors import FilterformerError
from filterformer.inference.predict import MapStats, Smoothing, network_maps
from filterformer.io import write_csv
from filterformer.models.fusion import MAP_MODES
from filterformer.models.registry import build_encoder, build_model, families

SIZES = ((256, 256), (512, 512), (1024, 1224))
COLUMNS = (
    "image_height",
    "image_width",
    "runtime_mean",
    "runtime_std",
    "runtime_min",
    "runtime_max",
    "peak_memory",
)


class ImageToMap(nn.Module):
    """B x 3 x H x W image tensor -> B x H x W anomaly map, all on the model's device."""

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        mode: str,
        map_stats: MapStats | None,
        smoothing: Smoothing,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.mode = mode
        self.map_stats = map_stats
        self.smoothing = smoothing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        inputs = F.interpolate(images, self.input_size, mode="bilinear", antialias=True)
        maps = network_maps(self.model, inputs, self.mode, self.map_stats, self.smoothing)
        return F.interpolate(maps.unsqueeze(1), size, mode="bilinear").squeeze(1)


def measure(
    build: Callable[[], nn.Module],
    device: torch.device,
    sizes: Sequence[tuple[int, int]] = SIZES,
    warmup: int = 1000,
    iterations: int = 1000,
    progress: bool = True,
) -> list[dict[str, float]]:
    """One CSV row per size: runtime statistics in seconds and peak reserved memory in MiB."""
    cuda = device.type == "cuda"
    rows = []
    for height, width in sizes:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times: list[float] = []
        peak = math.nan
        try:
            model = build().to(device).eval()
            for step in tqdm(
                range(warmup + iterations), desc=f"{height}x{width}", disable=not progress
            ):
                image = torch.randn(1, 3, height, width)
                if cuda:
                    image = image.pin_memory()
                start = time.perf_counter()
                model(image.to(device)).cpu()
                if step >= warmup:
                    times.append(time.perf_counter() - start)
            if cuda:
                peak = torch.cuda.memory_stats(device)["reserved_bytes.all.peak"] / 2**20
        except torch.OutOfMemoryError:
            print(f"{height}x{width}: out of memory, recorded as NaN", file=sys.stderr)
            times = []
        finally:
            model = None
        rows.append(
            {
                "image_height": height,
                "image_width": width,
                "runtime_mean": statistics.fmean(times) if times else math.nan,
                "runtime_std": statistics.pstdev(times) if times else math.nan,
                "runtime_min": min(times, default=math.nan),
                "runtime_max": max(times, default=math.nan),
                "peak_memory": peak,
            }
        )
    return rows


def _fresh_builder(args: argparse.Namespace) -> Callable[[], nn.Module]:
    """A model with random weights (enough for timing); fusion statistics are placeholders."""
    stats = {"inp": (0.0, 1.0), "filter": (0.0, 1.0)}

    def build() -> nn.Module:
        model = build_model(args.model, build_encoder(args.encoder))
        smoothing = Smoothing(sigma=args.sigma)
        return ImageToMap(model, tuple(args.input_size), args.mode, stats, smoothing)

    return build


def _run_builder(run_dir: Path, args: argparse.Namespace) -> Callable[[], nn.Module]:
    """The trained model of a run folder, with its fusion mode, statistics and geometry."""
    from filterformer.runs.run import load_run

    def build() -> nn.Module:
        run = load_run(run_dir)
        return ImageToMap(
            run.model, run.geometry.input_size, run.mode, run.map_stats, run.smoothing
        )

    return build


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run folder of a trained model")
    parser.add_argument("--encoder", default="dinov2_vitb14_reg", help="without --run")
    parser.add_argument("--model", default="filterformer", choices=sorted(families()))
    parser.add_argument("--mode", default="inp", choices=MAP_MODES, help="without --run")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=(392, 392),
        metavar=("H", "W"),
        help="network input size, without --run",
    )
    parser.add_argument(
        "--sigma", type=float, default=4.0, help="Gaussian smoothing sigma, without --run"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, help="default: 1000 on GPU, 0 on CPU (MVTec)")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the CSV")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else (1000 if device.type == "cuda" else 0)
    torch.set_grad_enabled(False)
    try:
        build = _run_builder(args.run, args) if args.run else _fresh_builder(args)
        rows = measure(build, device, SIZES, warmup, args.iterations, not args.no_progress)
    except FilterformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out / f"runtimes_and_memory_{'gpu' if device.type == 'cuda' else 'cpu'}.csv"
    write_csv(out, rows, COLUMNS)
    for row in rows:
        print(", ".join(f"{k}={row[k]:.6g}" for k in COLUMNS))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
