"""EAR / FADeR size and CPU latency per U-Net layout: parameters, and milliseconds per image.

    python scripts/bench_ear.py                      # 256 x 256, batch 1, median of 5 runs
    python scripts/bench_ear.py --threads 1 --repeats 3

Per variant (``VARIANTS``): the U-Net's parameters (what EAR trains; the frozen DINO ViT-S/8
and FADeR's MLP are listed once), then the time of one image through the U-Net alone and
through the whole EAR map (ViT-S/8 [CLS] attention mask, mosaic, U-Net, MSGMS), in float32 on
the CPU: the median over ``--repeats`` calls after one warm-up call, as wall time and as the
process's CPU time. On a machine shared with other work the wall time grows with the load;
with ``--threads 1`` the CPU time is the single-thread latency of an idle core. The ViT is
randomly initialised (its speed does not depend on its weights): no weights file is needed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from filterformer.models import build_encoder, build_model
from filterformer.models.ear.unet import build_unet

VARIANTS: dict[str, dict] = {
    "template 32-512 (ear_paper)": {"unet_layout": "template", "widths": (32, 64, 128, 256, 512)},
    "template 64-1024": {"unet_layout": "template", "widths": (64, 128, 256, 512, 1024)},
    "template 64-512, D = 4 (RIAD-PyTorch)": {
        "unet_layout": "template",
        "widths": (64, 128, 256, 512),
    },
    "strided 16-256 (our first reading)": {
        "unet_layout": "strided",
        "widths": (16, 32, 64, 128, 256),
        "unet_output": "sigmoid",
    },
}
"""Name -> EAR settings."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square input side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    return parser


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def median_ms(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) time of ``repeats`` calls after one warm-up call, in milliseconds."""
    run()
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def measure(size: int, repeats: int) -> list[dict]:
    """One row per variant: parameters and latencies."""
    torch.manual_seed(0)
    encoder = build_encoder("dino_vits8", pretrained=False)
    images = torch.rand(1, 3, size, size)
    rows = []
    for name, settings in VARIANTS.items():
        unet = build_unet(settings["unet_layout"], settings["widths"]).eval()
        model = build_model("ear", encoder, **settings).eval()
        unet_wall, unet_cpu = median_ms(lambda unet=unet: unet(images), repeats)
        ear_wall, ear_cpu = median_ms(lambda model=model: model.anomaly_maps(images), repeats)
        rows.append(
            {
                "variant": name,
                "U-Net M params": parameters(unet) / 1e6,
                "U-Net ms (wall / CPU)": f"{unet_wall:.0f} / {unet_cpu:.0f}",
                "EAR map ms (wall / CPU)": f"{ear_wall:.0f} / {ear_cpu:.0f}",
            }
        )
    return rows


def table(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|"]
    for row in rows:
        cells = [v if isinstance(v, str) else f"{v:.2f}" for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.size, args.repeats)
    encoder = build_encoder("dino_vits8", pretrained=False)
    fader = build_model("fader", encoder, mosaic_scale=8)
    print(
        f"{args.size} x {args.size} px, batch 1, float32, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; frozen DINO ViT-S/8: {parameters(encoder) / 1e6:.1f} M; "
        f"FADeR's MLP at m = 8: {parameters(fader.predictor) / 1e3:.1f} k"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
