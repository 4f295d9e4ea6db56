"""CPR inference: anomaly-map images/s and the float16 memory bank for N reference images.

    python scripts/bench_cpr.py                                  # preset=cpr_paper, N = 300
    python scripts/bench_cpr.py preset=cpr_dinov2 --references 300 --batch 8
    python scripts/bench_cpr.py preset=cpr_demo --references 24  # seconds, for a smoke test
    python scripts/bench_cpr.py --references 40 --official       # also the CPR code's loop

Positional arguments are ff-train overrides (default ``preset=cpr_paper``: DenseNet-201 at
320 x 320). The backbone has random weights (weights do not change the speed); the reference
set is fitted for real on N random images, each a noisy square on a noisy background so that
the foreground estimation of object categories finds an object (codebook, histograms,
foreground), then the bank is built and ``model.anomaly_maps`` is timed on batches of such
images: backbone, global retrieval against all N, windowed local retrieval against the K
retrieved, foreground weight.
The bank's measured size is printed beside the formula D x (h4 w4 + h8 w8) x 2 B x N. The
CPR paper (Li et al., "Target before Shooting", IEEE TIP 2024) reports 113 FPS on a GPU.
Both timings include the map's 33 x 33 blur and the top-T image score.

``--official`` also times the CPR code's test loop (github flyinghu123/CPR, test.py),
re-expressed here with the same heads and backbone: one image at a time, a float32 bank of
unit descriptors (norm + 1e-8), the K references' windows gathered by unfolding them (padding
counted as distance 1 / 1e-8), the foreground maps of the references kept at the input size
in float64 and the test image's resized with OpenCV, blur and top-512 sum. Global retrieval is
not timed there: the code reads it from a file written offline (tools/generate_retrieval.py).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from bench_train import compose_config, peak_memory, print_table

from filterformer.evaluation.image_metrics import top_sum
from filterformer.inference.predict import Smoothing, smooth_maps
from filterformer.models.cpr import CPR
from filterformer.runs.run import build_from_config, build_geometry, build_smoothing

TOP_T = 512
"""CPR code (test.py): the image score sums the 512 largest values of the blurred map."""


def object_images(count: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``count`` normalised images: a bright noisy square (half the side) on a dark noisy field."""
    images = torch.randn(count, 3, *size, generator=generator) * 0.3 - 1.0
    height, width = size
    images[:, :, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] += 2.0
    return images


class OfficialLoop:
    """The CPR code's test loop (test.py) on ``model``'s backbone and heads, one image a call."""

    BLUR = Smoothing(4.0, 33, "reflect")
    """test.py: torchvision's gaussian_blur, 33 x 33, sigma 4 (reflect padding)."""

    def __init__(self, model: CPR, references: torch.Tensor, device: torch.device) -> None:
        self.model, self.device = model, device
        scales: list[list[torch.Tensor]] = [[], []]  # float32 unit descriptors, as test.py
        with torch.no_grad():
            for image in references:
                outputs = model.head_outputs(model.encoder(image[None].to(device)))
                for store, out in zip(scales, outputs, strict=True):
                    store.append(out / (out.norm(dim=1, keepdim=True) + 1e-8))
        self.bank = [torch.cat(s) for s in scales]
        size = tuple(references.shape[-2:])
        maps = model.references.foreground_maps
        self.foreground = None  # test.py: every reference's map at the input size, float64
        if maps is not None:
            resized = [cv2.resize(m.astype(float), size[::-1]) for m in maps.numpy()]
            self.foreground = torch.from_numpy(np.stack(resized)).to(device)

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 bank and of the stored foreground maps."""
        held = [*self.bank, *([] if self.foreground is None else [self.foreground])]
        return sum(t.numel() * t.element_size() for t in held)

    def distances(self, out: torch.Tensor, scale: int, neighbours: torch.Tensor) -> torch.Tensor:
        """h x w windowed min distance of one image's head output to its K references."""
        window = self.model.windows[scale]
        query = out / (out.norm(dim=1, keepdim=True) + 1e-8)
        refs = self.bank[scale][neighbours]  # K x D x h x w
        k, d, h, w = refs.shape
        unfold = torch.nn.Unfold(window, padding=window // 2)
        regions = unfold(refs).reshape(k, d, -1, h, w)
        dist = 1 - (query[:, :, None] * regions).sum(1)  # K x r^2 x h x w
        inside = unfold(torch.ones(1, 1, h, w, device=refs.device)).reshape(1, -1, h, w)
        return (dist / (inside + 1e-8)).min(1).values.min(0).values  # padding: never the min

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, neighbours: torch.Tensor) -> float:
        """The image score of one 3 x H x W image against its K neighbours."""
        model, size = self.model, tuple(image.shape[-2:])
        features = model.encoder(image[None].to(self.device))
        outputs = model.head_outputs(features)
        grid = outputs[0].shape[-2:]
        total = sum(
            F.interpolate(
                self.distances(out, s, neighbours)[None, None], size=grid, mode="bilinear"
            )
            for s, out in enumerate(outputs)
        )
        amap = F.interpolate(total, size=size, mode="bilinear")[0, 0]
        if self.foreground is not None:
            own = model.references.foreground(features[0])[0].cpu().numpy().astype(float)
            own = torch.from_numpy(cv2.resize(own, size[::-1])).to(self.device)
            amap = amap * torch.cat([own[None], self.foreground[neighbours]]).max(0).values
        blurred = smooth_maps(amap[None].float(), self.BLUR)[0]
        return float(torch.topk(blurred.flatten(), k=TOP_T).values.sum())


def timed(call, repeats: int) -> float:
    """Seconds per call of ``call`` (after one untimed call)."""
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def official_row(model: CPR, references: torch.Tensor, images: torch.Tensor, device) -> dict:
    """The official loop's figures: bank build time and size, images/s."""
    started = time.perf_counter()
    loop = OfficialLoop(model, references, device)
    build = time.perf_counter() - started
    with torch.no_grad():
        neighbours = model.retrieve(model.backbone(images)[0])  # test.py reads them from a file

    def run() -> None:
        for image, own in zip(images, neighbours, strict=True):
            loop(image, own)

    seconds = timed(run, 1)
    return {
        "code": "CPR code's test loop",
        "bank build s": build,
        "images/s": len(images) / seconds,
        "bank MiB": loop.nbytes / 2**20,
        "per image MiB": loop.nbytes / len(references) / 2**20,
    }


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
    parser.add_argument("--official", action="store_true", help="also time the CPR code's loop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(["preset=cpr_paper", *args.overrides])
    device = torch.device(args.device)
    model, _ = build_from_config(cfg)
    model.to(device).eval()
    size = build_geometry(cfg).input_size
    smoothing = build_smoothing(cfg)
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
        maps = smooth_maps(model.anomaly_maps(images)["cpr"].float(), smoothing).cpu()
        [top_sum(m.numpy(), TOP_T) for m in maps]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(run, args.steps)
    height, width = size  # the formula: D x (h_4 w_4 + h_8 w_8) x 2 B per image
    cells = sum((height // s) * (width // s) for s in model.encoder.strides)
    per_image = model.out_dim * cells * 2
    rows = [
        {
            "code": "filterformer",
            "bank build s": build,
            "images/s": args.batch / seconds,
            "bank MiB": bank.nbytes / 2**20,
            "per image MiB": per_image / 2**20,
        }
    ]
    if args.official:
        rows.append(official_row(model, references, images, device))
    grids = " + ".join(f"{s.shape[2]}x{s.shape[3]}" for s in bank.scales)
    print(
        f"CPR on {cfg.encoder.variant}, input {size}, N = {bank.size} references (fitted in "
        f"{fit:.1f} s), batch {args.batch}, {device.type}, {torch.get_num_threads()} threads; "
        f"bank {bank.scales[0].shape[1]} x ({grids}) per image; peak "
        f"{peak_memory(device):.2f} GiB"
    )
    print_table(rows, list(rows[0]))
    if bank.nbytes != per_image * bank.size:
        raise SystemExit("the bank's size differs from the formula")


if __name__ == "__main__":
    main()
