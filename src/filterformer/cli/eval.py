"""ff-eval: metrics of anomaly maps on a split with ground truth, per category and mean.

    ff-eval --run RUN [--split test_public]        a run's model predicts the maps
    ff-eval --runs-dir runs                        every run under a folder, one table
    ff-eval --maps DIR [--thresholds FILE]         precomputed maps (ff-predict's layout)
    ff-eval --calibrate --run RUN                  store thresholds in an older run
    ff-eval --run RUN --data mvtec_ad --data-root DIR [--categories ...]   zero-shot

The engine is :mod:`filterformer.runs.evaluate` (also ``filterformer.load_run(...).evaluate``);
this command parses, calls it and prints the table. A run is read, never written: outputs go to
``<run>_eval/<split>/`` (or ``--out``). Private splits have no ground truth: use ff-predict
and the benchmark server for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from filterformer.cli.common import report_user_errors, show_library_log
from filterformer.data.datasets import ALL_SPLITS, OFFICIAL_CATEGORIES
from filterformer.evaluation.aupro import SERVER_LIMIT
from filterformer.evaluation.protocol import PROTOCOLS, ZERO_SHOT_MAPS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-eval", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--maps", type=Path, help="folder of precomputed .tiff maps")
    source.add_argument("--run", type=Path, action="append", help="run folder (repeatable)")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="without --maps/--run: evaluate every run under this folder",
    )
    parser.add_argument(
        "--data-root", type=Path, help="dataset root (default: the run's data.root, $FF_DATA_ROOT)"
    )
    parser.add_argument(
        "--categories",
        nargs="+",
        help="default: every category with maps / of the runs (a multi-class run has several)",
    )
    parser.add_argument(
        "--data",
        choices=tuple(OFFICIAL_CATEGORIES),
        help="with runs: zero-shot on this dataset's categories (--categories: those), which "
        "the runs never trained on; scored by its protocol",
    )
    parser.add_argument(
        "--zero-shot-map",
        choices=ZERO_SHOT_MAPS,
        default=ZERO_SHOT_MAPS[0],
        help="with --data: inp_distance (the INP-Former code's zero-shot map, default) or "
        "reconstruction (the run's own map)",
    )
    parser.add_argument(
        "--split",
        choices=ALL_SPLITS,
        help="default: the data's test split (test_public for MVTec AD 2, test for MVTec AD "
        "and VisA)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="with runs: how to score them (default: the runs' eval.protocol); --maps: mvtec_ad2",
    )
    parser.add_argument(
        "--pro-limit",
        type=float,
        nargs="+",
        default=[SERVER_LIMIT],
        help="AU-PRO integration limits (default 0.05, the server's)",
    )
    parser.add_argument("--thresholds", type=Path, help="thresholds.json to binarise the maps")
    parser.add_argument("--closing", type=int, default=0, help="closing kernel (odd, 0 off)")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes in binary maps")
    parser.add_argument("--erosion", type=int, default=0, help="erosion kernel (odd, 0 off)")
    parser.add_argument(
        "--float32",
        action="store_true",
        help="AU-PRO on float32 maps (exact, memory grows with distinct scores) "
        "instead of the server's float16 rounding",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="with --maps: refuse (exit 2) maps without an image, integer TIFFs and maps that "
        "lose precision in float16, instead of warning",
    )
    parser.add_argument("--json", type=Path, help="also write the metrics document here")
    parser.add_argument(
        "--out",
        type=Path,
        help="write metrics, PRO curves and overlays here (runs: in <out>/<run name>/<split>; "
        "default beside each run, <run>_eval/<split>: a run folder is never written)",
    )
    parser.add_argument("--device", help="with runs: torch device (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--no-verify", action="store_true", help="with runs: skip the checkpoint's SHA-256 check"
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="with runs: store a threshold for every fusion mode in each run (runs do this when "
        "training ends; for older runs), then exit",
    )
    return parser


def calibrate(args: argparse.Namespace) -> None:
    """--calibrate: store every fusion mode's threshold in each run (the run's writer does)."""
    from filterformer.runs.calibrate import calibrate_run
    from filterformer.runs.evaluate import EvalOptions, run_folders
    from filterformer.runs.settings import resolve_device

    device = resolve_device(args.device)
    for run_dir in run_folders(EvalOptions(run=args.run, runs_dir=args.runs_dir)):
        results = calibrate_run(
            run_dir, device=device, data_root=args.data_root, progress=not args.no_progress
        )
        for result in results:
            if result.threshold is None:
                print(f"{run_dir}: {result.mode}: not calibrated ({result.skipped})")
            else:
                label = result.threshold.describe("validation")
                print(f"{run_dir}: {result.mode}: {label} = {result.threshold.value:.6g}")


def evaluate(args: argparse.Namespace) -> None:
    """Evaluate as the arguments say and print the table."""
    from filterformer.io import require_run_folder  # numpy, no torch
    from filterformer.runs.evaluate import EvalOptions
    from filterformer.runs.evaluate import evaluate as run_evaluation

    for run_dir in args.run or []:  # before torch is imported: one line, at once
        require_run_folder(run_dir)
    if args.calibrate:
        calibrate(args)
        return
    options = {k: v for k, v in vars(args).items() if k != "calibrate"}
    print(run_evaluation(EvalOptions(**options)).table)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ff-eval; returns the exit code (2 for any user-fixable error)."""
    args = build_parser().parse_args(argv)
    show_library_log("ff-eval")
    return report_user_errors("ff-eval", lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
