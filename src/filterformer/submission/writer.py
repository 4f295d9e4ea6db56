"""Write the anomaly maps of one category in the benchmark-server layout, resumably.

For a sample with relative path ``test_private/000_regular`` the writer produces
``<out>/anomaly_images/<category>/test_private/000_regular.tiff`` (2-D float16 at the
original size, after the category's :class:`MapRescale`) and, when a threshold is given,
``<out>/anomaly_images_thresholded/<category>/test_private/000_regular.png`` (8-bit grey,
255 where ``score > threshold``, optionally post-processed). test_public samples land in
``.../test_public/{good,bad}/<stem>``, the local layout that ``ff-eval --maps`` reads.

Every file is written atomically, so a file that exists is complete. A re-run therefore
resumes: samples whose files exist are skipped (:meth:`SubmissionWriter.is_done` lets the
caller skip the inference too), and temporary files left by a killed run are deleted.

The rescale and threshold of each category are recorded in a JSON file: by default
``<out>.rescale.json`` (:func:`record_path`, beside a submission folder because the server
refuses extra files inside it); ``ff-predict --run`` keeps it inside its output folder instead.
Resuming with a different rescale or threshold is refused, since one category must never mix
two scales.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np

from filterformer.errors import DataError, SubmissionError
from filterformer.io import (
    read_json,
    remove_partials,
    write_json,
    write_mask_png,
    write_tiff_float16,
)
from filterformer.submission.mvtec_submission import map_path, mask_path, record_path
from filterformer.submission.rescale import MapRescale

MaskPostprocess = Callable[[np.ndarray], np.ndarray]


def export_record(rescale: MapRescale, threshold: float | None) -> dict:
    """What is stored per category: the rescale and the threshold in both units."""
    return {
        **rescale.to_dict(),
        "threshold": threshold,
        "threshold_rescaled": None if threshold is None else rescale.threshold(threshold),
    }


def save_record(path: str | os.PathLike, category: str, record: dict) -> None:
    """Add or replace the entry of ``category`` in a JSON record file keyed by category."""
    path = Path(path)
    records = read_records(path)
    records[category] = record
    write_json(path, records)


def read_records(path: Path) -> dict:
    """The export records of a record file, by category ({} when there is none)."""
    if not path.is_file():
        return {}
    fix = "Delete it and the maps it describes, or export to a new folder."
    records = read_json(path, "export record", fix)
    if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
        raise SubmissionError(f"{path}: not an export record {{category: rescale}}. {fix}")
    return records


class SubmissionWriter:
    """Writes maps (and thresholded masks) of ``category`` under ``out_dir``.

    ``threshold`` is in original score units (None: maps only, and the server will report
    SegF1 and ClassF1 as 0). ``postprocess`` turns the raw mask ``score > threshold`` into
    the mask written to PNG (e.g. morphological closing); without it the PNG is exactly the
    float16 TIFF thresholded at ``rescale.threshold(threshold)``. ``record_file`` is where the
    rescale record goes (default :func:`record_path`, beside ``out_dir``).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        category: str,
        rescale: MapRescale,
        threshold: float | None = None,
        postprocess: MaskPostprocess | None = None,
        record_file: str | os.PathLike | None = None,
        split_thresholds: Mapping[str, float] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.record_file = Path(record_file) if record_file else record_path(self.out_dir)
        self.category = category
        self.rescale = rescale
        self.threshold = None if threshold is None else float(threshold)
        self.postprocess = postprocess
        self.split_thresholds = {k: float(v) for k, v in (split_thresholds or {}).items()}
        self.record = export_record(rescale, self.threshold)
        if self.split_thresholds and self.threshold is not None:
            self.record["splits"] = {
                split: export_record(rescale, t) for split, t in self.split_thresholds.items()
            }
        self._claim_record()
        if self.out_dir.is_dir():
            remove_partials(self.out_dir)

    def _claim_record(self) -> None:
        """Store the category's rescale, refusing to resume under a different one."""
        path = self.record_file
        if path.is_file():
            previous = read_records(path).get(self.category)
            if previous is not None and previous != self.record:
                raise SubmissionError(
                    f"{self.out_dir}: category {self.category!r} was exported with "
                    f"{previous} (see {path}), not {self.record}. One category must use one "
                    f"rescale and threshold: delete {self.out_dir}/*/{self.category} and its "
                    "entry in the record to start over, or export to a new folder."
                )
        save_record(path, self.category, self.record)

    def paths(self, relpath: str | PurePosixPath) -> tuple[Path, Path | None]:
        """(TIFF path, PNG path or None without a threshold) of a sample."""
        tiff = map_path(self.out_dir, self.category, relpath)
        png = None if self.threshold is None else mask_path(self.out_dir, self.category, relpath)
        return tiff, png

    def is_done(self, relpath: str | PurePosixPath) -> bool:
        """Whether all files of the sample exist (they are complete: writes are atomic)."""
        return all(p is None or p.is_file() for p in self.paths(relpath))

    def write(
        self,
        relpath: str | PurePosixPath,
        scores: np.ndarray,
        shape: tuple[int, int] | None = None,
        postprocess: MaskPostprocess | None = None,
        split: str | None = None,
    ) -> bool:
        """Export one H x W score map; return False if its files existed and were kept.

        ``shape`` is the original (H, W) of the image; a map of another size is refused.
        ``postprocess`` replaces the writer's own for this map (e.g. one needing its image);
        ``split`` picks that split's threshold when the writer has one for it.
        """
        if self.is_done(relpath):
            return False
        scores = np.asarray(scores)
        tiff, png = self.paths(relpath)
        if scores.ndim != 2 or (shape is not None and scores.shape != tuple(shape)):
            raise DataError(
                f"{tiff}: map of shape {scores.shape} but the image is {shape} (H, W); maps "
                "must be 2-D at the original image size (InputGeometry.to_original)."
            )
        threshold = self.threshold
        if threshold is not None and split is not None:
            threshold = self.split_thresholds.get(split, threshold)
        half, mask = self.rescale.encode(scores, threshold)
        if png is not None:
            step = postprocess or self.postprocess
            if step is not None:
                mask = np.asarray(step(mask), dtype=bool)
            write_mask_png(png, mask)
        write_tiff_float16(tiff, half)
        return True
