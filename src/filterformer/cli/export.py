"""ff-export: a run's whole map path as an ONNX file or an OpenVINO IR, checked against torch.

    ff-export --run RUN                                   RUN_export/model.onnx
    ff-export --run RUN --format openvino --out DIR/model.xml [--fp16]
    ff-export --run RUN --dynamic-size --images FOLDER    any input size; parity on FOLDER
    ff-export --runs SUITE --out DEPLOY                   one export per category + suite.json
    ff-export --run RUN --serving triton [--repository REPO]   + a Triton model repository

The graph takes normalised B x 3 x h x w network inputs and gives the anomaly maps at
network-input resolution (fused by the run's mode, smoothed) and the image scores. Before the
file is written, the parity check runs it in ONNX Runtime (onnx) or OpenVINO (openvino) on the
run's validation images (or --images) against the torch model: over the tolerance (1e-4, or
1e-2 with --fp16, in units of max(1, peak |torch value|)) the export fails with exit code 2 and
nothing is written. export.json beside the file holds the preprocessing, threshold, float16
rescale and post-processing, so a caller needs no filterformer. The threshold and rescale are
the run's calibration (made when training ended); the run folder itself is never written.
Each model family says how its map path exports: most as one graph, a family that retrieves
reference images as graphs around a NumPy step over a bank file beside them (README,
"Deployment"). ff-predict --export DIR runs the result without torch. --serving triton|ovms also
writes the export (or suite) as the model repository of Triton Inference Server or OpenVINO
Model Server (default: beside the export, ``<folder>_<engine>``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from filterformer.cli.common import report_user_errors, show_library_log

DEFAULT_PARITY_IMAGES = 16
FORMATS = ("onnx", "openvino")  # as filterformer.export.formats; --help must not import torch
ENGINES = ("triton", "ovms")  # as filterformer.export.serving


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-export", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run folder (ff-train)")
    source.add_argument("--runs", type=Path, help="a suite: one run folder per category")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument(
        "--out",
        type=Path,
        help="file to write (default RUN_export/model.*, beside the run); --runs: a folder",
    )
    parser.add_argument(
        "--dynamic-size", action="store_true", help="any input height/width (patch multiples)"
    )
    parser.add_argument("--fp16", action="store_true", help="store the weights as float16")
    parser.add_argument("--serving", choices=ENGINES, help="also write a server's model repository")
    parser.add_argument("--repository", type=Path, help="where --serving writes it")
    parser.add_argument("--images", type=Path, help="parity check on this folder's images")
    parser.add_argument(
        "--parity-images",
        type=int,
        default=DEFAULT_PARITY_IMAGES,
        metavar="N",
        help=f"check on the first N images (default {DEFAULT_PARITY_IMAGES}; 0: all)",
    )
    parser.add_argument("--tolerance", type=float, help="parity tolerance (default 1e-4/1e-2)")
    parser.add_argument("--data-root", type=Path, help="MVTec AD 2 root (default: the run's)")
    parser.add_argument("--device", help="device of the parity pass (default: cuda if any)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--category",
        help="a multi-class run: the category to export (its threshold and float16 range go "
        "into export.json; default folder RUN_export/<category>/)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the SHA-256 check of the checkpoint"
    )
    return parser


def _export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from filterformer.export import EXPORT_FILE
    from filterformer.runs.exporting import export_run_folder, export_suite
    from filterformer.runs.predict import PredictOptions

    options = {
        "images": args.images,
        "parity_images": args.parity_images,
        "dynamic_size": args.dynamic_size,
        "fp16": args.fp16,
        "tolerance": args.tolerance,
        "options": PredictOptions(
            device=args.device,
            batch_size=args.batch_size,
            no_progress=args.no_progress,
            no_verify=args.no_verify,
            category=args.category,
        ),
    }
    if args.runs is not None:
        if args.out is None:
            parser.error("--runs needs --out DEPLOY (the folder of the suite's exports)")
        results = export_suite(args.runs, args.out, args.format, **options).values()
    else:
        results = [export_run_folder(args.run, args.format, args.out, **options)]
    for result in results:
        print(result.parity.describe())
        print(f"wrote {result.path} and {result.path.parent / EXPORT_FILE}")
    folder = args.out if args.runs is not None else result.path.parent
    if args.runs is not None:
        print(f"wrote {folder / 'suite.json'}")
    if args.serving:
        from filterformer.export.serving import write_serving

        repository = args.repository or folder.with_name(f"{folder.name}_{args.serving}")
        names = write_serving(folder, repository, args.serving)
        print(f"wrote {repository}: {args.serving} models {', '.join(names)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ff-export; returns the exit code (2 for any user-fixable error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    show_library_log("ff-export")
    return report_user_errors("ff-export", lambda: _export(args, parser))


if __name__ == "__main__":
    raise SystemExit(main())
