"""Progress bars: one per stage, with its total, and only on a terminal.

Every long stage (decoding images, training, predicting, map statistics, ...) shows one tqdm
bar that knows how many items it will count. A bar redraws itself with carriage returns,
which a log file would keep as hundreds of lines, so bars are shown only when stderr is a
terminal (and the command's progress setting is on: ``--no-progress``, ``progress=false``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def show_progress(enabled: bool = True) -> bool:
    """Whether to draw bars: ``enabled`` and stderr is a terminal."""
    stream = sys.stderr
    return enabled and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str,
    enabled: bool = True,
    unit: str = "it",
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand) with ``total`` items (default: its
    length), drawn only when :func:`show_progress`."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=not show_progress(enabled), **kwargs
    )
