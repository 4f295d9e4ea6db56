"""ff-predict: anomaly maps from trained run folders, for the benchmark server or to inspect.

    ff-predict --run RUN --out DIR [--split test_private test_private_mixed]   its categories
    ff-predict --run RUN --out DIR --split test_public     local layout for ff-eval --maps DIR
    ff-predict --runs RUNS --submission NAME [--out PARENT]  8 categories, check, pack
    ff-predict --run RUN --images FOLDER --out DIR         custom images: overlays, scores.csv
    ff-predict --run RUN --out DIR --split test_public --overlays   + labelled overlays
    ff-predict --check DIR [--data-root ROOT]              the upload checks only
    ff-predict --export DIR --images FOLDER --out OUT      an export folder alone, no torch
    ff-predict --export DEPLOY --submission NAME           a suite's exports (ff-export --runs)

Maps are written as ``DIR/anomaly_images/<category>/<relpath>.tiff`` (float16, original
size) and masks as ``DIR/anomaly_images_thresholded/<category>/<relpath>.png`` ({0, 255}),
using the run's fusion mode (fusion.json), threshold for that mode and post-processing
(config). The float16 rescale maps the run's validation range to 0 - 1000
(submission/rescale.py); threshold and range were calibrated when training ended
(thresholds.json): a run is read, never written. The engine is :mod:`filterformer.runs.predict`
(also ``filterformer.load_run(...).predict``). An interrupted export resumes where it stopped.
Every file goes under --out:
with --run the rescale record is ``DIR/rescale.json`` and overlays
``DIR/overlays/<category>/<relpath>.png``; with --runs the record sits beside the submission
folder (``PARENT/NAME.rescale.json``), as the server refuses extra files inside it.

``--backend onnxruntime|openvino`` runs the run's export (``RUN_export``, or ``--model FILE``)
in the torch-free runtime (:mod:`filterformer.runtime`) instead of the torch model, which is
then not loaded; the export must be of the run as it is now (checkpoint, fusion mode,
statistics, smoothing). ``--export DIR`` needs nothing but the export folder: no run folder,
no torch (``--split`` reads the run's dataset, under ``--data-root`` if given).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filterformer.cli.common import (
    report_user_errors,
    require_path,
    show_library_log,
)
from filterformer.submission import PRIVATE_SPLITS, check_submission, format_report

if TYPE_CHECKING:
    from filterformer.runs.predict import PredictOptions

SPLITS = ("validation", "test_public", "test_private", "test_private_mixed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-predict", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run folder (one category, or multi-class)")
    source.add_argument("--runs", type=Path, help="folder of run folders, one per category")
    source.add_argument("--check", type=Path, metavar="DIR", help="check a submission folder")
    source.add_argument(
        "--export", type=Path, metavar="DIR", help="an ff-export folder or suite (no torch)"
    )
    parser.add_argument("--split", nargs="+", choices=SPLITS, default=list(PRIVATE_SPLITS))
    parser.add_argument(
        "--images",
        type=Path,
        help="with --run: your own images, a folder or one file (a folder with good/ and "
        "defect subfolders is read with its labels)",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="with --images: read every subfolder too (without labels)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="with --run: the anomaly threshold in score units (scores.csv's score column); "
        "default: the run's",
    )
    overlays = parser.add_mutually_exclusive_group()
    overlays.add_argument(
        "--overlays", action="store_true", help="with --run: also write overlays (on for --images)"
    )
    overlays.add_argument(
        "--no-overlays", action="store_true", help="with --images: maps and scores only"
    )
    parser.add_argument("--submission", help="with --runs: name of the submission folder")
    parser.add_argument("--out", type=Path, help="output folder (--runs: its parent, default .)")
    parser.add_argument("--data-root", type=Path, help="dataset root (default: the run's)")
    parser.add_argument("--no-pack", action="store_true", help="with --runs: check, no archive")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the SHA-256 check of the checkpoint"
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "openvino"),
        default="torch",
        help="run the model in torch, or its ff-export file in ONNX Runtime / OpenVINO",
    )
    parser.add_argument("--model", type=Path, help="exported file (default: RUN_export/model.*)")
    parser.add_argument("--threads", type=int, help="threads of an export's runtime")
    parser.add_argument(
        "--category",
        help="with --run of a multi-class model: this category only (needed with --images: "
        "its threshold and post-processing); default every category",
    )
    return parser


def _options(args: argparse.Namespace) -> PredictOptions:
    """The engine's options from the command line."""
    from filterformer.runs.predict import PredictOptions

    names = PredictOptions.__dataclass_fields__
    return PredictOptions(**{k: v for k, v in vars(args).items() if k in names})


def _check(args: argparse.Namespace) -> int:
    problems = check_submission(args.check, args.data_root, progress=not args.no_progress)
    print(format_report(problems, limit=200) if problems else f"{args.check}: all checks passed")
    return 2 if any(p.severity == "error" for p in problems) else 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export as asked, the output folder locked against a second writer meanwhile."""
    from filterformer.runtime import SUITE_FILE

    suite = args.export is not None and (args.export / SUITE_FILE).is_file()
    if args.runs is not None or suite:
        if not args.submission:
            parser.error(f"{'--runs' if args.runs else '--export SUITE'} needs --submission NAME")
        out, beside = (args.out or Path(".")) / args.submission, True  # no file in a submission
    elif args.out is None:
        parser.error("--run and --export need --out DIR")
    else:
        out, beside = args.out, False
    from filterformer.io import require_run_folder  # numpy, no torch

    if args.run is not None:  # missing inputs: one line, before torch is imported
        require_run_folder(args.run)
    for path, option in (
        (args.runs, "--runs"),
        (args.images, "--images"),
        (args.export, "--export"),
    ):
        if path is not None:
            require_path(path, option)
    from filterformer.lock import writing_output

    with writing_output(out, beside=beside):
        if args.runs is not None or suite:
            archive = _submission(args, out)
            print(archive or f"{args.submission}: checked, not packed (--no-pack)")
        else:
            _write(args)
    return 0


def _submission(args: argparse.Namespace, out: Path) -> Path | None:
    """The submission of ``--runs`` (each run's model or export) or of a suite's exports."""
    if args.runs is not None:
        from filterformer.runs.predict import export_submission

        return export_submission(args.runs, out, _options(args))
    from filterformer.runtime import Suite
    from filterformer.runtime.outputs import deployment_options

    suite = Suite(args.export, **deployment_options(args))
    return suite.write_submission(
        out, data_root=args.data_root, pack=not args.no_pack, progress=not args.no_progress
    )


def _sources(args: argparse.Namespace) -> Iterator[tuple[Any, str]]:
    """(what writes the maps, the suffix of scores.csv's name): the export folder alone
    (``--export``), or each category of the run (``--run``; ``--category``: that one) with
    its model or export, one at a time."""
    if args.export is not None:
        from filterformer.runtime import Deployment
        from filterformer.runtime.outputs import deployment_options

        yield Deployment(args.export, **deployment_options(args)), ""
        return
    from filterformer.runs.predict import run_categories, run_maps

    if args.images is not None:  # one category (--category if several)
        yield run_maps(args.run, _options(args)), ""
        return
    categories = run_categories(args.run, args.category)
    for category in categories:
        yield (
            run_maps(args.run, _options(args), category),
            (f"_{category}" if len(categories) > 1 else ""),
        )


def _write(args: argparse.Namespace) -> None:
    """Maps of ``--images`` or of ``--split``, with scores.csv and a histogram: the run's
    model or export (``--run``), or an export folder alone (``--export``)."""
    from filterformer.data.folder import images_to_predict

    for source, tag in _sources(args):
        if args.images is not None:
            samples = images_to_predict(args.images, source.category, args.recursive)
            print(source.write_predictions(samples, args.out, not args.no_overlays))
        else:
            samples = [s for split in args.split for s in source.samples(split)]
            print(source.write_predictions(samples, args.out, args.overlays, tag))
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ff-predict; returns the exit code (2 for any user-fixable error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    show_library_log("ff-predict")
    if args.check is not None:
        return report_user_errors("ff-predict", lambda: _check(args))
    return report_user_errors("ff-predict", lambda: _run(args, parser))


if __name__ == "__main__":
    raise SystemExit(main())
