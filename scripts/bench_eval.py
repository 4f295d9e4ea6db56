"""Benchmark our streaming AU-PRO + SegF1 against a sort-everything exact reference.

Synthetic split: N maps of H x W (smoothed noise plus a raised score on elliptic GT blobs;
every fourth image is anomaly-free), generated deterministically from (seed, index).
Each side runs in its own subprocess so its peak resident memory (ru_maxrss) is its own;
the interpreter and library baseline is reported separately.

    python scripts/bench_eval.py                  # 40 maps of 1024 x 1024, ours vs reference
    python scripts/bench_eval.py --large          # 300 maps of 2448 x 2048, ours only

The reference does what MVTec's ``compute_pro`` does, in our own code: hold every pixel of
the split, sort all scores, cumulative sums, keep the last point of every run of equal
scores, float32 FPR; its SegF1 thresholds the stacked maps at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import cv2
import numpy as np
from scipy import ndimage

from filterformer.evaluation.aupro import ProAccumulator, integrate_limited
from filterformer.evaluation.segf1 import SegF1Accumulator, binarize

THRESHOLD = 0.6
LIMITS = (0.05, 0.3)


def make_pair(index: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (float32 map, bool GT) pair; deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    gt = np.zeros((height, width), np.uint8)
    if index % 4:
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(2, width // 25 + 3)), int(rng.integers(2, height // 25 + 3)))
            cv2.ellipse(gt, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    noise = rng.standard_normal((height, width), dtype=np.float32)
    amap = cv2.GaussianBlur(noise, (0, 0), 2.0) * 2.0
    amap += 0.6 * cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 3.0)
    return amap, gt.astype(bool)


def run_ours(n: int, height: int, width: int, seed: int) -> dict:
    """Stream the pairs through our accumulators; time only the metric calls."""
    pro, seg = ProAccumulator(float16=True), SegF1Accumulator()
    elapsed = 0.0
    for i in range(n):
        amap, gt = make_pair(i, height, width, seed)
        start = time.perf_counter()
        pro.update(amap, gt, f"map {i}")
        seg.update(binarize(amap.astype(np.float16), THRESHOLD), gt, f"map {i}")
        elapsed += time.perf_counter() - start
    start = time.perf_counter()
    result = pro.compute(LIMITS)
    counts = seg.compute()
    elapsed += time.perf_counter() - start
    return {"seconds": elapsed, "au_pro": result.au_pro, "seg_f1": counts.f1}


def reference_au_pro(maps: np.ndarray, gts: np.ndarray, limits: tuple[float, ...]) -> dict:
    """Exact AU-PRO by sorting every pixel of the split (MVTec's method, our code)."""
    fp = np.zeros(maps.shape, np.uint32)
    pro = np.zeros(maps.shape, np.float64)
    num_ok, num_regions = 0, 0
    for i, gt in enumerate(gts):
        labels, count = ndimage.label(gt, structure=np.ones((3, 3), int))
        num_regions += count
        num_ok += int(np.sum(labels == 0))
        fp[i][labels == 0] = 1
        sizes = np.bincount(labels.ravel())
        inside = labels > 0
        pro[i][inside] = 1.0 / sizes[labels[inside]]
    scores = maps.ravel()
    order = np.argsort(scores)[::-1]
    scores, fp, pro = scores[order], fp.ravel()[order], pro.ravel()[order]
    fpr = np.cumsum(fp).astype(np.float32)
    np.divide(fpr, np.int64(num_ok), out=fpr)
    pros = np.cumsum(pro) / num_regions
    last = np.append(np.diff(scores) != 0, True)
    fpr = np.concatenate([[0.0], np.minimum(fpr[last], 1.0), [1.0]])
    pros = np.concatenate([[0.0], np.minimum(pros[last], 1.0), [1.0]])
    return {float(limit): integrate_limited(fpr, pros, limit) / limit for limit in limits}


def run_reference(n: int, height: int, width: int, seed: int) -> dict:
    """Hold the whole split as float16 (what the server reads) and sort it."""
    maps = np.empty((n, height, width), np.float16)
    gts = np.empty((n, height, width), bool)
    for i in range(n):
        maps[i], gts[i] = make_pair(i, height, width, seed)
    start = time.perf_counter()
    au_pro = reference_au_pro(maps, gts, LIMITS)
    binary = maps > THRESHOLD
    tp = int(np.sum(binary & gts))
    seg_f1 = 2 * tp / (2 * tp + int(np.sum(binary & ~gts)) + int(np.sum(~binary & gts)))
    return {"seconds": time.perf_counter() - start, "au_pro": au_pro, "seg_f1": seg_f1}


def child(role: str, n: int, height: int, width: int, seed: int) -> None:
    """Run one side and print its figures and peak memory as one JSON line."""
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = (run_ours if role == "ours" else run_reference)(n, height, width, seed)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["baseline_rss_mb"] = baseline / 1024
    print(json.dumps(out))


def spawn(role: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        role,
        "--n",
        str(args.n),
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["au_pro"] = {float(k): v for k, v in result["au_pro"].items()}
    return result


def report(name: str, figures: dict) -> None:
    pro = ", ".join(f"@{k:g} {v:.12f}" for k, v in figures["au_pro"].items())
    print(
        f"{name:9s} {figures['seconds']:8.2f} s  peak RSS {figures['peak_rss_mb']:7.0f} MB "
        f"(baseline {figures['baseline_rss_mb']:.0f} MB)  AU-PRO {pro}  "
        f"SegF1 {figures['seg_f1']:.12f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--large", action="store_true", help="300 maps of 2448 x 2048 (1.5 Gpx), our path only"
    )
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large:
        args.n, args.height, args.width = 300, 2048, 2448
    if args.child:
        child(args.child, args.n, args.height, args.width, args.seed)
        return
    print(
        f"{args.n} maps of {args.height} x {args.width} "
        f"({args.n * args.height * args.width / 1e9:.3f} Gpx), float16 mode"
    )
    ours = spawn("ours", args)
    report("ours", ours)
    if args.large:
        return
    ref = spawn("reference", args)
    report("reference", ref)
    diff = max(abs(ours["au_pro"][k] - ref["au_pro"][k]) for k in ref["au_pro"])
    print(
        f"speed-up {ref['seconds'] / ours['seconds']:.1f}x   max |AU-PRO diff| {diff:.3e}   "
        f"|SegF1 diff| {abs(ours['seg_f1'] - ref['seg_f1']):.3e}"
    )


if __name__ == "__main__":
    main()
