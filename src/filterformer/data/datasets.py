"""The dataset readers by ``data.kind``, and the splits each one has.

``mvtec_ad2`` and ``synthetic`` (generated in the MVTec AD 2 layout) are read by
:class:`~filterformer.data.mvtec_ad2.MVTecAD2`, ``mvtec_ad`` by
:class:`~filterformer.data.mvtec_ad.MVTecAD`, ``visa`` by :class:`~filterformer.data.visa.VisA`,
``real_iad`` by :class:`~filterformer.data.real_iad.RealIAD`;
``folder`` data is handled by the run layer (it has folders, not a root).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from filterformer.data import mvtec_ad, mvtec_ad2, real_iad, visa
from filterformer.data.sample import SampleSequence
from filterformer.errors import ConfigError

Reader = Callable[[str | os.PathLike | None, str, str], SampleSequence]

READERS: dict[str, Reader] = {
    "mvtec_ad2": mvtec_ad2.MVTecAD2,
    "synthetic": mvtec_ad2.MVTecAD2,
    "mvtec_ad": mvtec_ad.MVTecAD,
    "visa": visa.VisA,
    "real_iad": real_iad.RealIAD,
}
SPLITS: dict[str, tuple[str, ...]] = {
    "mvtec_ad2": mvtec_ad2.SPLITS,
    "synthetic": mvtec_ad2.SPLITS,
    "mvtec_ad": mvtec_ad.SPLITS,
    "visa": visa.SPLITS,
    "real_iad": real_iad.SPLITS,
}
OFFICIAL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec_ad2": mvtec_ad2.CATEGORIES,
    "mvtec_ad": mvtec_ad.CATEGORIES,
    "visa": visa.CATEGORIES,
    "real_iad": real_iad.CATEGORIES,
}
"""Each dataset's categories: what a multi-class run trains on when it names none."""
ALL_SPLITS: tuple[str, ...] = tuple(dict.fromkeys(s for splits in SPLITS.values() for s in splits))
"""Every split name of every reader (the choices of the command-line tools)."""

TEST_SPLITS = {
    "mvtec_ad2": "test_public",
    "synthetic": "test_public",
    "folder": "test_public",
    "mvtec_ad": "test",
    "visa": "test",
    "real_iad": "test",
}
"""The split with public ground truth that a benchmark's numbers are reported on."""


def read_split(
    kind: str, root: str | os.PathLike | None, category: str, split: str
) -> SampleSequence:
    """The samples of ``category`` and ``split`` of a ``kind`` dataset under ``root``."""
    if kind not in READERS:
        raise ConfigError(f"data.kind {kind!r} has no root reader; valid: {', '.join(READERS)}.")
    return READERS[kind](root, category, split)


def evaluated_split(kind: str) -> str:
    """The evaluated split of a data kind: ``test_public`` (MVTec AD 2 layout) or ``test``."""
    if kind not in TEST_SPLITS:
        raise ConfigError(f"unknown data.kind {kind!r}; valid: {', '.join(TEST_SPLITS)}.")
    return TEST_SPLITS[kind]
