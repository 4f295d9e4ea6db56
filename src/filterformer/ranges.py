"""Allowed values of a setting: the building blocks of ff-train's up-front checks.

The common settings' ranges are in :mod:`filterformer.runs.checks`; a model family declares
its own ``model.*`` ranges with these (``ModelFamily.setting_ranges``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Allowed:
    """What a setting may be: a test and the words that describe it in the error message."""

    text: str
    test: Callable[[Any], bool]


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int, high: int | None = None) -> Allowed:
    """An integer in [low, high] (no upper bound when ``high`` is None)."""
    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Allowed(text, lambda v: is_int(v) and v >= low and (high is None or v <= high))


def number(low: float, *, above: bool = False, high: float | None = None) -> Allowed:
    """A finite number >= low (> low with ``above``), and <= ``high`` when given."""
    sign = ">" if above else ">="
    text = f"a number {sign} {low}" + ("" if high is None else f" and <= {high}")

    def test(v: Any) -> bool:
        return is_number(v) and (v > low if above else v >= low) and (high is None or v <= high)

    return Allowed(text, test)


def optional(rule: Allowed) -> Allowed:
    """``rule`` or null."""
    return Allowed(f"null or {rule.text}", lambda v: v is None or rule.test(v))


def pair(rule: Allowed) -> Allowed:
    """A [height, width] list whose two values follow ``rule``."""
    return Allowed(
        f"a [height, width] pair, each {rule.text}",
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(rule.test(x) for x in v),
    )


def choice(*values: str) -> Allowed:
    """One of the given names."""
    return Allowed(f"one of {', '.join(values)}", lambda v: v in values)


FLAG = Allowed("true or false", lambda v: isinstance(v, bool))
KERNEL = Allowed("0 (off) or an integer >= 1", lambda v: is_int(v) and v >= 0)
OVERLAP = Allowed(
    "a fraction in [0, 1) or a whole number of pixels >= 0",
    lambda v: (isinstance(v, float) and 0 <= v < 1) or (is_int(v) and v >= 0),
)
SIZE = pair(integer(1))


ODD = Allowed("an odd integer >= 1", lambda v: is_int(v) and v >= 1 and v % 2)
