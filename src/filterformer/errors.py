"""The library's exceptions: every message names the bad input and what to do about it."""

from __future__ import annotations

import errno


class FilterformerError(Exception):
    """Base class for errors a user can fix (bad path, bad file, bad config value)."""


class DataError(FilterformerError, ValueError):
    """A dataset folder, image, mask or anomaly map is missing or malformed."""


class ConfigError(FilterformerError, ValueError):
    """An unknown name or an inconsistent value in the configuration."""


class CheckpointError(FilterformerError, ValueError):
    """A checkpoint or weights file is missing or does not fit the model."""


class SubmissionError(FilterformerError, ValueError):
    """A benchmark-server submission folder fails one of the upload checks."""


class NonFiniteLossError(FilterformerError, RuntimeError):
    """The training loss became NaN or infinite (the message says what the run folder kept)."""


class FolderLockedError(FilterformerError, RuntimeError):
    """Another process is writing the run or output folder (its message names that process)."""


_OS_ERROR_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or write to another disk",
    errno.EACCES: "permission denied; fix its permissions or choose a path you may use",
    errno.EPERM: "operation not permitted; fix its permissions or choose a path you may use",
    errno.EROFS: "read-only file system; choose an output folder on a writable disk",
    errno.EFBIG: "file too large for the file system or the file-size limit (ulimit -f); "
    "raise the limit or write to another disk",
    errno.ELOOP: "a symbolic link on this path leads back to itself; remove the loop or "
    "choose another path",
}


def os_error_message(err: OSError) -> str | None:
    """One line for an operating-system error the user can fix (full disk, permissions,
    read-only file system), naming the path; None for any other error, which is a bug report.
    """
    advice = _OS_ERROR_ADVICE.get(err.errno)
    if advice is None:
        return None
    path = err.filename if err.filename is not None else "(the system named no file)"
    return f"{path}: {advice}."


class DeployError(FilterformerError, ValueError):
    """An export cannot be made or used: unsupported model, missing runtime, failed parity."""
