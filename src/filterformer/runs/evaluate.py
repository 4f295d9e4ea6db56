"""Evaluation of runs or precomputed maps: metrics per category and their mean, with outputs.

The engine of ff-eval and of the Python API's ``Run.evaluate``. Two sources of maps:

- ``maps``: precomputed maps ``DIR/<category>/<split>/{good,bad}/<stem>.tiff`` (or DIR
  holding ``anomaly_images/``, as ff-predict writes). Binary maps come from ``thresholds``,
  else from ``anomaly_images_thresholded/.../<stem>.png`` beside them, else from the
  validation mean + 3 std of ``DIR/<category>/validation`` maps. Maps without an image,
  integer TIFFs and maps that lose precision in float16 are warned about (refused with
  ``strict``; :mod:`filterformer.evaluation.map_audit`). This path never imports torch.
- ``run`` (or every run under ``runs_dir``): the run's model predicts the maps, binarised at
  the run's calibrated threshold (thresholds.json, written when training ended).

Reading a run never writes it: its outputs (metrics, PRO curve, overlays, scores.csv) go to
:func:`output_dir`. Every row says which split chose its checkpoint, fusion mode and
threshold (``selected_on``, :mod:`filterformer.evaluation.selection`); numbers on a split that
chose one are optimistic. Runs are scored with their evaluation protocol (``eval.protocol``,
or ``protocol``): ``mvtec_ad2``, or ``inpformer``, the INP-Former code's seven metrics on
256 px maps of the centre crop (no thresholds; :mod:`filterformer.evaluation.protocol`).
Private splits have no ground truth: use ff-predict and the benchmark server for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from filterformer.data.datasets import evaluated_split
from filterformer.data.mvtec_ad2 import PRIVATE_SPLITS, MVTecAD2
from filterformer.data.sample import Sample
from filterformer.errors import ConfigError, DataError
from filterformer.evaluation.aupro import SERVER_LIMIT, ProResult
from filterformer.evaluation.map_audit import MapAudit
from filterformer.evaluation.protocol import INPFORMER, MVTEC_AD2, PRO_LIMIT, write_scores
from filterformer.evaluation.report import (
    CategoryMetrics,
    format_table,
    metrics_document,
    write_metrics,
)
from filterformer.evaluation.segf1 import binarize
from filterformer.evaluation.selection import (
    UNKNOWN,
    Selection,
    run_selection,
    threshold_origin,
)
from filterformer.evaluation.thresholds import Threshold, read_thresholds, threshold_by_rule
from filterformer.inference.postprocess import for_sample
from filterformer.io import (
    as_score_map,
    check_name,
    output_path,
    read_mask,
    read_tiff_map,
    resolved,
    write_json,
)
from filterformer.lock import reading_run
from filterformer.progress import progress_bar
from filterformer.runs.compose import category_threshold_rule

if TYPE_CHECKING:  # runs import torch, which the maps path never loads
    from filterformer.inference.run import Run
    from filterformer.runs.run_maps import ValidationSummary

LOG = logging.getLogger("filterformer")
MAPS_FOLDER = "anomaly_images"
BINARY_FOLDER = "anomaly_images_thresholded"
SCORES_FILE = "scores.csv"
"""Per-image scores of an evaluated run: image (relative to the category folder), score, label."""
OUTPUT_SUFFIX = "_eval"
"""A run's evaluation outputs go beside it, to ``<run>_eval/<split>/``, unless ``out`` says."""


@dataclass
class EvalOptions:
    """What to evaluate and how (ff-eval's options, by the same names)."""

    maps: Path | None = None
    run: list[Path] | None = None
    runs_dir: Path = Path("runs")
    data_root: Path | None = None
    categories: list[str] | None = None
    split: str | None = None
    protocol: str | None = None
    pro_limit: list[float] = field(default_factory=lambda: [SERVER_LIMIT])
    thresholds: Path | None = None
    closing: int = 0
    fill_holes: bool = False
    erosion: int = 0
    float32: bool = False
    strict: bool = False
    json: Path | None = None
    out: Path | None = None
    """Maps: where outputs go (None: nowhere). Runs: see :func:`output_dir`."""
    device: str | None = None
    no_progress: bool = False
    no_verify: bool = False
    data: str | None = None
    """Runs: evaluate zero-shot on this dataset's categories (``categories``: those), which
    the runs never trained on (:mod:`filterformer.runs.zero_shot`)."""
    zero_shot_map: str = "inp_distance"
    """The zero-shot map: ``inp_distance`` (the INP-Former code's) or ``reconstruction``."""


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics per category and their unweighted mean, as fractions, with the table text."""

    split: str
    protocol: str
    categories: dict[str, dict[str, Any]]
    mean: dict[str, Any]
    document: dict[str, Any]
    """The metrics.json document (what ``json`` writes)."""
    table: str
    """The table in percent, as ff-eval prints it."""


def report(
    args: EvalOptions, rows: list[dict], limits: Sequence[float], protocol: str
) -> EvaluationReport:
    """The report of ``rows`` (writing the ``json`` document when asked)."""
    document = metrics_document(rows, args.split, limits, protocol)
    if args.json is not None:
        write_json(args.json, document)
    return EvaluationReport(
        split=args.split,
        protocol=protocol,
        categories=document["categories"],
        mean=document["mean"],
        document=document,
        table=format_table(rows, limits, args.split, protocol),
    )


def output_dir(run_dir: Path, out: Path | None, split: str) -> Path:
    """Where a run's evaluation outputs go: ``<out>/<run name>/<split>``, or beside the run,
    ``<run>_eval/<split>`` (the run folder itself is never written by a reader). ``split``
    may be a relative path of plain names (``zero_shot_mvtec_ad/test``)."""
    run_dir = resolved(run_dir)  # its name, even for "." or a link
    parts = split.split("/")
    if out is not None:
        return output_path(out, run_dir.name, *parts)
    return output_path(run_dir.parent, run_dir.name + OUTPUT_SUFFIX, *parts)


def require_threshold(run: Run) -> Threshold:
    """The run's calibrated threshold for its fusion mode, or an error saying how to get one."""
    if run.threshold is None:
        raise ConfigError(
            f"{run.run_dir}: fusion mode {run.mode!r} has no calibrated threshold (runs calibrate "
            f"when training ends; this one did not, or predates it). Calibrate it: ff-eval "
            f"--calibrate --run {run.run_dir}, or pass --thresholds FILE."
        )
    return run.threshold


@dataclass
class CategorySource:
    """Where one category's maps and binary maps come from."""

    samples: Sequence[Sample]
    load_map: Callable[[Sample], tuple[np.ndarray, str]]
    """Returns the map of one sample (at its original size) and a name for messages."""
    maps: Iterable[tuple[Sample, np.ndarray, str]]
    """The maps of all samples, in order (may be computed lazily, e.g. batched inference)."""
    threshold: Threshold | None
    binary_dir: Path | None
    """``anomaly_images_thresholded/<category>`` when its PNGs give the binary maps."""
    postprocess: dict[str, Any]
    """Keyword arguments of :func:`postprocess` for thresholded maps (not for given PNGs)."""
    image_score: str = "max"
    """Score of the image AUROC and of scores.csv (``eval.image_score``)."""


@dataclass
class Measured:
    """One category's metrics, kept until its plots and overlays are written."""

    category: str
    source: CategorySource
    result: ProResult
    examples: dict[str, int]
    score_range: tuple[float, float]
    image_scores: list[float]
    """Each image's score by ``source.image_score``, in sample order."""
    metrics: CategoryMetrics


class Evaluator:
    """Runs the metrics of every category of one split and writes the outputs."""

    def __init__(self, args: EvalOptions) -> None:
        self.args = args
        self.limits = tuple(args.pro_limit)
        self.rows: list[dict] = []

    def binary(self, source: CategorySource, sample: Sample, amap: np.ndarray) -> np.ndarray | None:
        """The final binary map: the thresholded map post-processed, or the given PNG."""
        if source.threshold is not None:
            mask = binarize(amap, source.threshold.value)
            step = for_sample(source.postprocess, sample.split, sample.load_image)
            return mask if step is None else step(mask)
        if source.binary_dir is not None:
            path = source.binary_dir / f"{sample.relpath}.png"
            return read_mask(path, shape=sample.shape)
        return None

    def measure(self, category: str, source: CategorySource, selection: Selection) -> Measured:
        """Evaluate one category and add its row, labelled with what chose its settings."""
        metrics = CategoryMetrics.for_samples(
            source.samples, float16=not self.args.float32, image_score=source.image_score
        )
        bar = progress_bar(
            source.maps,
            total=len(source.samples),
            desc=f"evaluating {category}",
            unit="img",
            enabled=not self.args.no_progress,
        )
        for sample, amap, name in bar:
            metrics.add(sample, amap, self.binary(source, sample, amap), name)
        result = metrics.result(self.limits)
        if source.threshold is not None:
            rule = source.threshold.describe(self.args.split)
        else:
            rule = "given binary maps" if source.binary_dir is not None else "none"
        value = None if source.threshold is None else source.threshold.value
        row = metrics.row(category, result, value, rule)
        row["selected_on"] = selection.to_json()
        self.rows.append(row)
        scores = metrics.images.scores
        return Measured(
            category, source, result, metrics.examples(), metrics.score_range, scores, metrics
        )

    def write_outputs(
        self, measured: Measured, out_dir: Path, validation: ValidationSummary | None = None
    ) -> None:
        """The category's PRO-curve plot (with pixel truth), its score histogram and the
        overlays of its best, median and worst image (one colour scale: figures.colour_scale).

        ``validation``: the run's validation scores (histogram) and map range (colours).
        """
        from filterformer.evaluation.figures import (
            colour_scale,
            plot_pro_curve,
            write_overlay,
            write_score_histogram,
        )

        category, source = measured.category, measured.source
        title = f"{category} ({self.args.split})"
        value = None if source.threshold is None else source.threshold.value
        low, high = measured.score_range
        if validation is not None:
            low, high = validation.low, validation.high
        write_score_histogram(
            output_path(out_dir, f"score_histogram_{category}.png"),
            measured.image_scores,
            [s.label for s in source.samples],
            value,
            f"{title}: image scores",
            validation=() if validation is None else validation.scores,
            threshold_label="threshold" if value is None else f"threshold {value:.4g}",
        )
        if measured.metrics.no_pixel_truth is None:
            plot_pro_curve(
                output_path(out_dir, f"pro_curve_{category}.png"),
                measured.result,
                self.limits[0],
                title,
            )
        for tag, index in measured.examples.items():
            sample = source.samples[index]
            amap, _ = source.load_map(sample)
            stem = str(sample.relpath).replace("/", "_")
            write_overlay(
                output_path(out_dir, "overlays", f"{category}_{tag}_{stem}.png"),
                sample.load_image(),
                amap,
                self.binary(source, sample, amap),
                measured.metrics.truth(sample),
                colour_scale(low, value, high),
                value,
                name=f"{category} {sample.relpath} ({tag})",
            )

    def finish(self, out_dir: Path | None) -> EvaluationReport:
        """Write metrics.json/.csv and the --json document; return the report."""
        if out_dir is not None:
            write_metrics(out_dir, self.rows, self.args.split, self.limits)
        return report(self.args, self.rows, self.limits, MVTEC_AD2)


def cli_postprocess(args: EvalOptions) -> dict[str, Any]:
    """The post-processing options given on the command line (those left unset are omitted)."""
    given = {"closing": args.closing, "fill_holes": args.fill_holes, "erosion": args.erosion}
    return {name: value for name, value in given.items() if value}


def resolve_maps_dir(maps: Path) -> tuple[Path, Path | None]:
    """(folder of category map folders, folder of category PNG folders or None)."""
    if (maps / MAPS_FOLDER).is_dir():
        maps = maps / MAPS_FOLDER
    if not maps.is_dir():
        raise DataError(f"{maps}: maps folder not found. Point --maps at ff-predict's output.")
    binary = maps.parent / BINARY_FOLDER if maps.name == MAPS_FOLDER else None
    return maps, binary if binary is not None and binary.is_dir() else None


def map_reader(
    maps_root: Path, category: str, audit: MapAudit | None = None
) -> Callable[[Sample], tuple[np.ndarray, str]]:
    """Reads ``<maps_root>/<category>/<relpath>.tiff`` at the sample's size (into ``audit``)."""

    def load(sample: Sample) -> tuple[np.ndarray, str]:
        path = maps_root / category / f"{sample.relpath}.tiff"
        raw = read_tiff_map(path, shape=sample.shape)
        if audit is not None:
            audit.update(raw, path)
        return as_score_map(raw, path), str(path)

    return load


def audited_samples(
    args: EvalOptions, maps_root: Path, category: str, split: str, float16: bool
) -> tuple[Sequence[Sample], MapAudit]:
    """The split's samples and the audit of its maps (extra map files already noted)."""
    samples = MVTecAD2(args.data_root, category, split)
    audit = MapAudit(str(maps_root / category / split), float16=float16)
    folder = maps_root / category / split
    if folder.is_dir():
        audit.check_unmatched(folder, (maps_root / category / f"{s.relpath}.tiff" for s in samples))
    return samples, audit


def calibrate_from_maps(
    args: EvalOptions, maps_root: Path, category: str
) -> tuple[Threshold, MapAudit]:
    """The category config's threshold rule (MVTec AD 2: validation mean + 3 std) applied to
    the maps in ``<maps_root>/<category>/validation``; rules that need more than those maps
    (labels, pseudo-defects) are refused with the way out."""
    samples, audit = audited_samples(args, maps_root, category, "validation", float16=False)
    load = map_reader(maps_root, category, audit)
    source = str(maps_root / category / "validation")

    def unavailable(*_: object) -> Iterable:
        raise ConfigError(
            f"{source}: category {category!r}'s threshold rule needs more than validation "
            "maps; pass --thresholds FILE (or binary maps beside the maps)."
        )

    rule = category_threshold_rule(category)
    threshold = threshold_by_rule(
        rule,
        lambda: (load(s)[0] for s in samples),
        unavailable,
        source,
        pseudo=unavailable,
        labelled_split="test_public",  # the MVTec AD 2 layout of --maps (labels unread here)
    )
    return threshold, audit


def report_findings(audits: Iterable[MapAudit], strict: bool) -> None:
    """Print each audit finding as a warning, or with ``strict`` refuse them all in one line."""
    findings = [finding for audit in audits for finding in audit.finish()]
    if findings and strict:
        raise DataError(" ".join(findings) + " (--strict; without it these are warnings.)")
    for finding in findings:
        LOG.warning("warning: %s", finding)


def maps_source(
    args: EvalOptions,
    maps_root: Path,
    binary_root: Path | None,
    category: str,
    given: dict[str, Threshold],
) -> tuple[CategorySource, Selection, list[MapAudit]]:
    """One category of --maps: its maps, threshold (calibrated if needed) and audits."""
    samples, audit = audited_samples(args, maps_root, category, args.split, not args.float32)
    audits = [audit]
    binary_dir = binary_root / category if binary_root else None
    threshold = given.get(category)
    threshold = None if threshold is None else threshold.for_split(args.split)
    if threshold is None and not (binary_dir and (binary_dir / args.split).is_dir()):
        binary_dir = None
        if (maps_root / category / "validation").is_dir():
            threshold, validation_audit = calibrate_from_maps(args, maps_root, category)
            audits.append(validation_audit)
        else:
            LOG.warning(
                "%s: no thresholds, binary maps or validation maps; SegF1 and ClassF1 are not "
                "computed.",
                category,
            )
    load = map_reader(maps_root, category, audit)
    maps = ((s, *load(s)) for s in samples)
    source = CategorySource(
        samples,
        map_reader(maps_root, category),
        maps,
        threshold,
        None if threshold is not None else binary_dir,
        cli_postprocess(args),
    )
    selection = Selection(
        checkpoint=UNKNOWN,
        fusion_mode=UNKNOWN,
        threshold=threshold_origin(threshold, binary_maps_given=source.binary_dir is not None),
    )
    return source, selection, audits


def evaluate_maps(args: EvalOptions) -> EvaluationReport:
    """The --maps path (no torch). Outputs are written only once every category passed."""
    maps_root, binary_root = resolve_maps_dir(args.maps)
    categories = [check_name(c, "--categories") for c in args.categories or []] or sorted(
        p.name for p in maps_root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not categories:
        raise DataError(f"{maps_root}: no category folders with maps found.")
    given = read_thresholds(args.thresholds) if args.thresholds else {}
    evaluator = Evaluator(args)
    measured = []
    for category in categories:
        source, selection, audits = maps_source(args, maps_root, binary_root, category, given)
        measured.append(evaluator.measure(category, source, selection))
        report_findings(audits, args.strict)
    if args.out is not None:
        for item in measured:
            evaluator.write_outputs(item, args.out)
    return evaluator.finish(args.out)


def run_folders(args: EvalOptions) -> list[Path]:
    """--run folders, or every folder with a config.yaml at any depth under --runs-dir."""
    if args.run:
        return args.run
    runs = sorted(p.parent for p in args.runs_dir.glob("**/config.yaml"))
    if not runs:
        raise DataError(
            f"{args.runs_dir}: no run folders (with config.yaml) found. Train one with ff-train, "
            "or pass --run RUN_DIR, --runs-dir DIR or --maps DIR."
        )
    return runs


def evaluate_runs(args: EvalOptions) -> EvaluationReport:
    """The --run path: predict with each run's model, evaluate, report.

    Threshold: --thresholds, else the run's calibrated threshold for its fusion mode
    (thresholds.json, written when training ended). Post-processing: the run's category
    settings, overridden by the options. Writes each run's outputs (metrics, PRO curve,
    overlays, scores.csv) to :func:`output_dir`, never into the run folder.
    """
    run_dirs = run_folders(args)
    from filterformer.runs.settings import resolve_device

    resolve_protocol_and_split(args, run_dirs)
    device = resolve_device(args.device)
    if args.protocol == INPFORMER:
        return evaluate_inpformer_runs(args, run_dirs, device)
    evaluator = Evaluator(args)
    for run_dir in run_dirs:
        with reading_run(run_dir):
            runs = runs_of(args, run_dir, device)
            for run in runs:
                _evaluate_run(args, evaluator, run, device, len(runs) > 1)
            _write_run_metrics(args, run_dir, evaluator.rows[-len(runs) :], runs)
    return evaluator.finish(None)


def runs_of(args: EvalOptions, run_dir: Path, device: str) -> list[Run]:
    """What one run folder evaluates: each of its categories (those in ``categories``), or
    with ``data`` that dataset's categories zero-shot."""
    from filterformer.runs.run import load_runs
    from filterformer.runs.zero_shot import zero_shot_runs

    verify = not args.no_verify
    if args.data is not None:
        return zero_shot_runs(
            run_dir,
            args.data,
            args.categories,
            data_root=args.data_root,
            device=device,
            map_name=args.zero_shot_map,
            verify=verify,
        )
    runs = load_runs(run_dir, device=device, verify=verify)
    chosen = [run for run in runs if not args.categories or run.category in args.categories]
    if not chosen:
        raise ConfigError(
            f"{run_dir}: none of its categories ({', '.join(r.category for r in runs)}) is "
            f"among --categories {' '.join(args.categories)}; to evaluate categories it never "
            "trained on, add --data <dataset> (zero-shot)."
        )
    return chosen


def run_output_dir(args: EvalOptions, run: Run, several: bool) -> Path:
    """A category's output folder: the run's (:func:`output_dir`), with a sub-folder per
    category when the folder holds several; zero-shot under ``zero_shot_<data>/``."""
    split = (
        args.split if run.trained_on is None else f"zero_shot_{run.config.data.kind}/{args.split}"
    )
    out = output_dir(run.run_dir, args.out, split)
    return out / run.category if several else out


def _labelled(row: dict[str, Any], run: Run, several: bool) -> dict[str, Any]:
    """A row with the run's dataset (several categories) and, zero-shot, what trained it."""
    if several:
        row["dataset"] = str(run.config.data.kind)
    if run.trained_on is not None:
        row["trained_on"] = run.trained_on
    return row


def _write_run_metrics(
    args: EvalOptions,
    run_dir: Path,
    rows: list[dict],
    runs: Sequence[Run],
    protocol: str = MVTEC_AD2,
) -> None:
    """A run folder of several categories: every row and their mean in its output folder."""
    if len(runs) < 2:
        return
    limits = [PRO_LIMIT] if protocol == INPFORMER else list(args.pro_limit)
    out = run_output_dir(args, runs[0], several=False)
    write_metrics(out, rows, args.split, limits, protocol, runs[0].image_score)


def _evaluate_run(
    args: EvalOptions, evaluator: Evaluator, run: Run, device: str, several: bool = False
) -> None:
    """One run's (category's) row of the table and its output folder."""
    from filterformer.runs.run import image_score_rule
    from filterformer.runs.run_maps import RunMaps

    run_dir = run.run_dir
    maps = RunMaps(run, device=device, data_root=args.data_root, progress=False)  # one bar: ours
    given = read_thresholds(args.thresholds, run.mode) if args.thresholds else {}
    threshold = given.get(run.category) or require_threshold(run)
    threshold = threshold.for_split(args.split)  # the evaluated split's own
    eval_split = run.config.eval.get("split", "test_public")
    selection = run_selection(run_dir, run.category, eval_split, run.checkpoint, threshold)
    samples = maps.samples(args.split)
    source = CategorySource(
        samples,
        load_map=lambda s, maps=maps: (next(iter(maps.predict([s])))[1], str(s.path)),
        maps=((s, amap, str(s.path)) for s, amap in maps.predict(samples)),
        threshold=threshold,
        binary_dir=None,
        postprocess={**run.postprocess, **cli_postprocess(args)},
        image_score=image_score_rule(run.config, MVTEC_AD2),
    )
    out_dir = run_output_dir(args, run, several)
    measured = evaluator.measure(run.category, source, selection)
    _labelled(evaluator.rows[-1], run, several)
    evaluator.write_outputs(measured, out_dir, maps.validation_summary())
    rows, limits = evaluator.rows[-1:], evaluator.limits
    write_metrics(out_dir, rows, args.split, limits, image_score=source.image_score)
    labels = [s.label for s in samples]
    write_scores(out_dir / SCORES_FILE, image_paths(samples), measured.image_scores, labels)


def resolve_protocol_and_split(args: EvalOptions, run_dirs: Sequence[Path]) -> None:
    """Fill ``args.protocol`` and ``args.split`` from the runs where not given.

    Every run must resolve to the same protocol and split: one table compares like with like.
    """
    from filterformer.runs.run import protocol_of, read_run_config

    if args.data is not None:  # zero-shot: the target dataset's benchmark
        from filterformer.runs.zero_shot import dataset_protocol

        args.protocol = args.protocol or dataset_protocol(args.data)
        args.split = args.split or evaluated_split(args.data)
        return
    configs = {run_dir: read_run_config(run_dir) for run_dir in run_dirs}
    for name, of_run in (
        ("protocol", protocol_of),
        ("split", lambda config: evaluated_split(config.data.kind)),
    ):
        if getattr(args, name) is not None:
            continue
        values = {run_dir: of_run(config) for run_dir, config in configs.items()}
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{run_dir}: {value}" for run_dir, value in values.items())
            raise ConfigError(
                f"the runs have different default {name}s ({listed}); evaluate them "
                f"separately or pass --{name}."
            )
        setattr(args, name, next(iter(values.values())))


def evaluate_inpformer_runs(
    args: EvalOptions, run_dirs: Sequence[Path], device: str
) -> EvaluationReport:
    """The INP-Former protocol for each run: 256 px maps, seven metrics, per-image scores.

    Writes each run's metrics.json/.csv (naming the protocol) and scores.csv to
    :func:`output_dir`. No thresholds are needed.
    """
    rows = []
    for run_dir in run_dirs:
        with reading_run(run_dir):
            runs = runs_of(args, run_dir, device)
        for run in runs:
            rows.append(_inpformer_row(args, run, device, len(runs) > 1))
        _write_run_metrics(args, run_dir, rows[-len(runs) :], runs, INPFORMER)
    return report(args, rows, [PRO_LIMIT], INPFORMER)


def _inpformer_row(args: EvalOptions, run: Run, device: str, several: bool) -> dict[str, Any]:
    """One category's row by the INP-Former protocol; its metrics and scores written."""
    from filterformer.inference.protocol_maps import evaluate_inpformer
    from filterformer.runs.run import image_score_rule, split_samples

    run_dir = run.run_dir
    if run.tiling is not None:
        raise ConfigError(
            f"{run_dir}: category.tiling is enabled, but the inpformer protocol scores whole "
            "images (as the INP-Former code). Pass --protocol mvtec_ad2, or train without "
            "tiling (preset=inpformer_paper turns it off)."
        )
    rule = image_score_rule(run.config, INPFORMER)
    metrics, images = evaluate_inpformer(
        run.model,
        split_samples(run.config, args.split, root=args.data_root),
        run.geometry,
        image_score_rule=rule,
        mode=run.mode,
        map_stats=run.map_stats,
        batch_size=int(run.config.eval.batch_size),
        device=device,
        progress=not args.no_progress,
    )
    eval_split = run.config.eval.get("split", "test_public")
    selection = run_selection(run_dir, run.category, eval_split, run.checkpoint, None)
    row = _labelled({**metrics.row(run.category), "selected_on": selection.to_json()}, run, several)
    out_dir = run_output_dir(args, run, several)
    write_metrics(out_dir, [row], args.split, [PRO_LIMIT], INPFORMER, rule)
    write_scores(out_dir / SCORES_FILE, images, metrics.scores, metrics.labels)
    return row


def image_paths(samples: Sequence[Sample]) -> list[str]:
    """Each sample's image path relative to its category folder (scores.csv's ``image``)."""
    return [f"{s.relpath}{s.path.suffix}" for s in samples]


def evaluate(args: EvalOptions) -> EvaluationReport:
    """Evaluate precomputed maps or runs; refuse the private splits (no public GT)."""
    if args.split in PRIVATE_SPLITS:
        raise DataError(
            f"split {args.split!r} has no public ground truth, so it cannot be evaluated "
            "locally. Write its maps with ff-predict and upload them to the MVTec "
            "benchmark server (https://benchmark.mvtec.com)."
        )
    if args.maps is not None:
        if args.protocol == INPFORMER:
            raise ConfigError(
                "--protocol inpformer needs the network's maps of the centre crop; --maps holds "
                "maps at the original size. Evaluate the run with --run instead."
            )
        args.protocol, args.split = MVTEC_AD2, args.split or "test_public"
        return evaluate_maps(args)
    return evaluate_runs(args)
