"""Calibration of a trained run: a threshold (and the maps' range) for every fusion mode.

Done once by the run's writer, when training ends (and by ff-convert, and ``ff-eval
--calibrate`` for runs made before this existed, which it also signs as they are:
:mod:`filterformer.manifest`), into ``thresholds.json``: per category and
mode the threshold by the category's rule, the SHA-256 of the checkpoint whose maps it was
computed on, and the range of its validation maps (what the float16 export rescales). The
commands that read a run (ff-eval, ff-predict, ff-export, the API's ``evaluate`` /
``predict`` / ``export``) only read it, and refuse a threshold calibrated on another checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from filterformer.data.sample import Sample
from filterformer.errors import ConfigError, FilterformerError
from filterformer.evaluation.thresholds import Threshold, write_thresholds
from filterformer.lock import holds_run, lock_run, unlock_run
from filterformer.manifest import MANIFEST_FILE, signing
from filterformer.models.encoder import weights_sha256
from filterformer.runs.files import CONFIG_FILE, THRESHOLDS_FILE, sign_run
from filterformer.runs.run import fusion_modes, load_runs
from filterformer.runs.run_maps import RunMaps

LOG = logging.getLogger("filterformer")


@dataclass(frozen=True)
class Calibration:
    """One fusion mode's outcome: its threshold, or why the run's data could not give one."""

    mode: str
    threshold: Threshold | None
    skipped: str | None = None


def calibrate_run(
    run_dir: str | Path,
    *,
    device: str,
    data_root: str | Path | None = None,
    progress: bool = False,
    batch_size: int = 8,
) -> list[Calibration]:
    """Calibrate every fusion mode of the run in ``run_dir`` and store it in thresholds.json.

    The caller is (or becomes here) the run folder's only writer. A model of several
    categories gets each category's threshold by its own rule. A mode whose rule cannot be
    applied to the run's data (no validation split, no statistics for a fused mode) is
    skipped, with the reason; the other modes are still stored.
    """
    run_dir = Path(run_dir)
    if holds_run(run_dir):  # the training process, calibrating as it ends
        return _calibrate_modes(run_dir, device, data_root, progress, batch_size)
    lock_run(run_dir)
    try:
        if (run_dir / CONFIG_FILE).is_file() and not (run_dir / MANIFEST_FILE).is_file():
            sign_run(run_dir)  # a run made before runs were signed: its writer adopts it
            LOG.info("%s: signed the run's files as they are (%s)", run_dir, MANIFEST_FILE)
        return _calibrate_modes(run_dir, device, data_root, progress, batch_size)
    finally:
        unlock_run(run_dir)


def _calibrate_modes(
    run_dir: Path, device: str, data_root: str | Path | None, progress: bool, batch_size: int
) -> list[Calibration]:
    """:func:`calibrate_run`'s work, as the run's writer."""
    results = []
    for mode in fusion_modes(run_dir):
        try:
            runs = load_runs(run_dir, device=device, mode=mode, read_threshold=False)
            thresholds = {
                run.category: _calibrate(
                    RunMaps(
                        run,
                        device=device,
                        data_root=data_root,
                        progress=progress,
                        batch_size=batch_size,
                    )
                )
                for run in runs
            }
        except FilterformerError as err:
            results.append(Calibration(mode, None, str(err)))
            continue
        with signing(run_dir, run_dir / THRESHOLDS_FILE):
            write_thresholds(run_dir / THRESHOLDS_FILE, thresholds, mode)
        results.append(Calibration(mode, next(iter(thresholds.values()))))
    if not any(result.threshold for result in results):
        reasons = "; ".join(f"{r.mode}: {r.skipped}" for r in results)
        raise ConfigError(f"{run_dir}: no fusion mode could be calibrated ({reasons}).")
    return results


def _calibrate(maps: RunMaps) -> Threshold:
    """The mode's threshold by the category's rule, with the validation maps' range and the
    checkpoint's hash (one pass over the validation maps serves both)."""
    low, high = np.inf, -np.inf

    def tracked(pairs: Iterator[tuple[Sample, np.ndarray]]) -> Iterator[np.ndarray]:
        nonlocal low, high
        for _, amap in pairs:
            low, high = min(low, float(amap.min())), max(high, float(amap.max()))
            yield amap

    def validation() -> Iterator[np.ndarray]:
        return tracked(maps.predict(maps.samples("validation")))

    threshold = maps.threshold(validation)
    if not np.isfinite(low):  # the rule read no validation map: the range needs them
        for _ in validation():
            pass
    if not np.isfinite(low):
        raise ConfigError(f"{maps.run.run_dir}: the validation split has no images.")
    return replace(threshold, checkpoint=weights_sha256(maps.run.checkpoint), map_range=(low, high))
