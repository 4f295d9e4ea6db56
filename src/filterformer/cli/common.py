"""What every command-line entry point shares."""

from __future__ import annotations

import sys
from collections.abc import Callable

from filterformer.errors import FilterformerError


def report_user_errors(prog: str, job: Callable[[], object]) -> int:
    """Run a command's work and return its exit code.

    A :class:`FilterformerError` (bad input the user can fix) becomes one line on stderr,
    ``<prog>: error: <message>``, and exit code 2, without a traceback. An int returned by
    ``job`` is the exit code; anything else means success (0).
    """
    try:
        result = job()
    except FilterformerError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
