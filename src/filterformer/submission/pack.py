"""Pack a checked submission folder into the archive the benchmark server takes."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping
from pathlib import Path

from filterformer.errors import SubmissionError
from filterformer.io import atomic_path
from filterformer.submission.checker import require_valid
from filterformer.submission.mvtec_submission import OFFICIAL_COUNTS


def pack_submission(
    directory: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    *,
    check: bool = True,
    data_root: str | os.PathLike | None = None,
    counts: Mapping[str, int] = OFFICIAL_COUNTS,
) -> Path:
    """Write ``<name>.tar.gz`` whose members are ``<name>/<path inside the folder>``.

    ``<name>`` is the folder's name. By default the archive goes next to the folder (MVTec's
    script writes it to the current directory instead). ``check`` runs :func:`require_valid`
    first, so no archive is written for a submission that would fail. Files are added in
    sorted order; the archive is written to a temporary file and renamed when complete.
    """
    root = Path(directory).resolve()
    if check:
        require_valid(root, data_root, counts)
    target = Path(out_path) if out_path is not None else root.with_name(root.name + ".tar.gz")
    if target.resolve().is_relative_to(root):
        raise SubmissionError(
            f"{target}: the archive cannot be written inside the submission folder {root} "
            "(it would become an extra file); choose a path outside it."
        )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as archive:
        for path in files:
            archive.add(path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}")
    return target
