"""train_log.csv and eval_log.csv: CSV files that grow by appended rows.

Rows are appended as they come (a kill loses none that were logged). A checkpoint records
each log's size, and resuming from it cuts the logs back to those sizes, so after a resume
the logs hold exactly the rows of the checkpoint's steps, then the new ones.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filterformer.errors import CheckpointError


class CsvLog:
    """One CSV log; its header is the keys of the first rows written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._header: list[str] | None = None

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` (the header first, into an empty log)."""
        if not rows:
            return
        header = self._header or self._read_header()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header or _fieldnames(rows))
            if not header:
                writer.writeheader()
            writer.writerows(rows)
        self._header = writer.fieldnames

    def size(self) -> int:
        """The log's length in bytes (0 before its first row)."""
        return self.path.stat().st_size if self.path.is_file() else 0

    def sha256(self, size: int | None = None) -> str:
        """SHA-256 of the log's first ``size`` bytes (None: all of it; no log: of nothing)."""
        data = self.path.read_bytes() if self.path.is_file() else b""
        return hashlib.sha256(data if size is None else data[:size]).hexdigest()

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the log: its size and SHA-256 now."""
        return {"size": self.size(), "sha256": self.sha256()}

    def cut(self, size: int) -> None:
        """Drop what was appended after the log was ``size`` bytes long (0: delete it)."""
        if size == 0:
            self.path.unlink(missing_ok=True)
        elif self.size() > size:
            os.truncate(self.path, size)
        self._header = None

    def _read_header(self) -> list[str] | None:
        if self.size() == 0:
            return None
        with open(self.path, newline="") as fh:
            return next(csv.reader(fh))


def check_logs(folder: Path, records: Any, fix: str) -> None:
    """Refuse logs in ``folder`` that no longer begin with what a checkpoint recorded of them
    (``{file name: {"size", "sha256"}}``, :meth:`CsvLog.record`; None: nothing recorded).

    A resumed run appends to its logs after cutting them back to those bytes: a shortened or
    changed log would mix two histories.
    """
    for name, record in _log_records(folder, records, fix):
        log = CsvLog(folder / name)
        size, sha256 = record
        if log.size() < size or log.sha256(size) != sha256:
            raise CheckpointError(
                f"{log.path}: no longer begins with the {size} bytes it had when checkpoints/last "
                f"was saved (it was shortened or changed). {fix}"
            )


def _log_records(folder: Path, records: Any, fix: str) -> list[tuple[str, tuple[int, str]]]:
    """(file name, (size, SHA-256)) of each log a checkpoint recorded, checked to be such."""
    try:
        found = [
            (name, (int(record["size"]), str(record["sha256"])))
            for name, record in (records or {}).items()
            if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")
        ]
    except (AttributeError, KeyError, TypeError, ValueError):
        found = []
    if len(found) != len(records or {}):
        raise CheckpointError(f"{folder}: the logs' record {records!r} is malformed. {fix}")
    return found


def _fieldnames(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Union of the rows' keys in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)
