"""What predictions become: results in memory, one category's maps, masks, overlays and
scores on disk, and a whole checked submission.

Shared by every backend of ff-predict and the Python API: the torch model and an export in
ONNX Runtime or OpenVINO give their original-size maps through a ``predict`` function, and
everything after (threshold, post-processing, image score, float16 rescale, overlays,
scores.csv, upload checks, packing) is this one implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from filterformer.data.sample import Sample
from filterformer.errors import SubmissionError
from filterformer.evaluation.protocol import image_score
from filterformer.evaluation.thresholds import Threshold
from filterformer.inference.postprocess import for_sample
from filterformer.io import read_anomaly_map, read_mask
from filterformer.submission import (
    OFFICIAL_COUNTS,
    PRIVATE_SPLITS,
    MapRescale,
    SubmissionWriter,
    check_submission,
    format_report,
    pack_submission,
)
from filterformer.submission.mvtec_submission import map_path, mask_path
from filterformer.submission.rescale import DEFAULT_TARGET

LOG = logging.getLogger("filterformer")
RESCALE_FILE = "rescale.json"
"""The float16 rescale record ff-predict writes beside the maps of one category."""
SHOWN_SCORES = 5
"""How many of the highest-scoring images the --images table shows."""
Predict = Callable[[Sequence[Sample]], Iterable[tuple[Sample, np.ndarray]]]
"""Samples -> (sample, H x W float32 map at its original size), in order."""


@dataclass(frozen=True)
class Prediction:
    """One image's result: its map at the original size, image score and verdict."""

    path: Path
    anomaly_map: np.ndarray
    """H x W float32 at the image's original size, in the run's score units."""
    score: float
    """The run's image score of the map (``eval.image_score``)."""
    threshold: float
    """The threshold the verdict and ``mask`` used (the run's, unless one was given)."""
    mask: np.ndarray
    """H x W bool: map above the threshold, post-processed as the run's category says."""

    @property
    def anomalous(self) -> bool:
        """The verdict: any pixel of the mask is set."""
        return bool(self.mask.any())


def predictions(
    predict: Predict,
    samples: Sequence[Sample],
    threshold: float,
    postprocess: Mapping[str, Any],
    rule: str,
) -> list[Prediction]:
    """The :class:`Prediction` of each sample (in memory, nothing written)."""
    results = []
    for sample, amap in predict(samples):
        step = for_sample(postprocess, sample.split, sample.load_image)
        mask = amap > threshold
        mask = mask if step is None else step(mask)
        score = image_score(amap, rule)
        results.append(Prediction(sample.path, amap, score, threshold, mask.astype(bool)))
    return results


def write_maps(
    predict: Predict,
    samples: Sequence[Sample],
    out: Path,
    *,
    category: str,
    rescale: MapRescale,
    threshold: Threshold,
    postprocess: Mapping[str, Any],
    overlays: bool = False,
    record: Path | None = None,
) -> int:
    """Write maps and masks of ``samples`` under ``out`` (resuming); return how many.

    ``record``: the rescale record file (default: beside ``out``, see SubmissionWriter).
    """
    writer = SubmissionWriter(
        out,
        category,
        rescale,
        threshold.value,
        record_file=record,
        split_thresholds={split: t.value for split, t in threshold.splits.items()},
    )
    overlay_dir = out / "overlays" / category
    todo = [
        s
        for s in samples
        if not writer.is_done(s.relpath)
        or (overlays and not (overlay_dir / f"{s.relpath}.png").is_file())
    ]
    score_range = tuple(rescale.invert(np.array([0.0, DEFAULT_TARGET])))
    if overlays:
        from filterformer.evaluation.figures import write_overlay
    for sample, amap in predict(todo):
        step = for_sample(postprocess, sample.split, sample.load_image)
        writer.write(sample.relpath, amap, sample.shape, step, sample.split)
        if overlays:
            write_overlay(
                overlay_dir / f"{sample.relpath}.png",
                sample.load_image(),
                amap,
                read_mask(writer.paths(sample.relpath)[1], sample.shape),
                sample.load_mask(),
                score_range,
                threshold.for_split(sample.split).value,
                name=str(sample.relpath),
            )
    return len(todo)


def score_rows(
    samples: Sequence[Sample], out: Path, category: str, rescale: MapRescale, rule: str
) -> list[dict]:
    """Score and verdict of each written sample, read back from its map and binary map."""
    rows = []
    for sample in samples:
        amap = read_anomaly_map(map_path(out, category, sample.relpath))
        binary = read_mask(mask_path(out, category, sample.relpath), sample.shape)
        rows.append(
            {
                "image": sample.path.name,
                "score": float(rescale.invert(np.float64(image_score(amap, rule)))),
                "verdict": "anomalous" if binary.any() else "normal",
                "anomalous_pixels": int(binary.sum()),
            }
        )
    return rows


def report_scores(rows: Sequence[Mapping], threshold: Threshold, path: Path) -> str:
    """The --images summary: counts, the highest scores, and where scores.csv is."""
    anomalous = sum(row["verdict"] == "anomalous" for row in rows)
    top = sorted(rows, key=lambda row: -row["score"])[:SHOWN_SCORES]
    width = max(len("image"), *(len(row["image"]) for row in top))
    lines = [
        f"{len(rows)} images: {anomalous} anomalous, {len(rows) - anomalous} normal "
        f"(threshold {threshold.value:.6g}, {threshold.describe('images')}; anomalous = any "
        "pixel above it)",
        f"{'image':<{width}}  {'score':>10}  verdict",
        *(f"{row['image']:<{width}}  {row['score']:>10.6g}  {row['verdict']}" for row in top),
        f"every image: {path}",
    ]
    return "\n".join(lines)


def deployment_options(options: Any) -> dict[str, Any]:
    """:class:`~filterformer.runtime.Deployment` keywords from ff-predict's options (its
    namespace or ``PredictOptions``): the backend is ONNX Runtime unless another is named."""
    return {
        "backend": "onnxruntime" if options.backend == "torch" else options.backend,
        "threads": options.threads,
        "batch_size": options.batch_size,
        "progress": not options.no_progress,
        "data_root": options.data_root,
    }


class CategoryMaps(Protocol):
    """One category's source of maps: a run with its torch model, or an export."""

    category: str

    def samples(self, split: str) -> Sequence[Sample]:
        """The category's samples of ``split``."""
        ...

    def export(self, samples: Sequence[Sample], out: Path) -> int:
        """Write the maps and masks of ``samples`` under ``out``; return how many."""
        ...


def write_submission(
    categories: Iterable[CategoryMaps],
    out: Path,
    *,
    data_root: Path | None,
    counts: Mapping[str, int] = OFFICIAL_COUNTS,
    pack: bool = True,
    progress: bool = True,
) -> Path | None:
    """Both private splits of every category, checked, then packed (unless ``pack`` is off).

    ``categories`` is consumed one at a time (a loaded model can go before the next loads).
    """
    for source in categories:
        LOG.info("%s: writing %s", source.category, ", ".join(PRIVATE_SPLITS))
        for split in PRIVATE_SPLITS:
            source.export(source.samples(split), out)
    problems = check_submission(out, data_root, counts, progress=progress)
    if problems:
        LOG.warning("%s", format_report(problems))
    if any(p.severity == "error" for p in problems):
        raise SubmissionError(f"{out}: the submission fails the upload checks listed above.")
    return pack_submission(out, check=False) if pack else None
