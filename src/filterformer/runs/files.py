"""The files of a run folder: which ones its manifest signs, verifying them, reading the small
JSON records back.

A run's results depend on ``config.yaml``, ``versions.json``, every checkpoint's JSON (which
records the SHA-256 of its weights and training state), ``fusion.json``, ``map_stats.json``,
``thresholds.json`` and the files its model family keeps in it (``ModelFamily.run_files``).
Their writer signs them in ``manifest.json`` (:mod:`filterformer.manifest`); the commands that
read a run verify them first (:func:`verify_run_files`), and a run resumed by ff-train does too.
The readers of fusion.json and map_stats.json refuse malformed content in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filterformer.errors import DataError
from filterformer.io import read_json
from filterformer.manifest import READER_FIX, recover, signing, verify_run
from filterformer.models.registry import families
from filterformer.training.checkpoint import RESUME_FIX, verify_checkpoint
from filterformer.training.logs import check_logs
from filterformer.training.loop import last_checkpoint

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
FUSION_FILE = "fusion.json"
MAP_STATS_FILE = "map_stats.json"
THRESHOLDS_FILE = "thresholds.json"
VERSIONS_FILE = "versions.json"
SIGNED_FILES = (CONFIG_FILE, VERSIONS_FILE, FUSION_FILE, MAP_STATS_FILE, THRESHOLDS_FILE)
"""The run files every model has that the manifest signs (besides checkpoints, family files)."""
MapStats = dict[str, tuple[float, float]]


def signed_names(run_dir: str | os.PathLike) -> list[str]:
    """The files of ``run_dir`` (relative names) that its manifest must list when they exist:
    :data:`SIGNED_FILES`, every checkpoint's JSON, every model family's run files."""
    run_dir = Path(run_dir)
    names = [*SIGNED_FILES]
    names += sorted({name for plugin in families().values() for name in plugin.run_files})
    names += [
        f"{CHECKPOINTS_DIR}/{path.name}"
        for path in sorted((run_dir / CHECKPOINTS_DIR).glob("*.json"))
    ]
    return names


def verify_run_files(run_dir: str | os.PathLike, fix: str = READER_FIX) -> None:
    """Check the run's signed files against its manifest (:mod:`filterformer.manifest`)."""
    verify_run(run_dir, signed_names(run_dir), fix)


def verify_for_resume(run_dir: str | os.PathLike) -> None:
    """What ff-train checks before resuming, before any work: files its last process was
    writing when it stopped are signed as they are (that process was this run's writer), the
    rest verified, and so are ``last``'s weights and training state and the logs' beginnings."""
    run_dir = Path(run_dir)
    recover(run_dir, RESUME_FIX)
    verify_run_files(run_dir, RESUME_FIX)
    meta = verify_checkpoint(last_checkpoint(run_dir), with_training_state=True, fix=RESUME_FIX)
    check_logs(run_dir, meta.get("logs"), RESUME_FIX)


def sign_run(run_dir: str | os.PathLike) -> None:
    """Sign every signed file of ``run_dir`` as it is now (a writer that made the whole run
    at once, e.g. ff-convert). The caller holds the run's lock."""
    run_dir = Path(run_dir)
    with signing(run_dir, *(run_dir / name for name in signed_names(run_dir))):
        pass


def read_fusion(run_dir: Path, category: str) -> str | None:
    """The category's fusion mode in the run's fusion.json (None: no file, or no entry)."""
    path = run_dir / FUSION_FILE
    if not path.is_file():
        return None
    fix = "Restore it from a copy of the run, or delete it to use eval.default_mode."
    record = read_json(path, "fusion record", fix)
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        raise DataError(f"{path}: not a fusion record {{category: mode}}. {fix}")
    return record.get(category)


def read_map_stats(run_dir: Path) -> MapStats | None:
    """The run's map_stats.json (None when there is none)."""
    path = run_dir / MAP_STATS_FILE
    if not path.is_file():
        return None
    fix = "Restore it from a copy of the run folder."
    raw = read_json(path, "map statistics record", fix)
    if isinstance(raw, dict) and all(isinstance(v, dict) for v in raw.values()):
        raw = {name: [v.get("mean"), v.get("std")] for name, v in raw.items()}
    return parse_map_stats(raw, f"{path}", fix)


def parse_map_stats(raw: Any, where: str, fix: str) -> MapStats:
    """``{map: (mean, std)}`` from ``{map: [mean, std]}``, refusing anything else."""
    numbers = (int, float)
    if not isinstance(raw, Mapping) or not all(
        isinstance(v, list | tuple)
        and len(v) == 2
        and all(isinstance(x, numbers) and not isinstance(x, bool) for x in v)
        for v in raw.values()
    ):
        raise DataError(f"{where}: not map statistics {{map: mean and std}}. {fix}")
    return {str(name): (float(v[0]), float(v[1])) for name, v in raw.items()}
