"""A run folder's manifest: the SHA-256 of every file its results depend on.

``<run>/manifest.json`` is kept by the run's only writer (ff-train, the calibration that ends
it, ff-convert)::

    {"format": 1,
     "files": {"config.yaml": "<sha256>", "checkpoints/last.json": "<sha256>", ...},
     "writing": ["fusion.json"]}

The writer changes a signed file only inside :func:`signing`: the file is first marked as
being written, then written (atomically), then its new SHA-256 is recorded and the mark
removed, each step replacing manifest.json atomically; a kill at any instant leaves every
file either as signed or marked. A checkpoint's weights and training state are covered
through its JSON, which records their SHA-256 (:mod:`filterformer.training.checkpoint`).

A reader first calls :func:`verify_run`: every listed file must exist with its SHA-256, and
every file of the kinds it is told about that exists must be listed (a hash cannot be
dropped to turn the check off). A marked file that changed was being written when its
writer stopped: resuming the run (:func:`recover`, by the writer) signs such files as they
are. The manifest guards against damaged, lost, mixed and unsigned files; it is not a
signature against someone who rewrites it on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filterformer.errors import CheckpointError, FilterformerError
from filterformer.io import check_name, file_sha256, read_json, write_json

MANIFEST_FILE = "manifest.json"
FORMAT = 1
READER_FIX = (
    "Restore the run folder from a copy, or pass --no-verify (verify=False) to use it as it is."
)
"""What a reader can do about a run that fails verification."""


def verify_run(run_dir: str | os.PathLike, names: Iterable[str], fix: str = READER_FIX) -> None:
    """Check the run's files against its manifest; raise :class:`CheckpointError` naming the
    first file that differs and ``fix``.

    ``names``: files (relative to the run folder) that must be listed if they exist.
    """
    run_dir = Path(run_dir)
    manifest = _read(run_dir, fix)
    files, marked = manifest["files"], set(manifest["writing"])
    for name, recorded in files.items():
        path = run_dir / name
        if not path.is_file():
            raise CheckpointError(_problem(path, "is missing", name in marked, fix))
        if file_sha256(path) != recorded:
            raise CheckpointError(_problem(path, "was changed", name in marked, fix))
    for name in names:
        if name not in files and (run_dir / name).is_file():
            raise CheckpointError(_problem(run_dir / name, "", name in marked, fix))


def _problem(path: Path, what: str, marked: bool, fix: str) -> str:
    """The message for a file that does not match the manifest (``what``: "is missing" or
    "was changed" since it was signed; empty: it never was)."""
    if marked:
        return (
            f"{path}: was being written when the run's writer stopped, and is not as "
            f"{MANIFEST_FILE} signed it. Resume the run (ff-train with its settings and "
            f"resume=true) to finish it. {fix}"
        )
    if not what:
        return (
            f"{path}: is not signed in {MANIFEST_FILE} (added after the run's writer signed "
            f"the run, or its entry was removed). {fix}"
        )
    return (
        f"{path}: {what} since the run's writer signed it in {MANIFEST_FILE} (the run folder "
        f"is damaged, incomplete, or was edited). {fix}"
    )


@contextmanager
def signing(run_dir: str | os.PathLike, *paths: str | os.PathLike) -> Iterator[None]:
    """Sign ``paths`` (files in ``run_dir``) as they are after the block, which writes them.

    While the block runs they are marked as being written; a file the block leaves absent is
    no longer listed. The caller is the run's only writer (it holds the run's lock).
    """
    run_dir = Path(run_dir)
    names = [Path(path).relative_to(run_dir).as_posix() for path in paths]
    manifest = _read(run_dir) if (run_dir / MANIFEST_FILE).is_file() else _empty()
    manifest["writing"] = sorted(set(manifest["writing"]) | set(names))
    write_json(run_dir / MANIFEST_FILE, manifest)
    yield
    _sign(run_dir, manifest, names)


def recover(run_dir: str | os.PathLike, fix: str = READER_FIX) -> None:
    """Sign the files a stopped writer had marked, as they are (the run's writer resuming)."""
    run_dir = Path(run_dir)
    manifest = _read(run_dir, fix)
    if manifest["writing"]:
        _sign(run_dir, manifest, manifest["writing"])


def start(run_dir: str | os.PathLike) -> None:
    """An empty manifest for a run that starts from nothing (replacing an earlier one)."""
    write_json(Path(run_dir) / MANIFEST_FILE, _empty())


def _sign(run_dir: Path, manifest: dict[str, Any], names: Iterable[str]) -> None:
    names = list(names)
    for name in names:
        path = run_dir / name
        if path.is_file():
            manifest["files"][name] = file_sha256(path)
        else:
            manifest["files"].pop(name, None)
    manifest["writing"] = [name for name in manifest["writing"] if name not in names]
    write_json(run_dir / MANIFEST_FILE, manifest)


def _empty() -> dict[str, Any]:
    return {"format": FORMAT, "files": {}, "writing": []}


def _read(run_dir: Path, fix: str = READER_FIX) -> dict[str, Any]:
    """The manifest, checked to be one."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing, so the run's files cannot be verified (a run made before "
            f"filterformer signed its runs, or the file was deleted). {fix}"
        )
    try:
        manifest = read_json(path, "run manifest", fix)
    except FilterformerError as err:
        raise CheckpointError(str(err)) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    writing = manifest.get("writing") if isinstance(manifest, dict) else None
    if (
        not isinstance(files, dict)
        or not all(_inside(k) and isinstance(v, str) for k, v in files.items())
        or not isinstance(writing, list)
        or not all(_inside(name) for name in writing)
        or manifest.get("format") != FORMAT
    ):
        raise CheckpointError(
            f"{path}: not a run manifest of format {FORMAT} (files -> SHA-256, writing). {fix}"
        )
    return manifest


def _inside(name: Any) -> bool:
    """Whether a listed name is a path inside the run folder (``checkpoints/last.json``)."""
    if not isinstance(name, str):
        return False
    try:
        return all(check_name(part, "manifest entry") for part in name.split("/"))
    except FilterformerError:
        return False
