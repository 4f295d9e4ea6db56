"""What every command-line entry point shares: one-line user errors and exit codes.

Nothing here imports torch, so that every ``--help`` (and ``ff-eval --maps``) stays fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from filterformer.errors import DataError, FilterformerError, os_error_message


def report_user_errors(
    prog: str, job: Callable[[], object], rewrite: Callable[[str], str] | None = None
) -> int:
    """Run a command's work and return its exit code.

    A :class:`FilterformerError` (bad input the user can fix) and an operating-system error
    the user can fix (no space left, permission denied, read-only file system) become one line
    on stderr, ``<prog>: error: <message>``, and exit code 2, without a traceback. An int
    returned by ``job`` is the exit code; anything else means success (0). ``rewrite`` adapts
    a message to where the command was given (a suite's route).
    """
    try:
        result = job()
    except FilterformerError as err:
        return fail(prog, str(err) if rewrite is None else rewrite(str(err)))
    except OSError as err:
        message = os_error_message(err)
        if message is None:
            raise
        return fail(prog, message)
    return result if isinstance(result, int) else 0


def fail(prog: str, message: str) -> int:
    """Print ``<prog>: error: <message>`` as one line on stderr; return exit code 2."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"{prog}: error: {line}", file=sys.stderr)
    return 2


class _StderrHandler(logging.Handler):
    """Writes records to the current ``sys.stderr`` (which tests may have replaced)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def show_library_log(prog: str) -> None:
    """Show the library's notes (logger ``filterformer``, INFO) on stderr as ``<prog>: ...``.

    The library itself never prints; a command decides what its user sees.
    """
    logger = logging.getLogger("filterformer")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def require_path(path: Path, option: str) -> None:
    """Refuse, before torch is imported, an input path that does not exist."""
    if not path.exists():
        raise DataError(f"{option} {path}: not found. Check the path.")
