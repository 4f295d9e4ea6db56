"""ff-predict: anomaly maps from trained run folders, for the benchmark server or to inspect.

    ff-predict --run RUN --out DIR [--split test_private test_private_mixed]   one category
    ff-predict --run RUN --out DIR --split test_public     local layout for ff-eval --maps DIR
    ff-predict --runs RUNS --submission NAME [--out PARENT]  8 categories, check, pack
    ff-predict --run RUN --images FOLDER --out DIR         custom images: overlays, scores.csv
    ff-predict --run RUN --out DIR --split test_public --overlays   + labelled overlays
    ff-predict --check DIR [--data-root ROOT]              the upload checks only

Maps are written as ``DIR/anomaly_images/<category>/<relpath>.tiff`` (float16, original
size) and masks as ``DIR/anomaly_images_thresholded/<category>/<relpath>.png`` ({0, 255}),
using the run's fusion mode (fusion.json), threshold for that mode (thresholds.json) and
post-processing (config). The float16 rescale of a run is fitted once on its validation maps
(min -> 0, max -> 1000; export/rescale.py) and kept in ``<run>/rescale.json``; the same
validation pass calibrates a missing threshold (mean + 3 std, stored in thresholds.json as
ff-eval does). An interrupted export resumes where it stopped. Every file goes under --out:
with --run the rescale record is ``DIR/rescale.json`` and overlays
``DIR/overlays/<category>/<relpath>.png``; with --runs the record sits beside the submission
folder (``PARENT/NAME.rescale.json``), as the server refuses extra files inside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from filterformer.cli.common import report_user_errors
from filterformer.data.folder import images_to_predict
from filterformer.data.sample import Sample
from filterformer.errors import ConfigError, SubmissionError
from filterformer.evaluation.predictions import COLUMNS, prediction_summary
from filterformer.evaluation.thresholds import Threshold, write_thresholds
from filterformer.inference.postprocess import for_sample
from filterformer.io import read_anomaly_map, read_mask, write_csv
from filterformer.lock import lock_output, unlock_output
from filterformer.submission import (
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    MapRescale,
    SubmissionWriter,
    check_submission,
    format_report,
    pack_submission,
    save_record,
)
from filterformer.submission.mvtec_submission import map_path, mask_path
from filterformer.submission.rescale import DEFAULT_TARGET
from filterformer.submission.writer import export_record

SPLITS = ("validation", "test_public", "test_private", "test_private_mixed")
RESCALE_FILE = "rescale.json"
SCORES_FILE = "scores.csv"
HISTOGRAM_FILE = "score_histogram.png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ff-predict", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run folder of one category")
    source.add_argument("--runs", type=Path, help="folder of run folders, one per category")
    source.add_argument("--check", type=Path, metavar="DIR", help="check a submission folder")
    parser.add_argument("--split", nargs="+", choices=SPLITS, default=list(PRIVATE_SPLITS))
    parser.add_argument(
        "--images",
        type=Path,
        help="with --run: your own images, a folder or one file (a folder with good/ and "
        "defect subfolders is read with its labels)",
    )
    parser.add_argument(
        "--recursive", action="store_true", help="with --images: read subfolders too"
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
    parser.add_argument("--model", type=Path, help="exported file (default: RUN/export/model.*)")
    return parser


class RunExporter:
    """Predicts with one loaded run and writes its maps, masks and (optionally) overlays."""

    def __init__(self, run_dir: Path, args: argparse.Namespace) -> None:
        import torch

        from filterformer.export import map_backend
        from filterformer.runs.run import load_run
        from filterformer.runs.run_maps import RunMaps

        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.run = load_run(run_dir, device=self.device, verify=not args.no_verify)
        backend, model_file = getattr(args, "backend", "torch"), getattr(args, "model", None)
        self.args = args
        self.maps = RunMaps(
            self.run,
            device=self.device,
            data_root=args.data_root,
            progress=not args.no_progress,
            batch_size=args.batch_size,
            backend=map_backend(self.run, backend, model_file),
        )
        self.rescale, self.threshold = self._calibration()

    def _calibration(self) -> tuple[MapRescale, Threshold]:
        """The stored rescale and threshold, or both from one pass over the validation maps."""
        run = self.run
        record_file = run.run_dir / RESCALE_FILE
        records = json.loads(record_file.read_text()) if record_file.is_file() else {}
        record = records.get(run.category)
        if record is not None and record.get("mode") == run.mode and run.threshold is not None:
            return MapRescale.from_dict(record), run.threshold
        low, high = np.inf, -np.inf

        def tracked(maps: Iterator[tuple[Sample, np.ndarray]]) -> Iterator[np.ndarray]:
            nonlocal low, high
            for _, amap in maps:
                low, high = min(low, float(amap.min())), max(high, float(amap.max()))
                yield amap

        def validation() -> Iterator[np.ndarray]:
            return tracked(self.maps.predict(self.maps.samples("validation")))

        threshold = run.threshold
        if threshold is None:
            threshold = self.maps.threshold(validation)
            write_thresholds(run.run_dir / "thresholds.json", {run.category: threshold}, run.mode)
        if not np.isfinite(low):  # the rescale needs the range of every validation map
            for _ in validation():
                pass
        rescale = MapRescale.from_range(low, high)
        save_record(
            record_file, run.category, {**export_record(rescale, threshold.value), "mode": run.mode}
        )
        return rescale, threshold

    def export(
        self,
        samples: Sequence[Sample],
        out: Path,
        overlays: bool = False,
        record: Path | None = None,
    ) -> int:
        """Write maps and masks of ``samples`` under ``out`` (resuming); return how many.

        ``record``: the rescale record file (default: beside ``out``, see SubmissionWriter).
        """
        settings = self.run.postprocess
        writer = SubmissionWriter(
            out,
            self.run.category,
            self.rescale,
            self.threshold.value,
            record_file=record,
            split_thresholds={split: t.value for split, t in self.threshold.splits.items()},
        )
        overlay_dir = out / "overlays" / self.run.category
        todo = [
            s
            for s in samples
            if not writer.is_done(s.relpath)
            or (overlays and not (overlay_dir / f"{s.relpath}.png").is_file())
        ]
        if overlays:
            from filterformer.evaluation.figures import colour_scale, write_overlay
        high = float(self.rescale.invert(np.float64(DEFAULT_TARGET)))
        for sample, amap in self.maps.predict(todo):
            step = for_sample(settings, sample.split, sample.load_image)
            writer.write(sample.relpath, amap, sample.shape, step, sample.split)
            threshold = self.threshold.for_split(sample.split).value
            if overlays:
                write_overlay(
                    overlay_dir / f"{sample.relpath}.png",
                    sample.load_image(),
                    amap,
                    read_mask(writer.paths(sample.relpath)[1], sample.shape),
                    sample.load_mask() if sample.mask_path or not sample.label else None,
                    colour_scale(self.rescale.offset, threshold, high),
                    threshold,
                    name=str(sample.relpath),
                )
        return len(todo)

    def scores(self, samples: Sequence[Sample], out: Path) -> list[dict]:
        """scores.csv's rows: each exported sample's score, read back from its map and mask."""
        from filterformer.evaluation.predictions import prediction_row
        from filterformer.evaluation.protocol import image_score

        rows = []
        for sample in samples:
            tiff = image_score(
                read_anomaly_map(map_path(out, self.run.category, sample.relpath)),
                self.run.image_score,
            )
            binary = read_mask(mask_path(out, self.run.category, sample.relpath), sample.shape)
            threshold = self.threshold.for_split(sample.split).value
            row = prediction_row(
                f"{sample.relpath}{sample.path.suffix}",
                sample.label,
                float(self.rescale.invert(np.float64(tiff))),
                threshold,
                int(binary.sum()),
                (tiff, self.rescale.threshold(threshold)),
            )
            rows.append(row)
        return rows

    def histogram(self, samples: Sequence[Sample], rows: Sequence[Mapping], path: Path) -> None:
        """The score histogram of ``rows`` (by label) with the validation scores, as a PNG."""
        from filterformer.evaluation.figures import write_score_histogram

        validation = self.maps.validation_summary()
        value = self.threshold.value
        write_score_histogram(
            path,
            [row["score"] for row in rows],
            [s.label for s in samples],
            value,
            f"{self.run.category}: image scores",
            validation=() if validation is None else validation.scores,
            threshold_label=f"threshold {value:.4g} ({self.threshold.describe('images')})",
        )


def _runs_by_category(runs_dir: Path, categories: Sequence[str]) -> dict[str, Path]:
    """One run folder per category under ``runs_dir`` (read from each config.yaml)."""
    from omegaconf import OmegaConf

    found: dict[str, Path] = {}
    for config in sorted(runs_dir.glob("*/config.yaml")):
        category = OmegaConf.load(config).category.name
        if category in found:
            raise ConfigError(
                f"{runs_dir}: two runs for category {category!r} ({found[category]} and "
                f"{config.parent}); keep one run folder per category."
            )
        found[category] = config.parent
    missing = [c for c in categories if c not in found]
    if missing:
        raise ConfigError(
            f"{runs_dir}: no run folder for {', '.join(missing)}. A submission needs every "
            "category; train them (ff-train category=...) or point --runs at the right folder."
        )
    return {c: found[c] for c in categories}


def export_submission(
    runs_dir: Path,
    out: Path,
    args: argparse.Namespace,
    counts: Mapping[str, int] = OFFICIAL_COUNTS,
) -> Path | None:
    """Both private splits of every category, checked, then packed (unless --no-pack)."""
    for category, run_dir in _runs_by_category(runs_dir, list(counts)).items():
        print(f"{category}: {run_dir}", file=sys.stderr)
        exporter = RunExporter(run_dir, args)
        for split in PRIVATE_SPLITS:
            exporter.export(exporter.maps.samples(split), out)
        del exporter
    problems = check_submission(out, args.data_root, counts, progress=not args.no_progress)
    if problems:
        print(format_report(problems), file=sys.stderr)
    if any(p.severity == "error" for p in problems):
        raise SubmissionError(f"{out}: the submission fails the upload checks listed above.")
    return None if args.no_pack else pack_submission(out, check=False)


def _check(args: argparse.Namespace) -> int:
    problems = check_submission(args.check, args.data_root, progress=not args.no_progress)
    print(format_report(problems, limit=200) if problems else f"{args.check}: all checks passed")
    return 2 if any(p.severity == "error" for p in problems) else 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export as asked, the output folder locked against a second writer meanwhile."""
    if args.runs is not None:
        if not args.submission:
            parser.error("--runs needs --submission NAME")
        out, beside = (args.out or Path(".")) / args.submission, True  # no file in a submission
    elif args.out is None:
        parser.error("--run needs --out DIR")
    else:
        out, beside = args.out, False
    lock_output(out, beside=beside)
    try:
        if args.runs is not None:
            archive = export_submission(args.runs, out, args)
            print(archive or f"{args.submission}: checked, not packed (--no-pack)")
        else:
            _export_run(args)
    finally:
        unlock_output(out, beside=beside)
    return 0


def _export_run(args: argparse.Namespace) -> None:
    """One run's maps of ``--images`` (with overlays and scores.csv) or of ``--split``."""
    exporter = RunExporter(args.run, args)
    record = args.out / RESCALE_FILE
    if args.threshold is not None:
        exporter.threshold = Threshold(args.threshold)  # one value for every split
    if args.images is not None:
        samples = images_to_predict(args.images, exporter.run.category, args.recursive)
        overlays = not args.no_overlays
    else:
        samples = [s for split in args.split for s in exporter.maps.samples(split)]
        overlays = args.overlays
    exporter.export(samples, args.out, overlays, record)
    rows = exporter.scores(samples, args.out)
    write_csv(args.out / SCORES_FILE, rows, list(COLUMNS))
    exporter.histogram(samples, rows, args.out / HISTOGRAM_FILE)
    given = "given with --threshold" if args.threshold is not None else None
    note = f"threshold {exporter.threshold.value:.6g}, {given or exporter.threshold.describe('')}"
    print(prediction_summary(rows, note, str(args.out / SCORES_FILE)))
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ff-predict; returns the exit code (2 for any user-fixable error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        return report_user_errors("ff-predict", lambda: _check(args))
    return report_user_errors("ff-predict", lambda: _run(args, parser))


if __name__ == "__main__":
    raise SystemExit(main())
